"""The adapter core: what a task adds to a frozen ViT, and nothing about training or serving.

- ``config``: :class:`AdapterConfig`, one named adapter (method, bottleneck, scale, ...).
- ``layers``: the AdaptMLP formula, LoRA's low-rank update, VPT prompts, task heads.
- ``inject``: the adapted block and inject / set / delete / disable of named adapters.
- ``routing``: which rows of a batch run which task's adapters (mixed-task batches).
- ``banks``: every task's adapters and head stacked per slot, gathered per row.
- ``context``: the routing of the pass running in this thread (a context variable).
- ``trainable``: which parameters each method trains, and parameter counts.
- ``files``: a task's adapter file (``adapter_config.json`` + ``adapter_model.safetensors``).
"""
