"""``forward_tasks(..., compile=...)``: one compiled graph for every mix of tasks, and for tasks
added or removed, counted with dynamo's own counters (the ``eager`` backend keeps the test fast:
the graph capture and its guards are what decide recompiles, not the backend)."""

from __future__ import annotations

import random

import pytest
import torch

import adaptformer as af

from ..adapters.test_banks import randomize_task
from ..helpers import tiny_vit

dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = tiny_vit(depth=2, layer_scale=True)
    configs = {
        "ada4": af.AdapterConfig(bottleneck=4),
        "ada8": af.AdapterConfig(bottleneck=8, layernorm="in", activation="gelu"),
        "lora": af.AdapterConfig(method="lora", bottleneck=4),
        "houlsby": af.AdapterConfig(method="houlsby", bottleneck=3),
        "lin": af.AdapterConfig(method="linear", head_batchnorm=True),
        "vpt": af.AdapterConfig(method="vpt", prompt_tokens=2),
    }
    for i, (name, cfg) in enumerate(configs.items()):
        af.inject(m, cfg, name=name, num_classes=3 + i)
        randomize_task(m, name)
    return m.eval()


def compiled_graphs() -> tuple[int, int]:
    return counters["frames"]["total"], counters["stats"]["unique_graphs"]


def test_ten_mixes_and_task_changes_reuse_one_graph(model):
    dynamo.reset()
    counters.clear()
    x = torch.randn(6, 3, 32, 32)
    rng = random.Random(0)
    banked = ["ada4", "ada8", "lora", "houlsby", "lin"]
    first = None
    with torch.inference_mode():
        for step in range(10):
            if step == 3:  # a task added: a new slot and a larger bottleneck (the banks grow)
                af.inject(model, af.AdapterConfig(bottleneck=20), name="big", num_classes=11)
                randomize_task(model, "big")
                banked.append("big")
            if step == 6:  # a task removed
                af.delete_adapter(model, "ada4")
                banked.remove("ada4")
            tasks = [rng.choice(banked) for _ in range(6)]
            got = af.forward_tasks(model, x, tasks, compile="eager")
            eager = af.forward_tasks(model, x, tasks)
            torch.testing.assert_close(got.logits, eager.logits, atol=1e-5, rtol=0)
            first = first or compiled_graphs()
    assert compiled_graphs() == first == (1, 1)  # one graph, never recompiled


def test_prompt_tasks_run_eagerly_beside_the_compiled_graph(model):
    """VPT prompts change the token count per task: such batches run eagerly (no new graph)."""
    dynamo.reset()
    counters.clear()
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        af.forward_tasks(model, x, ["ada4", "lora", "lin", "ada8"], compile="eager")
        before = compiled_graphs()
        got = af.forward_tasks(model, x, ["vpt", "lora", "vpt", "ada8"], compile="eager")
        eager = af.forward_tasks(model, x, ["vpt", "lora", "vpt", "ada8"])
    assert compiled_graphs() == before
    torch.testing.assert_close(got.logits, eager.logits, atol=0, rtol=0)


def test_the_module_wrapper_compiles_too(model):
    dynamo.reset()
    counters.clear()
    wrapper = af.MultiTaskModel(model, compile="eager")
    with torch.inference_mode():
        out = wrapper(torch.randn(3, 3, 32, 32), tasks=["lin", "ada4", "houlsby"])
    assert compiled_graphs()[1] == 1 and out.logits.shape == (3, 7)


def test_the_servers_batcher_runs_compiled_passes(model):
    """``serve --compile`` reaches the model thread's passes (``ServeConfig.compile``)."""
    from adaptformer.serving.batcher import Batcher

    dynamo.reset()
    counters.clear()
    x = torch.randn(4, 3, 32, 32)
    tasks = ["lora", "ada8", "lin", "lora"]
    batcher = Batcher(model, torch.device("cpu"), max_batch=4, max_wait=600, compile="eager")
    batcher.start()
    try:
        answers = [f.result(timeout=300) for f in batcher.submit(list(zip(x, tasks, strict=True)))]
    finally:
        batcher.stop()
    with torch.inference_mode():
        offline = af.forward_tasks(model, x, tasks).per_sample()
    for got, want in zip(answers, offline, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert compiled_graphs()[1] == 1
