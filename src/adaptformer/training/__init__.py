"""Training and evaluation: the run config, the epoch loop, the runner and the VTAB-1k protocol.

- ``config``: :class:`TrainConfig`, every option of ``adaptformer train``.
- ``engine``: one training epoch and one evaluation pass (image or video batches alike).
- ``runner``: ``fit`` (build, train, resume, save a run folder) and ``load_run``.
- ``video`` / ``video_eval``: what differs for video (model, data, multi-view evaluation).
- ``vtab``: the VTAB-1k protocol (tune on train800/val200, then train800val200/test).
"""
