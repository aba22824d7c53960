"""Ctrl-C during training, taken at a safe point between steps.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be: inside a data
loader's worker shutdown (a traceback from ``__del__``, and sometimes the interrupt is lost and
the run goes on), inside a checkpoint write, between an optimizer step and its bookkeeping. Here
the first Ctrl-C only asks to stop; the trainer stops before its next step, with the last
finished epoch's checkpoint intact. A second Ctrl-C stops at once, as users expect of it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

_log = logging.getLogger(__name__)


class DeferredInterrupt:
    """While entered, SIGINT sets :attr:`requested`; :meth:`check` raises ``KeyboardInterrupt``
    at the points the trainer chooses. Does nothing outside the main thread (signals go only
    there) or when ``enabled`` is false (under torchrun, which handles the signal itself)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> DeferredInterrupt:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        _log.warning("interrupted: stopping before the next step (Ctrl-C again to stop at once)")

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def steps(self, loader: Any) -> _Checked:
        """``loader`` with a :meth:`check` before each batch is handed out."""
        return _Checked(loader, self)


class _Checked:
    def __init__(self, loader: Any, interrupt: DeferredInterrupt) -> None:
        self.loader, self.interrupt = loader, interrupt

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            self.interrupt.check()
            yield batch
