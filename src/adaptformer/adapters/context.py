"""The routing of the mixed-task batch running in this thread or asyncio task.

A context variable, not an attribute set on modules: two threads (or a nested call) can run
different mixes through the same model at once, and ``torch.compile`` reads it like any other
Python value (it guards on the routing's type and tensors' shapes, so a new mix of tasks, which
only changes the task-index tensor's values, does not recompile).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_ROUTING: ContextVar[Any] = ContextVar("adaptformer_routing", default=None)


def current_routing() -> Any:
    """The routing (``adapters.routing.TaskRouting``) of the pass running here, or None."""
    return _ROUTING.get()


@contextlib.contextmanager
def routing_scope(routing: Any) -> Iterator[None]:
    """Make ``routing`` the current one for the enclosed block (restored after, even on error)."""
    token = _ROUTING.set(routing)
    try:
        yield
    finally:
        _ROUTING.reset(token)
