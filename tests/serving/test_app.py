"""The HTTP API in-process (Starlette's TestClient): answers equal offline `forward_tasks`,
bad input is a 4xx JSON error and the server keeps serving, hot task changes, overload."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

import adaptformer as af
from adaptformer.adapters.inject import adapter_state
from adaptformer.data import build_eval_transform
from adaptformer.serving import app as app_module
from adaptformer.serving.app import create_app
from adaptformer.serving.catalog import Catalog
from adaptformer.serving.config import ServeConfig
from adaptformer.serving.images import decode

from .conftest import TASKS, png

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def client_for(registry: af.TaskRegistry, **settings) -> TestClient:
    catalog = Catalog.from_registry(registry)
    app = create_app(catalog, ServeConfig(**settings), admin_token=TOKEN)
    return TestClient(app, base_url="http://localhost")  # a Host the default config accepts


def offline_probs(registry: af.TaskRegistry, images: list[bytes], tasks: list[str]) -> torch.Tensor:
    """What the registry's tasks say offline: one `forward_tasks` pass, softmax per row."""
    b = registry.backbone
    tf = build_eval_transform(b["img_size"], b["mean"], b["std"], b["interpolation"])
    x = torch.stack([tf(decode(d, "offline")) for d in images])
    model = registry.build_model()
    with torch.inference_mode():
        out = af.forward_tasks(model, x, tasks)
    return [row.softmax(0) for row in out.per_sample()]


def probs_of(answer: dict) -> torch.Tensor:
    """The full probability vector from a top-k answer with k = every class."""
    top = sorted(answer["top"], key=lambda p: p["index"])
    return torch.tensor([p["prob"] for p in top])


def version_of(run: Path) -> str:
    from adaptformer.serving.store import task_digest

    return task_digest(run)[:12]


def test_predict_equals_offline_forward_tasks(registry, task_runs):
    images = [png(1), png(2)]
    with client_for(registry) as client:
        r = client.post(
            "/v1/predict",
            files=[("image", ("a.png", images[0], "image/png")), ("image", ("b.png", images[1]))],
            data={"tasks": "all", "top_k": "10"},
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        j = client.post(
            "/v1/predict",
            json={
                "images": [base64.b64encode(d).decode() for d in images],
                "tasks": ["colours", "shapes"],
                "top_k": 2,
            },
        )
        assert j.status_code == 200, j.text
    assert [res["filename"] for res in results] == ["a.png", "b.png"]
    names = sorted(TASKS)
    assert all(sorted(res["tasks"]) == names for res in results)
    offline = offline_probs(registry, [d for d in images for _ in names], names * len(images))
    for i, res in enumerate(results):
        for k, name in enumerate(names):
            answer = res["tasks"][name]
            assert answer["version"] == version_of(task_runs[name])
            assert [p["label"] for p in answer["top"]] == [
                TASKS[name][1][p["index"]] for p in answer["top"]
            ]
            assert len(answer["top"]) == len(TASKS[name][1])  # top_k 10 > classes: every class
            torch.testing.assert_close(
                probs_of(answer), offline[i * len(names) + k], rtol=0, atol=1e-5
            )
    for i, res in enumerate(j.json()["results"]):  # base64 JSON: same numbers, top 2 in order
        assert list(res["tasks"]) == ["colours", "shapes"]
        for name in ("colours", "shapes"):
            top = res["tasks"][name]["top"]
            full = results[i]["tasks"][name]["top"]
            assert [p["index"] for p in top] == [p["index"] for p in full[:2]]
            assert [p["prob"] for p in top] == pytest.approx(
                [p["prob"] for p in full[:2]], abs=1e-6
            )


def test_tasks_health_metrics_and_page(registry, task_runs):
    with client_for(registry) as client:
        listing = client.get("/v1/tasks").json()
        assert [t["name"] for t in listing["tasks"]] == sorted(TASKS)
        assert {t["name"]: t["version"] for t in listing["tasks"]} == {
            n: version_of(task_runs[n]) for n in TASKS
        }
        assert {t["name"]: t["num_classes"] for t in listing["tasks"]} == {
            n: len(c) for n, (_, c) in TASKS.items()
        }
        assert client.get("/healthz").json() == {
            "status": "ok",
            "tasks": 3,
            "queue": 0,
            "preparing": 0,
            "reading": 0,
        }
        client.post("/v1/predict", files={"image": ("x.png", png())}, data={"tasks": "probe"})
        client.post("/v1/predict", json={"images": [], "tasks": "probe"})
        text = client.get("/metrics").text
        page = client.get("/")
    assert 'adaptformer_requests_total{status="200"} 1.0' in text
    assert 'adaptformer_requests_total{status="422"} 1.0' in text
    assert 'adaptformer_rows_total{task="probe"} 1.0' in text
    assert 'adaptformer_latency_seconds_count{task="probe"} 1.0' in text
    assert "adaptformer_batch_size_bucket" in text and "adaptformer_queue_depth 0.0" in text
    assert page.status_code == 200 and "/v1/predict" in page.text


# a file part whose closing boundary (--x--) never comes: a truncated upload
UNTERMINATED = (
    b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n" + png()
)


def bomb() -> bytes:
    """50 M pixels of zeros: a ~50 KiB PNG that would decode to 150 MiB of RGB."""
    buf = io.BytesIO()
    Image.new("L", (10_000, 5_000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("request_kwargs", "status", "words"),
    [
        (
            {"files": {"image": ("a.txt", b"hello, not an image")}},
            422,
            "image 0 (a.txt) is not a readable",
        ),
        ({"files": {"image": ("t.png", png(3)[:-200])}}, 422, "is not a readable image"),
        ({"files": {"image": ("b.png", bomb())}}, 413, "decompression bomb"),
        ({"files": {"image": ("big.png", b"\0" * 300_000)}}, 413, "--max-upload-mb"),
        (
            {"files": {"image": ("a.png", png())}, "data": {"tasks": "cars,shapes"}},
            422,
            "unknown task(s) ['cars']",
        ),
        ({"files": {"image": ("a.png", png())}, "data": {"top_k": "0"}}, 422, "top_k"),
        ({"files": {"image": ("a.png", png())}, "data": {"top_k": "2.5"}}, 422, "top_k"),
        (
            {"content": b'{"images": [', "headers": {"content-type": "application/json"}},
            400,
            "malformed JSON",
        ),
        ({"json": {"images": ["***"]}}, 422, "image 0 is not valid base64"),
        (
            {
                "content": b'{"top_k": ' + b"9" * 5000 + b', "images": []}',
                "headers": {"content-type": "application/json"},
            },
            400,
            "a number of 5,000 digits is too long",
        ),
        (
            {
                "content": b'{"images": ' + b"[" * 200_000,
                "headers": {"content-type": "application/json"},
            },
            400,
            "nested too deeply",
        ),
        ({"json": {"images": "abc"}}, 422, '"images"'),
        ({"json": {"images": [base64.b64encode(png()).decode()] * 5}}, 413, "at most 4"),
        ({"content": b"raw", "headers": {"content-type": "image/png"}}, 415, "multipart/form-data"),
        ({"data": {"tasks": "shapes"}}, 422, "no image"),
        ({"files": {"image": ("a.png", png())}, "data": {"top_k": "9" * 5000}}, 422, "top_k"),
        (
            {
                "content": UNTERMINATED,
                "headers": {"content-type": "multipart/form-data; boundary=x"},
            },
            400,
            "malformed multipart body",
        ),
        (
            {
                "content": b"--x\r\nno headers",
                "headers": {"content-type": "multipart/form-data; boundary=x"},
            },
            400,
            "malformed multipart body",
        ),
    ],
)
def test_bad_input_is_a_4xx_json_error_and_serving_goes_on(registry, request_kwargs, status, words):
    with client_for(registry, max_upload_mb=0.25, max_images=4) as client:
        r = client.post("/v1/predict", **request_kwargs)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        assert words in r.json()["error"] and r.json()["status"] == status
        ok = client.post("/v1/predict", files={"image": ("a.png", png())}, data={"tasks": "shapes"})
        assert ok.status_code == 200
        assert client.get("/healthz").json()["queue"] == 0  # nothing left behind


def test_chunked_upload_over_the_limit_is_refused(registry):
    def chunks():  # no Content-Length: the middleware counts
        for _ in range(40):
            yield b"\0" * 10_000

    with client_for(registry, max_upload_mb=0.25) as client:
        r = client.post(
            "/v1/predict",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]


def test_task_changes_need_the_token(registry, task_runs):
    body = {"run": str(task_runs["shapes_v2"])}
    with client_for(registry) as client:
        assert client.put("/v1/tasks/shapes", json=body).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert client.put("/v1/tasks/shapes", json=body, headers=bad).status_code == 401
        assert client.delete("/v1/tasks/shapes", headers=bad).status_code == 401
    catalog = Catalog.from_registry(registry)
    app = create_app(catalog, admin_token=None)
    with TestClient(app, base_url="http://localhost") as client:  # no token: disabled
        r = client.put("/v1/tasks/shapes", json=body, headers=AUTH)
        assert r.status_code == 403 and "ADAPTFORMER_ADMIN_TOKEN" in r.json()["error"]
    assert registry.list()[2].name == "shapes" and registry.metadata("shapes")  # unchanged


def test_hot_replace_add_remove_and_a_broken_task_is_refused(registry, task_runs, tmp_path):
    v1, v2 = version_of(task_runs["shapes"]), version_of(task_runs["shapes_v2"])
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in task_runs["shapes_v2"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated tensor data
    one = {"files": {"image": ("a.png", png())}, "data": {"tasks": "shapes", "top_k": "3"}}
    with client_for(registry) as client:
        before = client.post("/v1/predict", **one).json()["results"][0]["tasks"]["shapes"]
        assert before["version"] == v1
        r = client.put("/v1/tasks/shapes", json={"run": str(broken)}, headers=AUTH)
        assert r.status_code == 422, r.text
        assert f"version {v1} keeps serving" in r.json()["error"]
        still = client.post("/v1/predict", **one).json()["results"][0]["tasks"]["shapes"]
        assert still == before
        assert version_of(registry.path("shapes")) == v1  # the registry kept the old files

        r = client.put("/v1/tasks/shapes", json={"run": str(task_runs["shapes_v2"])}, headers=AUTH)
        assert r.status_code == 200 and r.json()["version"] == v2
        after = client.post("/v1/predict", **one).json()["results"][0]["tasks"]["shapes"]
        assert after["version"] == v2 and after["top"] != before["top"]
        assert version_of(registry.path("shapes")) == v2  # written through to the registry

        r = client.put("/v1/tasks/copy", json={"run": str(task_runs["colours"])}, headers=AUTH)
        assert r.status_code == 200 and "copy" in registry.names()
        r = client.delete("/v1/tasks/colours", headers=AUTH)
        assert r.status_code == 200 and "colours" not in registry.names()
        gone = client.post("/v1/predict", files=one["files"], data={"tasks": "colours"})
        assert gone.status_code == 422 and "unknown task(s) ['colours']" in gone.json()["error"]
        assert client.delete("/v1/tasks/colours", headers=AUTH).status_code == 404
        assert client.put("/v1/tasks/nothere", json={}, headers=AUTH).status_code == 404
        assert client.put("/v1/tasks/a.b", json={}, headers=AUTH).status_code == 422
        r = client.put("/v1/tasks/shapes", json={"run": 3}, headers=AUTH)
        assert r.status_code == 422
        names = [t["name"] for t in client.get("/v1/tasks").json()["tasks"]]
        assert names == ["copy", "probe", "shapes"]
        # only the served versions are left in the model: retired ones were deleted
        adapters = set(adapter_state(client.app.state.service.catalog.model).configs)
        assert {a.split("@")[0] for a in adapters} == {"copy", "probe", "shapes"}
        assert len(adapters) == 3


@pytest.fixture
def slow_upload(monkeypatch) -> threading.Event:
    """Images named ``slow.png`` stay in decoding until the returned event is set: a request
    still being prepared, which queued rows wait for (up to --max-wait-ms)."""
    gate = threading.Event()
    real = app_module.preprocess

    def preprocess(data, what, *args):
        if "slow.png" in what:
            gate.wait(120)
        return real(data, what, *args)

    monkeypatch.setattr(app_module, "preprocess", preprocess)
    yield gate
    gate.set()


def in_thread(answers: dict, key: str, fn, *args, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.setdefault(key, fn(*args, **kwargs)))
    thread.start()
    return thread


def wait_for(condition, thread: threading.Thread) -> None:
    """Until ``condition()`` holds (no time limit of our own: pytest's applies)."""
    while not condition():
        thread.join(0.01)


def test_a_lone_request_does_not_wait_for_company(registry):
    """Nothing else is on its way, so a 10-minute max wait is not spent (the test would hang)."""
    with client_for(registry, max_wait_ms=600_000) as client:
        r = client.post("/v1/predict", files={"image": ("a.png", png())}, data={"tasks": "probe"})
    assert r.status_code == 200


def test_requests_in_flight_finish_on_the_version_they_arrived_for(
    registry, task_runs, slow_upload
):
    """A queued row of `shapes` v1 and a new one of v2 run in the same pass, each on its own."""
    one = {"files": {"image": ("a.png", png())}, "data": {"tasks": "shapes", "top_k": "3"}}
    with client_for(registry) as client:  # reference answers of both versions
        old = client.post("/v1/predict", **one).json()["results"][0]["tasks"]["shapes"]
        client.put("/v1/tasks/shapes", json={"run": str(task_runs["shapes_v2"])}, headers=AUTH)
        new = client.post("/v1/predict", **one).json()["results"][0]["tasks"]["shapes"]
    registry.add("shapes", task_runs["shapes"], replace=True)
    answers: dict = {}
    slow = {"files": {"image": ("slow.png", png())}, "data": {"tasks": "probe"}}
    with client_for(registry, max_batch_size=3, max_wait_ms=600_000) as client:
        service = client.app.state.service
        t_slow = in_thread(answers, "slow", client.post, "/v1/predict", **slow)
        wait_for(lambda: service.preparing == 1, t_slow)  # on its way: rows wait for it
        t_first = in_thread(answers, "first", client.post, "/v1/predict", **one)
        wait_for(lambda: service.batcher.depth() == 1, t_first)
        r = client.put("/v1/tasks/shapes", json={"run": str(task_runs["shapes_v2"])}, headers=AUTH)
        assert r.status_code == 200
        assert service.batcher.depth() == 1 and t_first.is_alive()  # not dropped, still queued
        t_second = in_thread(answers, "second", client.post, "/v1/predict", **one)
        wait_for(lambda: service.batcher.depth() == 2, t_second)
        slow_upload.set()  # its row completes the batch: three rows, one pass
        for t in (t_slow, t_first, t_second):
            t.join()
        text = client.get("/metrics").text
    first = answers["first"].json()["results"][0]["tasks"]["shapes"]
    got = answers["second"].json()["results"][0]["tasks"]["shapes"]
    assert answers["slow"].status_code == 200
    assert first["version"] == old["version"] and got["version"] == new["version"]
    assert [p["index"] for p in first["top"]] == [p["index"] for p in old["top"]]
    assert [p["prob"] for p in first["top"]] == pytest.approx(
        [p["prob"] for p in old["top"]], abs=1e-5
    )
    assert [p["prob"] for p in got["top"]] == pytest.approx(
        [p["prob"] for p in new["top"]], abs=1e-5
    )
    assert "adaptformer_batch_size_count 1.0" in text  # one pass ...
    assert "adaptformer_batch_tasks_sum 3.0" in text  # ... of probe, shapes v1 and shapes v2


def test_overload_is_503_with_retry_after_and_stopping_answers_the_queue(registry, slow_upload):
    one = {"files": {"image": ("a.png", png())}, "data": {"tasks": "shapes,colours"}}
    slow = {"files": {"image": ("slow.png", png())}, "data": {"tasks": "probe"}}
    answers: dict = {}
    with client_for(registry, max_batch_size=8, max_queue=3, max_wait_ms=600_000) as client:
        service = client.app.state.service
        t_slow = in_thread(answers, "slow", client.post, "/v1/predict", **slow)
        wait_for(lambda: service.preparing == 1, t_slow)
        waiting = in_thread(answers, "queued", client.post, "/v1/predict", **one)
        wait_for(lambda: service.batcher.depth() == 2, waiting)  # two rows wait for the slow one
        r = client.post("/v1/predict", **one)  # two more rows do not fit in 3
        assert r.status_code == 503, r.text
        assert "queue is full (2 of 3 rows waiting; this request needs 2)" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1
        service.batcher.stop()  # what shutdown does: the queued rows run at once, not dropped
        waiting.join()
        slow_upload.set()
        t_slow.join()
    assert answers["queued"].status_code == 200
    assert sorted(answers["queued"].json()["results"][0]["tasks"]) == ["colours", "shapes"]
    assert answers["slow"].status_code == 503  # arrived after the stop: refused, not lost
    assert "shutting down" in answers["slow"].json()["error"]


def overflow(client: TestClient, task: str) -> None:
    """Make ``task``'s head weights so large its logits overflow to inf (softmax: nan), as a
    task of finite but huge weights would once loaded."""
    catalog = client.app.state.service.catalog
    adapter = {v.name: v.adapter for v in catalog.list()}[task]
    with torch.no_grad():
        for p in af.get_head(catalog.model, adapter).parameters():
            p.fill_(1e38)


def test_one_tasks_non_finite_output_never_breaks_another_tasks_answer(registry):
    one = {"files": {"image": ("a.png", png())}}
    with client_for(registry) as client:
        overflow(client, "probe")
        r = client.post("/v1/predict", **one, data={"tasks": "all", "top_k": "2"})
        assert r.status_code == 200, r.text
        answers = r.json()["results"][0]["tasks"]
        assert "non-finite" in answers["probe"]["error"] and "top" not in answers["probe"]
        assert answers["probe"]["version"]
        for name in ("colours", "shapes"):
            assert len(answers[name]["top"]) == 2 and "error" not in answers[name]
        alone = client.post("/v1/predict", **one, data={"tasks": "probe"})
        assert alone.status_code == 500 and alone.headers["content-type"] == "application/json"
        assert "task 'probe'" in alone.json()["error"] and "non-finite" in alone.json()["error"]
        ok = client.post("/v1/predict", **one, data={"tasks": "shapes"})
        assert ok.status_code == 200


def test_task_listing_shows_server_paths_only_to_the_admin(registry, task_runs):
    with client_for(registry) as client:
        public = client.get("/v1/tasks").json()["tasks"]
        admin = client.get("/v1/tasks", headers=AUTH).json()["tasks"]
        wrong = client.get("/v1/tasks", headers={"Authorization": "Bearer nope"})
    assert all("source" not in t for t in public) and str(registry.root) not in str(public)
    assert {t["name"]: t["source"] for t in admin} == {n: str(registry.path(n)) for n in TASKS}
    assert wrong.status_code == 200 and "source" not in wrong.json()["tasks"][0]


@pytest.mark.parametrize(
    ("settings", "host", "ok"),
    [
        ({}, "localhost:8000", True),
        ({}, "127.0.0.1", True),
        ({}, "[::1]:8000", True),
        ({}, "LOCALHOST", True),
        ({}, "evil.example:8000", False),  # a DNS-rebinding page's host
        ({}, "127.0.0.1.evil.example", False),
        ({"host": "10.1.2.3"}, "10.1.2.3:8000", True),
        ({"host": "10.1.2.3"}, "evil.example", False),
        ({"allowed_hosts": "api.example.com,*.example.org"}, "api.example.com", True),
        ({"allowed_hosts": "api.example.com,*.example.org"}, "a.example.org:443", True),
        ({"allowed_hosts": "api.example.com,*.example.org"}, "localhost", False),
        ({"host": "0.0.0.0"}, "any.example", True),  # every interface: any name, unless listed
        ({"allowed_hosts": "*"}, "any.example", True),
    ],
)
def test_host_header_is_checked_against_allowed_hosts(registry, settings, host, ok):
    with client_for(registry, **settings) as client:
        r = client.get("/v1/tasks", headers={"host": host})
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 400 and r.headers["content-type"] == "application/json"
        assert "--allowed-hosts" in r.json()["error"] and r.json()["status"] == 400


def test_bad_allowed_hosts_setting_is_refused():
    with pytest.raises(ValueError, match="--allowed-hosts"):
        ServeConfig(allowed_hosts="a.example, ,")


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nothere", 404), ("DELETE", "/v1/predict", 405)]
)
def test_routing_errors_are_json(registry, method, path, status):
    with client_for(registry) as client:
        r = client.request(method, path)
    assert r.status_code == status and r.json()["status"] == status


def test_a_dead_model_thread_turns_health_to_503_and_requests_get_503(registry, caplog):
    with client_for(registry) as client:
        service = client.app.state.service

        def broken() -> int:
            raise RuntimeError("a bug in the model thread")

        service.batcher.coming = broken  # the thread calls it while collecting a batch
        service.batcher.max_wait = 600.0
        r = client.post("/v1/predict", files={"image": ("a.png", png())}, data={"tasks": "probe"})
        assert r.status_code == 503 and "model thread stopped" in r.json()["error"]
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "failing"
        assert "a bug in the model thread" in health.json()["reason"]
        again = client.post("/v1/predict", files={"image": ("a.png", png())})
        assert again.status_code == 503
    assert sum("model thread stopped" in r.getMessage() for r in caplog.records) == 1


def test_a_client_gone_mid_upload_is_one_info_line_and_counted_as_499(registry, caplog):
    """The client closes its connection while its body is being read: not an ERROR with a
    traceback and a 500, but one INFO line and a 499 in the metrics."""
    import asyncio

    caplog.set_level("INFO")
    with client_for(registry) as client:
        app = client.app
        head = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        messages = [
            {"type": "http.request", "body": head, "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list = []

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict",
            "query_string": b"", "root_path": "", "client": ("10.9.8.7", 5555),
            "server": ("localhost", 80),
            "headers": [(b"host", b"localhost"),
                        (b"content-type", b"multipart/form-data; boundary=x")],
        }  # fmt: skip
        asyncio.run(app(scope, receive, send))
        text = client.get("/metrics").text
        health = client.get("/healthz").json()
    assert 'adaptformer_requests_total{status="499"} 1.0' in text
    assert 'status="500"' not in text
    assert health["preparing"] == 0  # its slot is back
    gone = [r for r in caplog.records if "10.9.8.7" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelname == "INFO" and not gone[0].exc_info
    assert not [r for r in caplog.records if r.levelno >= 40]  # no ERROR
