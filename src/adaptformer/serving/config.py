"""Settings of ``adaptformer serve``; each field's help is the flag's help (written once).

Importable without the ``serve`` extra, so ``adaptformer serve --help`` works everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .images import DEFAULT_MAX_PIXELS
from .paging import MIB, Budget

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
    compile: bool = _f(
        False,
        "run mixed-task passes through torch.compile: one graph for every mix of tasks, "
        "compiled on the first passes (minutes on a CPU; docs/multitask.md has what it bought)",
    )
    max_upload_mb: float = _f(10.0, "request body size limit in MiB (413 beyond it)")
    body_timeout: float = _f(
        20.0,
        "seconds a request body may take to arrive, plus the time its bytes earn at "
        "--min-upload-rate (408 beyond it, and the request's slot is free again); also the time "
        "a request's headers may take (the connection is closed beyond it)",
    )
    min_upload_rate: float = _f(
        32.0,
        "KiB/s: every KiB received extends a body's deadline by 1/RATE s, so a large upload at "
        "this rate always finishes and a trickle does not (0: --body-timeout is the whole time)",
    )
    max_uploads_per_client: int = _f(
        32,
        "requests whose body is being read at once from one client address (429 beyond it; 0: "
        "no cap; behind a proxy every client shares its address)",
    )
    allowed_hosts: str = _f(
        "",
        "comma-separated Host header names the server answers (*.example.org: any subdomain, "
        "*: any); others get 400, which stops DNS-rebinding pages reading the API",
        default_text="the --host address, localhost, 127.0.0.1 and ::1; any host when --host is "
        "0.0.0.0 or ::",
    )
    max_pixels: int = _f(DEFAULT_MAX_PIXELS, "width x height an image may declare (413 beyond)")
    max_images: int = _f(16, "images per request at most")
    top_k: int = _f(5, "labels per task and image when a request gives no top_k")
    decode_threads: int = _f(2, "threads decoding and preprocessing images")
    threads: int = _f(0, "torch threads for the forward pass (0: torch's default)")
    max_resident_tasks: int = _f(
        0,
        "tasks kept in memory at most: the others stay on disk until their first request, and "
        "the least recently used tasks no queued request needs are evicted to make room (0: no "
        "limit; without --adapter-memory either, every task is loaded at start and kept)",
    )
    adapter_memory: float = _f(
        0.0,
        "MiB of adapter and head weights kept in memory at most, paged like "
        "--max-resident-tasks (0: no limit)",
    )
    resident_wait: float = _f(
        30.0,
        "seconds a request may wait for room in memory for its tasks while every resident task "
        "is in use by queued requests (503 with Retry-After beyond it; 0: refuse at once)",
    )
    load_threads: int = _f(2, "task files read at once at most when tasks are paged")

    def __post_init__(self) -> None:
        counts = {
            "max_batch_size": self.max_batch_size,
            "max_queue": self.max_queue,
            "max_images": self.max_images,
            "top_k": self.top_k,
            "decode_threads": self.decode_threads,
            "max_pixels": self.max_pixels,
            "load_threads": self.load_threads,
        }
        bad = [f"--{k.replace('_', '-')} {v}" for k, v in counts.items() if v < 1]
        bad += [f"--threads {self.threads}"] if self.threads < 0 else []
        bad += [f"--max-resident-tasks {self.max_resident_tasks}"] * (self.max_resident_tasks < 0)
        if not (math.isfinite(self.adapter_memory) and self.adapter_memory >= 0):
            bad.append(f"--adapter-memory {self.adapter_memory} (MiB >= 0)")
        if not (math.isfinite(self.resident_wait) and self.resident_wait >= 0):
            bad.append(f"--resident-wait {self.resident_wait} (seconds >= 0)")
        if self.max_uploads_per_client < 0:
            bad.append(f"--max-uploads-per-client {self.max_uploads_per_client}")
        if not (math.isfinite(self.body_timeout) and self.body_timeout > 0):
            bad.append(f"--body-timeout {self.body_timeout} (seconds > 0)")
        if not (math.isfinite(self.min_upload_rate) and self.min_upload_rate >= 0):
            bad.append(f"--min-upload-rate {self.min_upload_rate} (KiB/s >= 0)")
        names = self.allowed_hosts.split(",")
        if self.allowed_hosts.strip() and not all(
            n.strip() and " " not in n.strip() for n in names
        ):
            bad.append(f"--allowed-hosts {self.allowed_hosts!r} (names separated by commas)")
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
    def budget(self) -> Budget:
        """What the server keeps in memory (unbounded: every task loaded at start)."""
        nbytes = max(1, int(self.adapter_memory * MIB)) if self.adapter_memory > 0 else 0
        return Budget(self.max_resident_tasks, nbytes)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def hosts(self) -> list[str]:
        """The Host header names answered: ``--allowed-hosts``, or by default the address the
        server listens on and the loopback names (any name when it listens everywhere: it can
        be reached under names it cannot know)."""
        if self.allowed_hosts.strip():
            return [n.strip().lower().rstrip(".") for n in self.allowed_hosts.split(",")]
        if self.host in ("0.0.0.0", "::", ""):
            return ["*"]
        return list(dict.fromkeys([self.host.lower().strip("[]"), "localhost", "127.0.0.1", "::1"]))
