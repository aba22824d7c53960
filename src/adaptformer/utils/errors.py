"""Errors the CLI reports as one line (exit 2) instead of a traceback.

``ValueError``/``FileNotFoundError`` cover bad input; :class:`UserFacingError` is for
environment problems the user can fix (no network, a missing optional package, a corrupt
download). Any other exception is a bug and keeps its traceback.
"""


class UserFacingError(RuntimeError):
    """Something outside the code is wrong, and the message says how to fix it."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a training: carries the run folder, so the CLI can say how to resume
    (the last epoch's checkpoint is intact, since checkpoints are written atomically)."""

    def __init__(self, run_folder: str) -> None:
        super().__init__(run_folder)
        self.run_folder = run_folder
