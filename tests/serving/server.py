"""`adaptformer serve` as a real process on a free loopback port: the load benchmark's helper
(benchmarks/serve.py ``running``), so tests and benchmark start the server the same way."""

from __future__ import annotations

import httpx

from ..benchmarks.conftest import load_script

running = load_script("serve").running


def client(server, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120, **kwargs)
