"""`adaptformer serve` as a real process on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class Server:
    """A running server: its base URL, process and the lines it logged so far."""

    def __init__(self, proc: subprocess.Popen, url: str, log: list[str]) -> None:
        self.proc, self.url, self.log = proc, url, log

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


@contextmanager
def running(registry: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``adaptformer serve --registry REGISTRY --port 0 FLAGS``; kill it on exit if it
    is still running (a test that stops it itself checks the exit status)."""
    environ = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "adaptformer", "serve", "--registry", str(registry)]
    proc = subprocess.Popen(
        [*cmd, "--port", "0", *flags], env=environ, stderr=subprocess.PIPE, text=True
    )
    log: list[str] = []
    found = threading.Event()
    port: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            log.append(line)
            if (m := _LISTENING.search(line)) and not found.is_set():
                port.append(m.group(1))
                found.set()
        found.set()  # the process ended without listening

    threading.Thread(target=read, daemon=True).start()
    try:
        found.wait(300)
        if not port:
            raise RuntimeError("adaptformer serve did not start:\n" + "".join(log))
        yield Server(proc, f"http://127.0.0.1:{port[0]}", log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
