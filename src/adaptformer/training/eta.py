"""How long a run will take, said a few steps in, before the user has waited for an epoch.

On a CPU a run can take hours (100 epochs at 224 px is days); the first epoch's log line comes
only after the whole epoch. :class:`EtaLoader` wraps the first epoch's loader, times a few
steps after the first (which pays for worker start-up), and logs the measured images/s and the
estimated time of the epoch and of the whole run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

_log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class EtaLoader:
    """``loader`` unchanged, with one log line after ``timed`` steps past the first.

    Args:
        loader: the epoch's data loader (its batches are ``(images, labels)`` or ``None``).
        steps: steps this epoch will take (``len(loader)`` or ``--max-steps-per-epoch``).
        epochs: epochs left in this process, this one included.
        world_size: processes sharing the work (images/s is the whole job's).
        timed: steps to time.
    """

    def __init__(
        self, loader: Any, steps: int, epochs: int, world_size: int = 1, timed: int = 5
    ) -> None:
        self.loader, self.steps, self.epochs = loader, steps, epochs
        self.world_size, self.timed = world_size, timed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        start, images = 0.0, 0
        for i, batch in enumerate(self.loader):
            if i == 1:
                start = time.perf_counter()
            elif i == 1 + self.timed and i < self.steps:
                self._report(time.perf_counter() - start, images)
            if 1 <= i < 1 + self.timed and batch is not None:
                images += len(batch[0])
            yield batch

    def _report(self, seconds: float, images: int) -> None:
        per_step = seconds / self.timed
        epoch = per_step * self.steps
        _log.info(
            "speed: %.1f images/s over %d steps; about %s per epoch, %s for the %d epoch%s to "
            "go (training only; validation adds its images at inference speed)",
            images * self.world_size / max(seconds, 1e-9), self.timed, _duration(epoch),
            _duration(epoch * self.epochs), self.epochs, "" if self.epochs == 1 else "s",
        )  # fmt: skip
