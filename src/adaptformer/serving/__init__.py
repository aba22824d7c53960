"""Many tasks on one frozen backbone: mixed-task batches, the task store and export.

- ``multitask``: ``forward_tasks`` (one pass, each row its own task) and :class:`MultiTaskModel`.
- ``store``: :class:`TaskRegistry`, task files on disk against one recorded backbone.
- ``export``: ONNX / TorchScript of one or many tasks, verified against eager PyTorch.
"""
