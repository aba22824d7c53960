"""Mixed-task batches equal running every task on its own, whatever the order or mix."""

from __future__ import annotations

import random

import pytest
import torch

import adaptformer as af
from adaptformer.serving.export import TaskIndexedModel
from adaptformer.serving.multitask import forward_all_tasks

from ..helpers import randomize_, tiny_vit

# name -> (config, classes): every injecting method, every adapter position (the adapter
# family's presets), partial layers, deep and shallow VPT with different token counts, a
# head-only task, a BatchNorm head.
TASKS = {
    "ada": (af.AdapterConfig(bottleneck=8), 5),
    "aplus": (af.AdapterConfig(method="adapter_plus", bottleneck=4), 3),
    "houlsby": (af.AdapterConfig(method="houlsby", bottleneck=4, layers=[0, 2]), 4),
    "pfeiffer": (af.AdapterConfig(method="pfeiffer", bottleneck=6), 5),
    "ada_seq": (af.AdapterConfig(bottleneck=4, position="sequential", layers=[1, 3]), 3),
    "lora": (af.AdapterConfig(method="lora", bottleneck=4), 6),
    "lin": (af.AdapterConfig(method="linear", head_batchnorm=True), 4),
    "vpt": (af.AdapterConfig(method="vpt", prompt_tokens=3), 2),
    "vpt_sh": (af.AdapterConfig(method="vpt", prompt_tokens=2, prompt_mode="shallow"), 7),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tiny_vit(layer_scale=True)
    for name, (cfg, classes) in TASKS.items():
        af.inject(m, cfg, name=name, num_classes=classes)
    for name in TASKS:  # adapters, prompts and LoRA start at zero update: make them matter
        randomize_adapter(m, name)
        randomize_(af.get_head(m, name), std=0.5)
    m.task_heads["lin"][0].running_mean.normal_()  # BatchNorm head in eval: running stats
    m.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), af.disable_adapters(m):
        bare = m.forward_features(x)
    for name, (cfg, _) in TASKS.items():  # every adapter really changes the features
        af.set_adapter(m, name)
        with torch.no_grad():
            moved = (m.forward_features(x) - bare).abs().max()
        assert (moved > 1e-2) == (cfg.method != "linear"), name
    return m


def randomize_adapter(model, name, std=0.2):
    with torch.no_grad():
        for p in af.adapter_parameters(model, name).values():
            p.normal_(0.0, std)


def separate(model, x, tasks):
    """The reference: every image through its own task with the plain single-task forward."""
    out = []
    for i, t in enumerate(tasks):
        af.set_adapter(model, t)
        out.append(model(x[i : i + 1])[0])
    return out


def assert_matches(got, expected, tasks):
    assert got.tasks == list(tasks)
    for i, (row, ref) in enumerate(zip(got.per_sample(), expected, strict=True)):
        assert row.shape == ref.shape, (i, tasks[i])
        torch.testing.assert_close(row, ref, atol=1e-5, rtol=0)
    width = got.logits.shape[1]
    for i, c in enumerate(got.num_classes):
        assert torch.isinf(got.logits[i, c:]).all() and (got.logits[i, c:] < 0).all()
        assert c == TASKS[tasks[i]][1] and width == max(got.num_classes)


def test_mixed_batch_equals_separate_runs_in_any_order(model):
    x = torch.randn(len(TASKS) + 6, 3, 32, 32)
    rng = random.Random(0)
    names = list(TASKS)
    with torch.no_grad():
        for _ in range(3):  # shuffled, every task present, some repeated
            tasks = names + [rng.choice(names) for _ in range(6)]
            rng.shuffle(tasks)
            assert_matches(af.forward_tasks(model, x, tasks), separate(model, x, tasks), tasks)


@pytest.mark.parametrize(
    "tasks",
    [
        ["ada"] * 4,  # one task only
        ["lin", "ada", "lin", "ada"],  # two tasks missing most others
        ["vpt", "ada", "vpt_sh", "vpt"],  # prompts of 3, 0 and 2 tokens in one batch
        ["vpt"] * 3,  # prompts without padding
        ["lora", "ada_seq", "lora", "lin"],
        ["houlsby", "aplus", "pfeiffer", "ada", "houlsby"],  # every adapter position at once
    ],
)
def test_repeated_and_missing_tasks(model, tasks):
    x = torch.randn(len(tasks), 3, 32, 32)
    with torch.no_grad():
        assert_matches(af.forward_tasks(model, x, tasks), separate(model, x, tasks), tasks)


def test_does_not_change_the_active_task(model):
    af.set_adapter(model, "lora")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        af.forward_tasks(model, x, ["ada", "vpt"])
        torch.testing.assert_close(model(x), before, atol=0, rtol=0)
    assert model.adaptformer.active == "lora"


def test_module_wrapper_and_task_rows(model):
    x = torch.randn(4, 3, 32, 32)
    tasks = ["ada", "lora", "ada", "lin"]
    with torch.no_grad():
        out = af.MultiTaskModel(model)(x, tasks=tasks)
    rows, logits = out.task_rows("ada")
    assert rows.tolist() == [0, 2] and logits.shape == (2, 5)
    assert out.features.shape == (4, 48)
    with pytest.raises(KeyError, match="no row"):
        out.task_rows("vpt")


def test_every_task_for_every_image(model):
    x = torch.randn(3, 3, 32, 32)
    names = ["lin", "ada", "vpt_sh", "lora"]
    with torch.no_grad():
        answers = forward_all_tasks(model, x, names)
        for t in names:
            expected = torch.stack(separate(model, x, [t] * 3))
            torch.testing.assert_close(answers[t], expected, atol=1e-5, rtol=0)
    assert list(answers) == names


def test_masked_routing_for_export_equals_grouped(model):
    """The traceable layout (every adapter on every row, torch.where) gives the same logits."""
    x = torch.randn(6, 3, 32, 32)
    names = list(TASKS)
    index = torch.tensor([4, 0, 5, 2, 4, 3])
    with torch.no_grad():
        padded = TaskIndexedModel(model, names)(x, index)
        ref = af.forward_tasks(model, x, [names[i] for i in index])
    finite = torch.isfinite(ref.logits)
    assert torch.equal(finite, torch.isfinite(padded[:, : ref.logits.shape[1]]))
    torch.testing.assert_close(
        padded[:, : ref.logits.shape[1]][finite], ref.logits[finite], atol=1e-5, rtol=0
    )


def test_mixed_batch_trains_each_task_on_its_rows():
    """Gradients reach exactly the adapters of the tasks present in the batch."""
    m = tiny_vit()
    for name in ("a", "b", "c"):
        af.inject(m, af.AdapterConfig(bottleneck=4, dropout=0.0), name=name, num_classes=3)
        randomize_adapter(m, name)
    m.train()
    out = af.forward_tasks(m, torch.randn(4, 3, 32, 32), ["b", "a", "b", "a"])
    out.logits[torch.isfinite(out.logits)].sum().backward()
    for name, expect in (("a", True), ("b", True), ("c", False)):
        grads = [p.grad for p in af.adapter_parameters(m, name).values()]
        assert all((g is not None and g.abs().sum() > 0) == expect for g in grads), name


def test_clear_errors(model):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown task"):
        af.forward_tasks(model, x, ["ada", "nope"])
    with pytest.raises(ValueError, match="3 task names for a batch of 2"):
        af.forward_tasks(model, x, ["ada"] * 3)
    full = tiny_vit()
    af.inject(full, af.AdapterConfig(method="full"), name="f", num_classes=2)
    af.inject(full, af.AdapterConfig(bottleneck=4), name="g", num_classes=2)
    with pytest.raises(ValueError, match="shared backbone"):
        af.forward_tasks(full, x, ["f", "g"])
