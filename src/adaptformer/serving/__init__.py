"""Many tasks on one frozen backbone: mixed-task batches, the task store, export and HTTP serving.

- ``multitask``: ``forward_tasks`` (one pass, each row its own task) and :class:`MultiTaskModel`.
- ``store``: :class:`TaskRegistry`, task files on disk against one recorded backbone.
- ``export``: ONNX / TorchScript of one or many tasks, verified against eager PyTorch.
- ``adaptformer serve`` (needs the ``serve`` extra: ``pip install 'adaptformer[serve]'``):
  ``catalog`` (the served task versions), ``batcher`` (bounded queue, model thread: requests for
  different tasks that arrive close together run as one mixed-task pass), ``images`` (untrusted
  uploads to tensors), ``metrics`` (Prometheus), ``config``, ``app`` (the Starlette application
  and :func:`~adaptformer.serving.app.serve`), ``static/`` (the web page).
"""
