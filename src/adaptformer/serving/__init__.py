"""HTTP serving of every task of a registry from one frozen backbone (``adaptformer serve``).

Requests for different tasks that arrive close together run as one mixed-task forward pass
(:func:`adaptformer.forward_tasks`). Modules: ``batcher`` (bounded queue, model thread, task
versions), ``images`` (untrusted uploads to tensors), ``metrics`` (Prometheus), ``app`` (the
Starlette application and :func:`~adaptformer.serving.app.serve`), ``static/`` (the web page).
Needs the ``serve`` extra: ``pip install 'adaptformer[serve]'``.
"""
