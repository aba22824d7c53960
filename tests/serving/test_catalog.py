"""The catalog under a memory budget: tasks listed at start without reading weights, loaded on
first use, evicted least recently used first but never while a row needs them, a slow load
never stalling other tasks' passes, hot changes and versions as without a budget."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
import torch
from starlette.testclient import TestClient

import adaptformer as af
from adaptformer.adapters.inject import adapter_state
from adaptformer.serving import catalog as catalog_module
from adaptformer.serving.app import _abandon, create_app
from adaptformer.serving.batcher import Row
from adaptformer.serving.catalog import Catalog, TaskUnavailable, TooManyTasks, UnknownTask
from adaptformer.serving.config import ServeConfig
from adaptformer.serving.paging import Budget
from adaptformer.serving.store import task_digest

from ..benchmarks.conftest import load_script
from .conftest import png

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def paged(registry: af.TaskRegistry) -> af.TaskRegistry:
    """The three conftest tasks plus s0..s5, AdaptFormer tasks of their own random weights
    shaped like `shapes` (3 classes) except s3 (5 classes)."""
    load_script("serve").write_tasks(registry, "shapes", 6, prefix="s", classes=[3, 3, 3, 5])
    return registry


def reference(registry: af.TaskRegistry, names: list[str]) -> dict[str, torch.Tensor]:
    """Each task's logits on X with the task alone loaded by `load_adapter`."""
    model = registry.build_model(names=[])
    out = {}
    for name in names:
        af.load_adapter(model, registry.path(name), name=name)
        with torch.no_grad():
            out[name] = af.forward_tasks(model, X, [name] * len(X)).logits
        af.delete_adapter(model, name)
    return out


def ask(catalog: Catalog, names: list[str], timeout: float = 30.0) -> dict[str, torch.Tensor]:
    """One request through the catalog as the server makes it: checkout, pin or acquire, a
    pass, release."""
    versions = catalog.checkout(names, len(X))
    if not catalog.pin(versions, len(X)):
        versions = catalog.acquire(versions, len(X), timeout)
    adapters = [v.adapter for v in versions]
    rows = [a for a in adapters for _ in range(len(X))]
    with catalog.model_lock, torch.no_grad():
        logits = af.forward_tasks(catalog.model, X.repeat(len(adapters), 1, 1, 1), rows).logits
    catalog.release([Row(torch.empty(0), a) for a in rows])
    return {v.name: logits[i * len(X) : (i + 1) * len(X)] for i, v in enumerate(versions)}


def resident(catalog: Catalog) -> list[str]:
    """Tasks in memory, least recently used first."""
    return [s.holder.name for s in catalog.residency.slots()]


def paged_catalog(registry: af.TaskRegistry, **budget) -> Catalog:
    return Catalog.from_registry(registry, budget=Budget(**budget))


def test_start_lists_every_task_without_reading_a_weight(paged, monkeypatch):
    reads = []
    real = catalog_module.read_task
    monkeypatch.setattr(catalog_module, "read_task", lambda f: reads.append(f) or real(f))
    catalog = paged_catalog(paged, max_tasks=2)
    assert reads == [] and resident(catalog) == [] and catalog.paged
    listing = {v.name: v for v in catalog.list()}
    assert sorted(listing) == sorted(paged.names())
    assert all(v.version == task_digest(paged.path(n))[:12] for n, v in listing.items())
    assert all(not v.resident for v in listing.values())
    assert len(listing["s3"].classes) == 5 and listing["colours"].method == "lora"
    assert getattr(catalog.model, "adaptformer", None) is None  # no adapter in the model
    ask(catalog, ["s0"])
    assert len(reads) == 1 and resident(catalog) == ["s0"]


def test_lru_by_count_answers_like_the_task_loaded_alone(paged):
    want = reference(paged, ["s0", "s1", "s2", "s3", "colours"])
    catalog = paged_catalog(paged, max_tasks=2)
    for name in ("s0", "s1"):
        torch.testing.assert_close(ask(catalog, [name])[name], want[name])
    assert resident(catalog) == ["s0", "s1"]
    ask(catalog, ["s0"])  # used again: s1 is now the least recently used
    assert resident(catalog) == ["s1", "s0"]
    torch.testing.assert_close(ask(catalog, ["s2"])["s2"], want["s2"])
    assert resident(catalog) == ["s0", "s2"]  # s1 evicted, s0 kept
    for name in ("s3", "colours", "s1"):  # other shapes: new modules; s1: a refill
        torch.testing.assert_close(ask(catalog, [name])[name], want[name])
        assert len(resident(catalog)) == 2
    assert resident(catalog) == ["colours", "s1"]
    stats = catalog.residents().stats
    assert stats.evictions == 4 and sum(stats.loads.values()) == 6
    assert stats.loads["refill"] >= 1  # s2 went into s1's slot (same shape)
    assert len(adapter_state(catalog.model).configs) == 2  # evicted adapters left the model
    assert catalog.residents().peak_tasks == 2


def test_lru_by_bytes(paged):
    one = {v.name: v.nbytes for v in paged_catalog(paged, max_tasks=99).list()}
    assert one["s3"] > one["s0"]  # 5 classes against 3
    catalog = paged_catalog(paged, max_bytes=2 * one["s0"] + one["s0"] // 2)
    ask(catalog, ["s0"])
    ask(catalog, ["s1"])
    assert resident(catalog) == ["s0", "s1"]
    ask(catalog, ["s2"])
    assert resident(catalog) == ["s1", "s2"]
    ask(catalog, ["probe"])  # a linear probe: a head only, it fits beside them
    assert resident(catalog) == ["s1", "s2", "probe"]
    ask(catalog, ["s3"])  # bigger: the oldest makes room
    assert resident(catalog) == ["s2", "probe", "s3"]
    ask(catalog, ["s4"])
    assert resident(catalog) == ["probe", "s3", "s4"]
    r = catalog.residents()
    assert r.nbytes <= r.budget.max_bytes and r.peak_bytes <= r.budget.max_bytes
    assert r.nbytes == sum(one[n] for n in ("probe", "s3", "s4"))


def test_a_task_in_use_is_never_evicted_and_a_request_without_room_waits_then_503s(paged):
    catalog = paged_catalog(paged, max_tasks=1)
    busy = catalog.checkout(["s0"], 1)
    busy = catalog.acquire(busy, 1, 5)  # a row of s0 is queued: s0 is pinned
    waiting = catalog.checkout(["s1"], 1)
    start = time.monotonic()
    with pytest.raises(TaskUnavailable, match="could not be loaded within 0.3 s") as err:
        catalog.acquire(waiting, 1, 0.3)
    assert time.monotonic() - start >= 0.3 and err.value.retry_after == 1
    assert "1 of the 1 tasks in memory are in use" in str(err.value)
    assert resident(catalog) == ["s0"] and busy[0].resident
    assert {v.name: v for v in catalog.list()}["s1"].pending == 0  # checkout released
    got: dict[str, object] = {}
    later = catalog.checkout(["s1"], 1)
    t = threading.Thread(target=lambda: got.update(v=catalog.acquire(later, 1, 60)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and resident(catalog) == ["s0"]  # still waiting for room
    catalog.release([Row(torch.empty(0), busy[0].adapter)])  # the row was answered
    t.join(60)
    assert resident(catalog) == ["s1"] and got["v"][0].name == "s1"


def test_a_request_for_more_tasks_than_the_budget_holds_is_refused_at_once(paged):
    catalog = paged_catalog(paged, max_tasks=2)
    with pytest.raises(TooManyTasks, match="names 3 tasks, more than this server keeps"):
        catalog.checkout(["s0", "s1", "s2"], 1)
    with pytest.raises(TooManyTasks, match="--max-resident-tasks 2"):
        catalog.checkout(["all"], 1)
    assert all(v.pending == 0 for v in catalog.list())
    got = ask(catalog, ["s0", "s3"])  # two fit
    assert sorted(got) == ["s0", "s3"]


def test_requests_of_several_tasks_cannot_deadlock_each_other(paged):
    """Budget 2, each request needs 2 tasks: a request holds no memory while it waits."""
    catalog = paged_catalog(paged, max_tasks=2)
    want = reference(paged, ["s0", "s1", "s2", "s4"])
    pairs = [["s0", "s1"], ["s2", "s4"], ["s1", "s2"], ["s4", "s0"]] * 4
    errors: list[BaseException] = []

    def client(pair: list[str]) -> None:
        try:
            got = ask(catalog, pair, timeout=60)
            for name in pair:
                torch.testing.assert_close(got[name], want[name])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(p,)) for p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "requests deadlocked"
    assert not errors, errors[0]
    assert catalog.residents().peak_tasks <= 2


def client_for(registry, **settings) -> TestClient:
    catalog = Catalog.from_registry(registry, budget=ServeConfig(**settings).budget)
    app = create_app(catalog, ServeConfig(**settings), admin_token=TOKEN)
    return TestClient(app, base_url="http://localhost")


def post(client: TestClient, tasks: str, image: int = 0):
    return client.post(
        "/v1/predict", files={"image": ("a.png", png(image))}, data={"tasks": tasks, "top_k": "9"}
    )


def test_a_slow_load_does_not_stall_other_tasks(paged, monkeypatch):
    gate, started = threading.Event(), threading.Event()
    real = catalog_module.read_task

    def slow(folder):
        if folder.name == "s1":
            started.set()
            assert gate.wait(60)
        return real(folder)

    monkeypatch.setattr(catalog_module, "read_task", slow)
    answers: dict = {}
    with client_for(paged, max_resident_tasks=3, max_wait_ms=0) as client:
        t = threading.Thread(target=lambda: answers.update(s1=post(client, "s1")))
        t.start()
        assert started.wait(60)
        for task in ("s0", "shapes", "s0", "probe"):  # loaded and answered meanwhile
            r = post(client, task)
            assert r.status_code == 200, r.text
        assert t.is_alive()
        gate.set()
        t.join(60)
        text = client.get("/metrics").text
    assert answers["s1"].status_code == 200
    assert "adaptformer_batch_size_count 5.0" in text  # five passes: s1's came last
    assert 'adaptformer_task_loads_total{kind="new"}' in text


def test_503_without_room_over_http_then_served(paged):
    with client_for(paged, max_resident_tasks=1, resident_wait=0.2) as client:
        catalog = client.app.state.service.catalog
        held = catalog.acquire(catalog.checkout(["s0"], 1), 1, 5)  # a queued row of s0
        r = post(client, "s1")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "could not be loaded within 0.2 s (--resident-wait)" in r.json()["error"]
        assert "\n" not in r.json()["error"]
        health = client.get("/healthz").json()
        assert health["resident"] == {"tasks": 1, "max_tasks": 1, "bytes": held[0].nbytes,
                                      "max_bytes": 0}  # fmt: skip
        catalog.release([Row(torch.empty(0), held[0].adapter)])
        assert post(client, "s1").status_code == 200
        too_many = post(client, "all")
        assert too_many.status_code == 422 and "--max-resident-tasks 1" in too_many.json()["error"]


def test_metrics_show_residency_loads_evictions_and_the_budget(paged):
    with client_for(paged, max_resident_tasks=2, adapter_memory=1) as client:
        for task in ("s0", "s1", "s2", "s0", "s3"):
            assert post(client, task).status_code == 200
        text = client.get("/metrics").text
        catalog = client.app.state.service.catalog
    lines = {
        k: float(v)
        for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }
    assert lines["adaptformer_resident_tasks"] == 2
    assert lines["adaptformer_resident_budget_tasks"] == 2
    assert lines["adaptformer_resident_budget_bytes"] == 2**20
    nbytes = sum(s.nbytes for s in catalog.residency.slots())
    assert lines["adaptformer_resident_adapter_bytes"] == nbytes > 0
    assert lines["adaptformer_task_evictions_total"] == 3  # s0, s1, s2 (then s0 is back)
    loads = lines['adaptformer_task_loads_total{kind="new"}']
    assert loads + lines['adaptformer_task_loads_total{kind="refill"}'] == 5
    assert lines["adaptformer_task_load_seconds_count"] == 5
    assert lines["adaptformer_task_load_seconds_sum"] > 0
    assert lines['adaptformer_task_load_seconds_bucket{le="+Inf"}'] == 5
    assert lines["adaptformer_resident_tasks_peak"] == 2
    assert lines["adaptformer_tasks_loading"] == 0


def test_hot_add_replace_and_remove_keep_working_with_paging(paged, task_runs):
    v1, v2 = (task_digest(task_runs[n])[:12] for n in ("shapes", "shapes_v2"))
    with client_for(paged, max_resident_tasks=2) as client:
        first = post(client, "shapes").json()["results"][0]["tasks"]["shapes"]
        assert first["version"] == v1
        r = client.put("/v1/tasks/shapes", json={"run": str(task_runs["shapes_v2"])}, headers=AUTH)
        assert r.status_code == 200 and r.json()["version"] == v2
        assert r.json()["resident"] is False  # loaded on its next request
        second = post(client, "shapes").json()["results"][0]["tasks"]["shapes"]
        assert second["version"] == v2 and second["top"] != first["top"]
        r = client.put("/v1/tasks/fresh", json={"run": str(task_runs["colours"])}, headers=AUTH)
        assert r.status_code == 200
        assert post(client, "fresh").status_code == 200
        assert client.put("/v1/tasks/fresh", json={}, headers=AUTH).json()["resident"] is True
        assert client.delete("/v1/tasks/s0", headers=AUTH).status_code == 200
        assert post(client, "s0").status_code == 422 and "s0" not in paged.names()
        catalog = client.app.state.service.catalog
        listing = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert listing["shapes"]["version"] == v2 and "s0" not in listing
    assert sorted(resident(catalog)) == ["fresh", "shapes"]
    assert len(adapter_state(catalog.model).configs) == 2  # shapes v1 left the model


def test_a_version_replaced_while_out_of_memory_is_answered_by_the_current_one(paged, task_runs):
    catalog = paged_catalog(paged, max_tasks=2)
    old = catalog.checkout(["shapes"], 1)  # arrived, not loaded yet
    catalog.put("shapes", task_runs["shapes_v2"])
    got = catalog.acquire(old, 1, 10)
    assert got[0].version == task_digest(task_runs["shapes_v2"])[:12] and got[0].pending == 1
    assert old[0].pending == 0 and old[0].retired
    catalog.release([Row(torch.empty(0), got[0].adapter)])
    gone = catalog.checkout(["s0"], 1)
    catalog.remove("s0")
    with pytest.raises(UnknownTask, match="stopped being served"):
        catalog.acquire(gone, 1, 10)


def test_a_task_changed_on_disk_is_refused_until_an_empty_put(paged, task_runs):
    catalog = paged_catalog(paged, max_tasks=2)
    before = catalog.list()[0]
    other = af.TaskRegistry(paged.root)  # another process's `adaptformer tasks add --replace`
    other.add("colours", task_runs["probe"], replace=True)
    with pytest.raises(TaskUnavailable, match="changed on disk since this server took it in"):
        ask(catalog, ["colours"])
    assert catalog.list()[0].version == before.version
    catalog.put("colours")
    got = ask(catalog, ["colours"])
    assert got["colours"].shape == (len(X), 2)  # the probe's two classes
    assert catalog.list()[0].version == task_digest(paged.path("colours"))[:12]
    assert catalog.residents().stats.failures == 1
    other.remove("s4")  # `adaptformer tasks remove` in another process: listed, not loadable
    with pytest.raises(TaskUnavailable, match="task 's4' could not be loaded from .*s4"):
        ask(catalog, ["s4"])
    assert ask(catalog, ["s5"])  # the others serve on


def test_a_damaged_task_file_is_a_503_for_its_requests_only(paged):
    import json

    weights = paged.path("s2") / "adapter_model.safetensors"
    with client_for(paged, max_resident_tasks=2) as client:
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # same size, other bytes
        r = post(client, "s2")
        assert r.status_code == 503 and "retry-after" not in r.headers
        assert "changed on disk" in r.json()["error"]
        assert post(client, "s1").status_code == 200
    nan = b"\x00\x00\xc0\x7f"  # float32 NaN: the header passes, the values do not
    weights.write_bytes(weights.read_bytes()[:-8] + nan * 2)  # and indexed as it is now
    index = json.loads((paged.root / "registry.json").read_text())
    index["tasks"]["s2"]["sha256"] = task_digest(paged.path("s2"))
    (paged.root / "registry.json").write_text(json.dumps(index))
    with client_for(paged, max_resident_tasks=2) as client:
        r = post(client, "s2")
        assert r.status_code == 503 and "could not be loaded from" in r.json()["error"]
        assert "NaN" in r.json()["error"]
        assert "\n" not in r.json()["error"] and post(client, "s1").status_code == 200


def test_an_abandoned_request_gives_back_what_it_held(paged):
    catalog = paged_catalog(paged, max_tasks=2)
    versions = catalog.checkout(["s0"], 1)
    never_ran: Future = Future()
    never_ran.cancel()
    _abandon(catalog, versions, 1, never_ran)
    assert versions[0].pending == 0
    versions = catalog.checkout(["s0"], 1)
    done: Future = Future()
    done.set_result(catalog.acquire(versions, 1, 5))
    _abandon(catalog, versions, 1, done)
    assert versions[0].pending == 0 and versions[0].in_use == 0
