"""Cross-task dynamic batching: a bounded queue of rows and one model thread.

A row is one preprocessed image and the task version that must answer it. The model thread
takes the oldest row, waits at most ``max_wait`` seconds for up to ``max_batch`` rows, whatever
their tasks, and runs them as ONE mixed-task forward pass (:func:`adaptformer.forward_tasks`).
The wait counts from the oldest row's arrival or from the end of the previous pass, whichever is
later, and lasts only while more rows are on their way: requests being read or decoded
(``coming``), or, right after a pass, fewer rows back than it answered (closed-loop clients send
again as soon as they are answered). So a lone request on an idle server runs at once, and under
load the model does not start a small pass the moment one ends while the next requests are still
being read: small passes of many tasks cost the most per row, and on a shared CPU they also take
the cycles the decoding needs, which would make the next pass small again.

This is how one frozen backbone pays off in a service (the same idea as Punica / S-LoRA for
language models): requests for eight tasks that arrive together cost one backbone pass, not eight.

The queue is bounded in rows: a request that does not fit is refused at once with
:class:`Overloaded` (the server answers 503 + Retry-After) instead of growing memory.

A row whose future was cancelled (its client is gone) before its pass is left out of the pass;
its neighbours are answered as usual. An error in a callback (metrics, bookkeeping) is logged and
the thread goes on; if the thread dies anyway, it answers every queued row with
:class:`ModelStopped`, refuses new ones, logs once, and :attr:`Batcher.failure` says why (the
server's health check turns to 503).

Only the model thread runs the model. Hot task changes take :attr:`Batcher.model_lock`, the
lock every forward pass holds, so an adapter is never added or removed in the middle of a pass
(a pass reads the task modules and their banks, which adding or removing a task changes).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .multitask import forward_tasks

_log = logging.getLogger(__name__)

Mode = Literal["cross-task", "per-task", "off"]
MODES: tuple[str, ...] = ("cross-task", "per-task", "off")


class Overloaded(RuntimeError):
    """The queue cannot take a request's rows; retry after :attr:`retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelStopped(Overloaded):
    """The model thread died: nothing will be answered until the server is restarted."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(
            f"the model thread stopped ({type(cause).__name__}: {cause}); restart the server",
            retry_after=60,
        )


@dataclass(frozen=True)
class Row:
    """One image for one task version, waiting for a forward pass."""

    x: torch.Tensor  # (C, H, W), preprocessed
    task: str  # the adapter name inside the model (a task version, not the public name)
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchStats:
    """What one forward pass did, for metrics and the load benchmark."""

    size: int
    tasks: int
    seconds: float
    waited: list[float]  # per row: seconds between arrival and the start of its pass


class Batcher:
    """Runs queued rows through ``model`` in mixed-task batches on one thread.

    Args:
        model: the backbone with every served task loaded (eval mode, on ``device``).
        device: where batches are sent.
        max_batch: rows per forward pass at most.
        max_wait: seconds a pass may be held back for more rows, counted from the oldest row's
            arrival or the previous pass's end, whichever is later.
        max_queue: rows waiting at most; more is :class:`Overloaded`.
        mode: ``cross-task`` (rows of any tasks share a pass), ``per-task`` (the rows
            collected are run as one pass per task) or ``off`` (one row per pass): the last two
            are the baselines the load benchmark compares against.
        on_batch: called on the model thread after each pass (metrics).
        on_done: called on the model thread with the rows of each finished pass (task
            version bookkeeping), after their futures are set.
        model_lock: held during every pass; whoever changes the model's tasks takes it too.
        coming: how many requests are being read or decoded (their rows are worth waiting
            for); None waits up to ``max_wait`` in any case.
        compile: passed to :func:`forward_tasks` (``torch.compile`` the passes).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        max_batch: int = 32,
        max_wait: float = 0.01,
        max_queue: int = 256,
        mode: Mode = "cross-task",
        on_batch: Callable[[BatchStats], None] | None = None,
        on_done: Callable[[Sequence[Row]], None] | None = None,
        model_lock: threading.RLock | None = None,
        coming: Callable[[], int] | None = None,
        compile: bool | str = False,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or not math.isfinite(max_wait) or max_wait < 0:
            raise ValueError(
                f"max_batch ({max_batch}) and max_queue ({max_queue}) must be positive and "
                f"max_wait ({max_wait}) a finite number of seconds >= 0"
            )
        if mode not in MODES:
            raise ValueError(f"batching mode {mode!r} is not one of {MODES}")
        self.model, self.device, self.mode = model, device, mode
        self.compile = compile
        self.max_batch = 1 if mode == "off" else max_batch
        self.max_wait = 0.0 if mode == "off" else max_wait
        self.max_queue = max_queue
        self.on_batch, self.on_done, self.coming = on_batch, on_done, coming
        self.model_lock = model_lock or threading.RLock()
        self._queue: collections.deque[Row] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._hurry = False  # shutting down: run what is queued without waiting for more
        self._seconds_per_row = 0.0  # running estimate, for Retry-After
        self._free_since = 0.0  # when the last pass ended
        self._answered = 0  # rows it answered
        self._answered_at = 0.0  # when it began to answer them: a row sent since is one back
        self._current: list[Row] = []  # the batch being run
        self.failure: BaseException | None = None  # why the model thread died, if it did
        self._thread = threading.Thread(target=self._main, name="adaptformer-model", daemon=True)

    # -- public -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def depth(self) -> int:
        """Rows waiting for a pass."""
        return len(self._queue)

    def submit(self, rows: Sequence[tuple[torch.Tensor, str]]) -> list[Future]:
        """Queue ``(image, adapter name)`` rows, all or none; one future per row.

        A future's result is the row's logits without padding (a CPU tensor).

        Raises:
            Overloaded: the rows do not fit in the queue, or the batcher is stopping.
        """
        items = [Row(x, task) for x, task in rows]
        with self._cond:
            if self.failure is not None:
                raise ModelStopped(self.failure)
            if self._stopping:
                raise Overloaded("the server is shutting down", retry_after=1)
            if len(self._queue) + len(items) > self.max_queue:
                raise Overloaded(
                    f"the queue is full ({len(self._queue)} of {self.max_queue} rows waiting; "
                    f"this request needs {len(items)})",
                    retry_after=self._retry_after(),
                )
            self._queue.extend(items)
            self._cond.notify()
        return [r.future for r in items]

    def hurry(self) -> None:
        """Stop waiting for fuller batches (a shutdown began); rows are still accepted."""
        with self._cond:
            self._hurry = True
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new rows, finish every queued one, then end the model thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- model thread -----------------------------------------------------------------------------
    def _retry_after(self) -> int:
        return max(1, math.ceil(len(self._queue) * self._seconds_per_row))

    def _take(self) -> list[Row] | None:
        """The next batch: wait for a first row, then up to ``max_wait`` after its arrival."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue[0].arrived
            deadline = max(first, self._free_since) + self.max_wait
            # Closed-loop clients send again as soon as they are answered, but nothing says they
            # are coming until their next request is being read. So right after a pass, expect
            # as many rows back as it answered, and wait for them (up to the deadline) like for
            # rows being decoded; otherwise the first one back starts a pass of its own (seen in
            # a one-off trace of the load test with a 200 ms max wait: passes of 1-3 rows between
            # full ones). A lone client (one row answered, one back) still runs at once.
            back = self._answered if first <= self._free_since + self.max_wait else 0
            while len(self._queue) < self.max_batch and not (self._stopping or self._hurry):
                if self.coming is not None and self.coming() == 0:
                    returned = sum(r.arrived >= self._answered_at for r in self._queue)
                    if returned >= back:
                        break  # nobody else is on the way: waiting would only add latency
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _main(self) -> None:
        """The model thread: :meth:`_loop`, and if it dies, say so once and answer every row."""
        try:
            self._loop()
        except BaseException as err:
            _log.critical("the model thread stopped; every request now gets 503", exc_info=True)
            with self._cond:
                self.failure = err
                orphans = self._current + list(self._queue)  # taken but unanswered, and queued
                self._queue.clear()
            stopped = ModelStopped(err)
            for r in orphans:
                if r.future.done():
                    continue
                if r.future.running() or r.future.set_running_or_notify_cancel():
                    r.future.set_exception(stopped)
            self._call(self.on_done, orphans)  # their task versions are released all the same

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            self._current = batch
            # A cancelled future (its client is gone) can no longer take an answer: leave its
            # row out. A running future cannot be cancelled, so setting the others is safe.
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            groups = (_by_task(live) if self.mode == "per-task" else [live]) if live else []
            # The first answers went out with the first group: a client answered then may send
            # again before this bookkeeping ends, and its row must count as one back.
            answered_at = min([self._run(rows) for rows in groups], default=time.perf_counter())
            self._call(self.on_done, batch)
            self._free_since = time.perf_counter()
            self._answered, self._answered_at = len(batch), answered_at
            self._current = []

    @staticmethod
    def _call(callback: Callable | None, arg: object) -> None:
        """A callback's error is logged, not raised: metrics or bookkeeping must not stop the
        model thread (the rows are answered already)."""
        if callback is None:
            return
        try:
            callback(arg)
        except Exception:
            _log.exception(
                "the batcher's callback %s failed", getattr(callback, "__name__", callback)
            )

    def _run(self, rows: list[Row]) -> float:
        """One forward pass of rows whose futures are running; returns when its answers began
        to go out."""
        start, answered_at = time.perf_counter(), math.inf
        try:
            x = torch.stack([r.x for r in rows]).to(self.device)
            with self.model_lock, torch.inference_mode():
                out = forward_tasks(self.model, x, [r.task for r in rows], self.compile)
            logits = out.logits.float().cpu()
            answered_at = time.perf_counter()
            for r, row, width in zip(rows, logits, out.num_classes, strict=True):
                r.future.set_result(row[:width])
        except Exception as err:  # a failed pass answers its rows; the server keeps serving
            _log.exception("a forward pass of %d rows failed", len(rows))
            answered_at = min(answered_at, time.perf_counter())
            for r in rows:
                if not r.future.done():
                    r.future.set_exception(err)
        seconds = time.perf_counter() - start
        per_row = seconds / len(rows)
        self._seconds_per_row = (
            per_row if not self._seconds_per_row else (0.9 * self._seconds_per_row + 0.1 * per_row)
        )
        stats = BatchStats(
            size=len(rows),
            tasks=len({r.task for r in rows}),
            seconds=seconds,
            waited=[start - r.arrived for r in rows],
        )
        self._call(self.on_batch, stats)
        return answered_at


def _by_task(rows: list[Row]) -> list[list[Row]]:
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.task, []).append(r)
    return list(groups.values())
