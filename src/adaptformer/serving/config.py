"""Settings of ``adaptformer serve``; each field's help is the flag's help (written once).

Importable without the ``serve`` extra, so ``adaptformer serve --help`` works everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .images import DEFAULT_MAX_PIXELS

BATCHING = ("cross-task", "per-task", "off")


def _f(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class ServeConfig:
    """How the server listens, batches and bounds its work."""

    host: str = _f("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = _f(8000, "TCP port")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    max_batch_size: int = _f(32, "rows (image x task) per forward pass at most")
    max_wait_ms: float = _f(
        10.0,
        "how long a pass may wait for more rows while requests are being read or decoded "
        "(from the oldest row's arrival or the last pass's end, whichever is later)",
    )
    max_queue: int = _f(
        256, "rows waiting for a pass at most (also the number of requests being read); "
        "beyond it requests get 503 with Retry-After",
    )  # fmt: skip
    batching: str = _f(
        "cross-task",
        "cross-task: rows of all tasks share a pass; per-task: one pass per task; off: one row "
        "per pass (the last two are baselines for benchmarks)",
        choices=BATCHING,
    )
    max_upload_mb: float = _f(10.0, "request body size limit in MiB (413 beyond it)")
    max_pixels: int = _f(DEFAULT_MAX_PIXELS, "width x height an image may declare (413 beyond)")
    max_images: int = _f(16, "images per request at most")
    top_k: int = _f(5, "labels per task and image when a request gives no top_k")
    decode_threads: int = _f(2, "threads decoding and preprocessing images")
    threads: int = _f(0, "torch threads for the forward pass (0: torch's default)")

    def __post_init__(self) -> None:
        counts = {
            "max_batch_size": self.max_batch_size,
            "max_queue": self.max_queue,
            "max_images": self.max_images,
            "top_k": self.top_k,
            "decode_threads": self.decode_threads,
            "max_pixels": self.max_pixels,
        }
        bad = [f"--{k.replace('_', '-')} {v}" for k, v in counts.items() if v < 1]
        bad += [f"--threads {self.threads}"] if self.threads < 0 else []
        if not 0 <= self.port <= 65535:
            bad.append(f"--port {self.port}")
        for name in ("max_wait_ms", "max_upload_mb"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0 or (name == "max_upload_mb" and v == 0):
                bad.append(f"--{name.replace('_', '-')} {v}")
        if self.batching not in BATCHING:
            bad.append(f"--batching {self.batching!r} (one of {', '.join(BATCHING)})")
        if bad:
            raise ValueError(f"invalid serve settings: {', '.join(bad)}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
