"""Slow and vanishing uploads against a real `adaptformer serve` on loopback (issue #24 item 1):
clients that send headers and part of a body, then nothing (or a byte now and then), must not
hold the server's request slots: one address holds at most --max-uploads-per-client of them, a
body that is not complete by its deadline gets 408 and its slot back, a client that closes its
connection is one INFO line and a 499, and /healthz says when every slot is taken.

Slow clients connect from other loopback addresses (127.0.0.2, 127.0.0.3: all of 127/8 is this
machine) so the per-address cap can be seen apart from the normal client on 127.0.0.1. The
limits are set small so each test takes seconds."""

from __future__ import annotations

import json
import socket
import sys
import threading
from urllib.parse import urlsplit

import pytest

from .conftest import png
from .server import client, running

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="binds 127.0.0.2 (all of 127/8 is loopback)"
)
HEAD = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n\x89PNG'


def open_upload(server, source: str) -> socket.socket:
    """A connection that sent a /v1/predict's headers and the first bytes of its body."""
    port = urlsplit(server.url).port
    sock = socket.create_connection(("127.0.0.1", port), timeout=120, source_address=(source, 0))
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n" + HEAD
    )
    return sock


def answer(sock: socket.socket) -> tuple[int, dict, str]:
    """(status, JSON body, raw head) of the response on ``sock``, read until it is complete."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body[: _length(data)]), head.decode("latin-1").lower()


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


def until(condition, what: str, tries: int = 2400) -> None:
    """Poll ``condition`` (every 50 ms, 2 minutes at most: a bound against hangs only)."""
    for _ in range(tries):
        if condition():
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def predict(http) -> int:
    r = http.post("/v1/predict", files={"image": ("a.png", png())}, data={"tasks": "probe"})
    return r.status_code



def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock``: end of stream, or a reset when the client was still
    sending after the close (the trickling client races the server's close)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_slow_uploads_cannot_hold_every_slot_and_vanishing_ones_give_theirs_back(registry):
    flags = ("--max-queue", "4", "--max-uploads-per-client", "2", "--body-timeout", "600")
    with running(registry.root, *flags) as server, client(server) as http:
        health = lambda: http.get("/healthz")  # noqa: E731
        first = [open_upload(server, "127.0.0.2") for _ in range(2)]
        until(lambda: health().json()["reading"] == 2, "two uploads in progress")
        extra = open_upload(server, "127.0.0.2")  # a third from the same address: refused now
        status, body, head = answer(extra)
        assert status == 429 and "--max-uploads-per-client" in body["error"]
        assert "connection: close" in head
        extra.close()
        assert predict(http) == 200  # another address is served while the two stay open
        more = [open_upload(server, "127.0.0.3") for _ in range(2)]
        until(lambda: health().json()["reading"] == 4, "four uploads in progress")
        assert "adaptformer_requests_reading 4.0" in http.get("/metrics").text
        saturated = health()
        assert saturated.status_code == 503 and saturated.json()["status"] == "saturated"
        assert (
            "4 of 4" in saturated.json()["reason"] and "--max-queue" in saturated.json()["reason"]
        )
        for sock in first + more:  # the clients give up: their slots come back
            sock.close()
        until(lambda: health().json()["preparing"] == 0, "the slots to come back")
        assert health().json() == {"status": "ok", "tasks": 3, "queue": 0, "preparing": 0,
                                   "reading": 0}  # fmt: skip
        assert predict(http) == 200
        metrics = http.get("/metrics").text
    assert 'adaptformer_requests_total{status="499"} 4.0' in metrics
    assert 'adaptformer_requests_total{status="429"} 1.0' in metrics
    log = "".join(server.log)
    assert log.count("closed the connection while its request body was being read") == 4
    assert "ERROR" not in log and "Traceback" not in log


def test_a_body_or_head_below_the_minimum_rate_gets_408_and_its_slot_back(registry):
    flags = ("--body-timeout", "1", "--min-upload-rate", "1")  # 1 s + 1 s per KiB received
    with running(registry.root, *flags) as server, client(server) as http:
        stalled = open_upload(server, "127.0.0.2")  # then nothing
        trickle = open_upload(server, "127.0.0.2")
        stop = threading.Event()

        def drip() -> None:  # a byte every 50 ms: never idle long, but 20 bytes/s
            try:
                while not stop.wait(0.05):
                    trickle.sendall(b"\0")
            except OSError:
                pass  # the server answered and closed

        dripping = threading.Thread(target=drip)
        dripping.start()
        for sock in (stalled, trickle):
            status, body, head = answer(sock)
            assert status == 408 and "--body-timeout" in body["error"], body
            assert "--min-upload-rate" in body["error"] and "connection: close" in head
            assert closed_by_server(sock)
        stop.set()
        dripping.join()
        until(lambda: http.get("/healthz").json()["reading"] == 0, "the slots to come back")
        assert predict(http) == 200
        metrics = http.get("/metrics").text
        port = urlsplit(server.url).port
        with socket.create_connection(("127.0.0.1", port), timeout=60) as head_only:
            head_only.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no more
            assert head_only.recv(1) == b""  # closed: headers have the same deadline
    assert 'adaptformer_requests_total{status="408"} 2.0' in metrics
    assert "Traceback" not in "".join(server.log)


def test_protocol_errors_and_foreign_hosts_are_answered_as_json(registry):
    with running(registry.root) as server:
        port = urlsplit(server.url).port
        for request, words in [
            (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
             "invalid HTTP request"),
            (b"GET /v1/tasks HTTP/1.1\r\nHost: rebound.example\r\n\r\n", "--allowed-hosts"),
            (b"GARBAGE\r\n\r\n", "invalid HTTP request"),
        ]:  # fmt: skip
            with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                sock.sendall(request)
                status, body, head = answer(sock)
            assert status == 400 and "content-type: application/json" in head
            assert words in body["error"] and body["status"] == 400
