"""`adaptformer serve` as a real process: concurrent clients, the admin token from the
environment, and SIGTERM answering every request in flight (even one still uploading) before
the process exits."""

from __future__ import annotations

import base64
import signal
import threading

from ..benchmarks.conftest import load_script
from .conftest import png
from .server import client, running


def test_sigterm_drains_requests_in_flight_then_exits(registry, task_runs):
    # a pass waits for 64 rows; the slow upload below may pause as long as the test needs
    flags = ("--max-batch-size", "64", "--max-wait-ms", "600000", "--body-timeout", "600")
    env = {"ADAPTFORMER_ADMIN_TOKEN": "tok"}
    with running(registry.root, *flags, env=env) as server, client(server) as http:
        r = http.put(
            "/v1/tasks/extra",
            json={"run": str(task_runs["shapes_v2"])},
            headers={"Authorization": "Bearer tok"},
        )
        assert r.status_code == 200, r.text
        answers: dict[str, object] = {}

        def ask(task: str) -> None:
            with client(server) as c:
                answers[task] = c.post(
                    "/v1/predict", files={"image": ("a.png", png())}, data={"tasks": task}
                )

        gate = threading.Event()

        def upload():  # a JSON body sent in two pieces, the second only when the gate opens
            yield b'{"tasks": "probe", "images": ["' + base64.b64encode(png(5)) + b'"]'
            gate.wait(120)
            yield b"}"

        def ask_slowly() -> None:
            with client(server) as c:
                answers["slow"] = c.post(
                    "/v1/predict", content=upload(), headers={"content-type": "application/json"}
                )

        slow = threading.Thread(target=ask_slowly)
        slow.start()  # on its way: the rows below wait for it (up to the 10-minute max wait)
        while http.get("/healthz").json()["preparing"] < 1:
            slow.join(0.05)
        threads = [threading.Thread(target=ask, args=(t,)) for t in ("shapes", "extra", "probe")]
        for t in threads:
            t.start()
        while http.get("/healthz").json()["queue"] < 3:  # three rows wait for the slow one
            threads[0].join(0.05)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)  # answered at once: a shutdown waits for no more company
        assert all(answers[t].status_code == 200 for t in ("shapes", "extra", "probe"))
        assert server.proc.poll() is None  # still running: the slow upload is in flight
        gate.set()
        slow.join(120)
        # uvicorn re-raises the signal after its graceful shutdown, as a plain SIGTERM would end
        assert server.proc.wait(120) in (0, -signal.SIGTERM)
    assert answers["slow"].status_code == 200, answers["slow"].text
    for task in ("shapes", "extra", "probe"):
        assert answers[task].status_code == 200, answers[task].text
        assert list(answers[task].json()["results"][0]["tasks"]) == [task]
    log = "".join(server.log)
    assert "drained: every queued request was answered" in log


def test_the_budget_flags_page_tasks_in_a_real_server(registry):
    """`--max-resident-tasks 2 --adapter-memory 1` on the command line: six tasks answered,
    never more than two in memory, the budget on /metrics and /healthz."""
    load_script("serve").write_tasks(registry, "shapes", 4, prefix="s")
    flags = ("--max-resident-tasks", "2", "--adapter-memory", "1", "--max-wait-ms", "0")
    with running(registry.root, *flags) as server, client(server) as http:
        for task in ("s0", "s1", "s2", "shapes", "probe", "s0", "colours"):
            r = http.post("/v1/predict", files={"image": ("a.png", png())}, data={"tasks": task})
            assert r.status_code == 200, r.text
        text = http.get("/metrics").text
        health = http.get("/healthz").json()
    assert "adaptformer_resident_budget_tasks 2.0" in text
    assert "adaptformer_resident_tasks_peak 2.0" in text
    assert "adaptformer_task_evictions_total 5.0" in text
    assert health["resident"]["tasks"] == 2 and health["resident"]["max_bytes"] == 2**20
    assert "tasks are loaded on demand and kept within --max-resident-tasks 2" in "".join(
        server.log
    )
