"""A registry of 1,000 tasks served with 16 in memory: many concurrent clients (some uploading
slowly, some tasks slow to load) spread over the tasks by a Zipf law, every answer equal to the
task loaded alone, never more than 16 resident, and no deadlock."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

import adaptformer as af
from adaptformer.data import build_eval_transform
from adaptformer.serving import app as app_module
from adaptformer.serving import catalog as catalog_module
from adaptformer.serving.app import create_app
from adaptformer.serving.catalog import Catalog
from adaptformer.serving.config import ServeConfig
from adaptformer.serving.images import decode

from ..benchmarks.conftest import load_script
from .conftest import png, save_task

RESIDENT = 16
CLIENTS = 12
REQUESTS = 15  # per client
IMAGES = [png(i) for i in range(3)]


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory, task_runs: dict[str, Path]) -> af.TaskRegistry:
    """1,000 tasks: 990 light AdaptFormer tasks (adapters in the last two blocks) of 3, 4 or 5
    classes, 7 LoRA tasks, their two templates and a linear probe; written in a few seconds."""
    serve = load_script("serve")
    root = tmp_path_factory.mktemp("many")
    ckpt = Path((task_runs["shapes"] / "config.yaml").read_text().split(":", 1)[1].strip())
    light = af.AdapterConfig(bottleneck=4, layers=[-2, -1])
    reg = af.TaskRegistry(root / "registry")
    reg.add("light", save_task(root / "light", ckpt, light, ["a", "b", "c"], seed=11))
    reg.add("colours", task_runs["colours"])
    reg.add("probe", task_runs["probe"])
    serve.write_tasks(reg, "light", 990, prefix="a", classes=[3, 4, 5], seed=1)
    serve.write_tasks(reg, "colours", 7, prefix="l", seed=2)
    assert len(reg.names()) == 1000
    return reg


def zipf_requests(names: list[str], count: int, seed: int) -> list[list[str]]:
    """``count`` requests over ``names`` by a Zipf law (s = 1.1) in a shuffled rank order;
    every fifth names two tasks."""
    rng = random.Random(seed)
    ranked = names[:]
    rng.shuffle(ranked)
    weights = [1 / (k + 1) ** 1.1 for k in range(len(ranked))]
    out = []
    for i in range(count):
        picked = rng.choices(ranked, weights, k=2 if i % 5 == 4 else 1)
        out.append(list(dict.fromkeys(picked)))
    return out


def reference(reg: af.TaskRegistry, tasks: set[str]) -> dict[tuple[int, str], torch.Tensor]:
    """Probabilities of every (image, task) with the task loaded alone by `load_adapter`."""
    b = reg.backbone
    tf = build_eval_transform(b["img_size"], b["mean"], b["std"], b["interpolation"])
    x = torch.stack([tf(decode(d, "reference")) for d in IMAGES])
    model = reg.build_model(names=[])
    out = {}
    for task in sorted(tasks):
        af.load_adapter(model, reg.path(task), name=task)
        with torch.inference_mode():
            logits = af.forward_tasks(model, x, [task] * len(x)).logits
        af.delete_adapter(model, task)
        for i, row in enumerate(logits):
            out[(i, task)] = row.softmax(0)
    return out


def test_a_thousand_tasks_serve_within_the_budget_without_deadlock(many, monkeypatch):
    reads: list[str] = []
    real_read, real_preprocess = catalog_module.read_task, app_module.preprocess

    def read_task(folder):
        reads.append(folder.name)
        if folder.name.endswith("7"):  # one task in ten is slow to load
            time.sleep(0.2)
        return real_read(folder)

    def preprocess(data, what, *args):
        if "slow" in what:  # a slow client's image: its request stays "preparing" a while
            time.sleep(0.1)
        return real_preprocess(data, what, *args)

    monkeypatch.setattr(catalog_module, "read_task", read_task)
    monkeypatch.setattr(app_module, "preprocess", preprocess)
    start = time.perf_counter()
    config = ServeConfig(max_resident_tasks=RESIDENT, max_batch_size=8, max_wait_ms=5)
    catalog = Catalog.from_registry(many, budget=config.budget)
    listed = time.perf_counter() - start
    assert reads == [] and len(catalog.list()) == 1000  # start-up read no weights
    plans = [zipf_requests(many.names(), REQUESTS, seed) for seed in range(CLIENTS)]
    answers: dict[tuple[int, int], tuple[list[str], int, object]] = {}
    errors: list[BaseException] = []

    with TestClient(create_app(catalog, config), base_url="http://localhost") as client:

        def run(c: int) -> None:
            try:
                for k, tasks in enumerate(plans[c]):
                    image = (c + k) % len(IMAGES)
                    name = f"{'slow' if c < 3 else 'fast'}-{image}.png"
                    r = client.post(
                        "/v1/predict",
                        files={"image": (name, IMAGES[image])},
                        data={"tasks": ",".join(tasks), "top_k": "9"},
                    )
                    answers[(c, k)] = (tasks, image, r)
            except BaseException as e:
                errors.append(e)

        served_at = time.perf_counter()
        threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not any(t.is_alive() for t in threads), "clients still waiting: a deadlock"
        text = client.get("/metrics").text
        served = time.perf_counter() - served_at
    assert not errors, errors[0]
    metrics = {
        k: float(v)
        for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }
    assert metrics["adaptformer_resident_tasks_peak"] <= RESIDENT
    assert metrics["adaptformer_resident_tasks"] <= RESIDENT
    asked = {t for tasks, _, _ in answers.values() for t in tasks}
    assert len(asked) > 3 * RESIDENT  # far more tasks than fit: eviction had to work
    assert metrics["adaptformer_task_evictions_total"] >= len(asked) - RESIDENT
    loads = sum(v for k, v in metrics.items() if k.startswith("adaptformer_task_loads_total"))
    assert loads == len(reads) >= len(asked)  # each read became a load; none failed
    assert metrics['adaptformer_task_loads_total{kind="refill"}'] > 0
    checked_at = time.perf_counter()
    want = reference(many, asked)
    checked = time.perf_counter() - checked_at
    for tasks, image, r in answers.values():
        assert r.status_code == 200, r.text
        got = r.json()["results"][0]["tasks"]
        assert list(got) == tasks
        for task in tasks:
            top = sorted(got[task]["top"], key=lambda p: p["index"])
            probs = torch.tensor([p["prob"] for p in top])
            torch.testing.assert_close(probs, want[(image, task)], rtol=0, atol=1e-5)
            if task[1:].isdigit():  # written by write_tasks: labels name task and class
                assert [p["label"] for p in top] == [f"{task}-class{i}" for i in range(len(top))]
    print(
        f"listed 1,000 tasks in {listed:.2f} s; {len(reads)} loads for {len(asked)} tasks; "
        f"served in {served:.1f} s, reference {checked:.1f} s"
    )
