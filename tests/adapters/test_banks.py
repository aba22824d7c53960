"""Banks: every task's adapters stacked and gathered per row give each row exactly its own
task's output (any mix, any order, 64 tasks of different sizes and knobs), and they are kept
current one task at a time."""

from __future__ import annotations

import itertools
import random
import threading

import pytest
import torch
from torch import nn

import adaptformer as af
from adaptformer.adapters.banks import task_banks
from adaptformer.adapters.context import current_routing
from adaptformer.adapters.families import register_family, unregister_family
from adaptformer.adapters.families.base import BlockFamily
from adaptformer.serving.export import TaskIndexedModel

from ..helpers import randomize_, tiny_vit

KNOBS = list(
    itertools.product(
        ("relu", "gelu", "silu"), ("none", "in", "out"), (0.1, "learnable", "channel")
    )
)


def sixty_four_tasks() -> dict[str, tuple[af.AdapterConfig, int]]:
    """64 tasks: every activation x layernorm x scale of the AdaptMLP at bottlenecks 1..27 and
    every position, LoRA of ranks 1..16 on some layers, presets, linear probes with and without
    a BatchNorm head, head-less tasks; class counts 1..11."""
    tasks: dict[str, tuple[af.AdapterConfig, int]] = {}
    positions = ("parallel", "sequential", "post", "houlsby")
    for i, (act, ln, scale) in enumerate(KNOBS):
        cfg = af.AdapterConfig(
            bottleneck=i + 1, activation=act, layernorm=ln, scale=scale,
            position=positions[i % 4], layers=[[0, 1], [1], [0]][i % 3],
        )  # fmt: skip
        tasks[f"mlp{i}"] = (cfg, 1 + i % 11)
    for r in range(1, 17):
        tasks[f"lora{r}"] = (
            af.AdapterConfig(method="lora", bottleneck=r, layers=[[0, 1], [1]][r % 2]),
            2 + r % 5,
        )
    for m in ("adapter_plus", "houlsby", "pfeiffer"):
        for r in (3, 5):
            tasks[f"{m}{r}"] = (af.AdapterConfig(method=m, bottleneck=r), 3 + r)
    for i in range(6):
        tasks[f"lin{i}"] = (af.AdapterConfig(method="linear", head_batchnorm=i % 2 == 1), 2 + i)
    for i in range(64 - len(tasks)):
        tasks[f"ada{i}"] = (af.AdapterConfig(bottleneck=8 * (i + 1)), 0 if i == 0 else 4)
    assert len(tasks) == 64
    return tasks


def randomize_task(model: nn.Module, name: str) -> None:
    with torch.no_grad():
        for p in af.adapter_parameters(model, name).values():
            p.normal_(0.0, 0.2)
    head = af.get_head(model, name)
    randomize_(head, std=0.5)
    for m in head.modules():
        if isinstance(m, nn.BatchNorm1d):  # eval-mode statistics to fold
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)


@pytest.fixture(scope="module")
def many():
    torch.manual_seed(0)
    model = tiny_vit(depth=2, layer_scale=True)
    for name, (cfg, classes) in sixty_four_tasks().items():
        af.inject(model, cfg, name=name, num_classes=classes)
        randomize_task(model, name)
    return model.eval()


def separate(model, x, tasks):
    """The reference: every image through its own task with the plain single-task forward."""
    out = []
    with torch.no_grad():
        for i, t in enumerate(tasks):
            af.set_adapter(model, t)
            out.append(model(x[i : i + 1])[0])
    return out


def assert_rows(got: af.MultiTaskOutput, expected: list[torch.Tensor]) -> None:
    for i, (row, ref) in enumerate(zip(got.per_sample(), expected, strict=True)):
        assert row.shape == ref.shape, (i, got.tasks[i])
        torch.testing.assert_close(row, ref, atol=1e-5, rtol=0, msg=got.tasks[i])
        assert torch.isneginf(got.logits[i, row.shape[0] :]).all()


def test_sixty_four_tasks_of_different_sizes_in_one_batch_in_any_order(many):
    names = list(sixty_four_tasks())
    x = torch.randn(64, 3, 32, 32)
    for seed in range(2):
        tasks = names[:]
        random.Random(seed).shuffle(tasks)
        with torch.no_grad():
            got = af.forward_tasks(many, x, tasks)
        assert_rows(got, separate(many, x, tasks))
    banks = task_banks(many)
    assert all(banks.builds[t] == 1 for t in names)  # built once, reused by the second batch


def test_repeated_tasks_and_rows_of_one_task(many):
    x = torch.randn(6, 3, 32, 32)
    for tasks in (["mlp5"] * 6, ["lora3", "lin1", "lora3", "mlp20", "lin1", "lora3"]):
        with torch.no_grad():
            assert_rows(af.forward_tasks(many, x, tasks), separate(many, x, tasks))


def test_the_export_graph_computes_the_same_as_separate_runs(many):
    """TaskIndexedModel (what ONNX/TorchScript trace) on banks of a subset of the tasks."""
    names = ["mlp0", "mlp13", "mlp26", "lora16", "lin1", "houlsby5", "ada0"]
    module = TaskIndexedModel(many, names)
    assert set(module.banks.slots) == set(names)  # the other 57 tasks are not in the graph
    index = torch.tensor([6, 3, 0, 1, 5, 2, 4, 4, -1, 7])
    x = torch.randn(10, 3, 32, 32)
    with torch.no_grad():
        out = module(x, index)
    ref = separate(many, x[:8], [names[i] for i in index[:8]])
    for row, expected in zip(out, ref, strict=False):
        torch.testing.assert_close(row[: expected.shape[0]], expected, atol=1e-5, rtol=0)
    assert torch.isneginf(out[8:]).all()  # an index outside the exported list: all -inf


def _model_with(tasks: dict[str, int]) -> nn.Module:
    torch.manual_seed(1)
    model = tiny_vit(depth=2)
    for name, r in tasks.items():
        method = "lora" if name.startswith("l") else "adaptformer"
        af.inject(model, af.AdapterConfig(method=method, bottleneck=r), name=name, num_classes=3)
        randomize_task(model, name)
    return model.eval()


def test_banks_change_one_task_at_a_time():
    model = _model_with({"a": 4, "b": 8, "la": 2})
    x = torch.randn(4, 3, 32, 32)

    def run(tasks):
        with torch.no_grad():
            got = af.forward_tasks(model, x, tasks)
        assert_rows(got, separate(model, x, tasks))
        return task_banks(model).builds

    builds = run(["a", "b", "la", "a"])
    assert builds == {"a": 1, "b": 1, "la": 1}
    af.inject(model, af.AdapterConfig(bottleneck=16), name="c", num_classes=5)  # add one
    randomize_task(model, "c")
    assert run(["c", "a", "b", "la"]) == {"a": 1, "b": 1, "la": 1, "c": 1}
    for name, r in (("d", 3), ("e", 32), ("lb", 5)):  # beyond 4 slots and 8/16 ranks: grow
        af.inject(model, af.AdapterConfig(method="lora" if name == "lb" else "adaptformer",
                                          bottleneck=r), name=name, num_classes=2)  # fmt: skip
        randomize_task(model, name)
    assert run(["e", "d", "lb", "a"]) == {"a": 1, "b": 1, "la": 1, "c": 1, "d": 1, "e": 1, "lb": 1}
    with torch.no_grad():  # an in-place change (a training step, load_adapter) to one task
        af.adapter_parameters(model, "b")["blocks.0.adaptmlp.b.up_proj.weight"].mul_(2.0)
    assert run(["b", "a", "b", "c"])["b"] == 2 and task_banks(model).builds["a"] == 1
    slot = task_banks(model).slots["d"]
    af.delete_adapter(model, "d")  # removed: its slot is zeroed and taken by the next task
    af.inject(model, af.AdapterConfig(bottleneck=2), name="f", num_classes=4)
    randomize_task(model, "f")
    assert run(["f", "e", "a", "f"])["f"] == 1 and task_banks(model).slots["f"] == slot
    assert "d" not in task_banks(model).slots
    af.delete_adapter(model, "a")  # the same name again, other weights: rebuilt, not reused
    af.inject(model, af.AdapterConfig(bottleneck=4), name="a", num_classes=3)
    randomize_task(model, "a")
    assert run(["a", "b", "la", "lb"])["a"] == 2
    assert task_banks(model).builds["la"] == 1


def test_a_task_file_loaded_over_an_existing_task_is_noticed(tmp_path):
    model = _model_with({"a": 4, "b": 4})
    other = _model_with({"a": 4})
    randomize_task(other, "a")
    af.save_adapter(other, tmp_path / "a", "a")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = af.forward_tasks(model, x, ["a", "b"]).logits
        af.load_adapter(model, tmp_path / "a", name="a")  # same config: tensors copied in place
        after = af.forward_tasks(model, x, ["a", "b"])
    assert_rows(after, separate(model, x, ["a", "b"]))
    assert not torch.allclose(before[0], after.logits[0])
    assert task_banks(model).builds == {"a": 2, "b": 1}


def test_the_routing_is_invisible_to_other_threads_and_models():
    """The routing is a context variable: another thread, or another model called inside the
    pass, runs its usual single-task forward."""
    model, other = _model_with({"a": 4, "b": 4}), _model_with({"a": 4, "b": 4})
    af.set_adapter(other, "b")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = other(x)
    seen: dict[str, object] = {}

    def probe(module, args):
        t = threading.Thread(target=lambda: seen.setdefault("thread", current_routing()))
        t.start()
        t.join()
        seen["here"] = current_routing()
        with torch.no_grad():
            seen["other"] = other(x)

    handle = model.blocks[1].register_forward_pre_hook(probe)
    try:
        with torch.no_grad():
            got = af.forward_tasks(model, x, ["a", "b"])
    finally:
        handle.remove()
    assert seen["thread"] is None and seen["here"] is not None
    torch.testing.assert_close(seen["other"], expected, atol=0, rtol=0)
    assert_rows(got, separate(model, x, ["a", "b"]))
    assert current_routing() is None


def test_eval_passes_that_need_gradients_use_each_tasks_own_modules():
    """Banks are copies: a pass with gradients on (eval mode) must still train the task."""
    model = _model_with({"a": 4, "b": 4})
    out = af.forward_tasks(model, torch.randn(2, 3, 32, 32), ["a", "b"])
    out.logits[torch.isfinite(out.logits)].sum().backward()
    grads = [p.grad for p in af.adapter_parameters(model, "a").values()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


# -- LoRA shared across separate q, k, v Linears (Hugging Face's layout) ----------------------
class QKVBlock(nn.Module):
    """A pre-norm block whose attention has separate q, k and v Linears."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attend(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class QKVNet(nn.Module):
    def __init__(self, dim: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(48, dim)
        self.blocks = nn.Sequential(QKVBlock(dim), QKVBlock(dim))
        self.head = nn.Linear(dim, classes)
        self.num_features = dim
        self.num_prefix_tokens = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        patches = nn.functional.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, 16, 48)
        return self.blocks(self.embed(patches))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.fixture
def qkv_family():
    family = register_family(
        BlockFamily(
            name="test-qkv",
            block_types=(QKVBlock,),
            blocks=lambda m: m.blocks if isinstance(m, QKVNet) else None,
            attn_branch=lambda block, x: block.attend(block.norm1(x)),
            mlp_branch=lambda block, x: block.mlp(block.norm2(x)),
            width=lambda block: block.norm1.weight.shape[0],
            lora_targets=lambda block: ("q", "k", "v"),
        )
    )
    yield family
    unregister_family("test-qkv")


def test_lora_shared_across_separate_q_k_v_linears(qkv_family):
    torch.manual_seed(0)
    model = QKVNet()
    for r, name in enumerate(("x", "y", "z"), start=2):
        af.inject(model, af.AdapterConfig(method="lora", bottleneck=r), name=name, num_classes=r)
        randomize_task(model, name)
    af.inject(model, af.AdapterConfig(bottleneck=3), name="w", num_classes=4)
    randomize_task(model, "w")
    model.eval()
    tasks = ["z", "x", "w", "y", "x", "z"]
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        got = af.forward_tasks(model, x, tasks)
        index = torch.tensor([["x", "y", "z", "w"].index(t) for t in tasks])
        exported = TaskIndexedModel(model, ["x", "y", "z", "w"])(x, index)
    expected = separate(model, x, tasks)
    assert_rows(got, expected)
    for row, ref in zip(exported, expected, strict=True):
        torch.testing.assert_close(row[: ref.shape[0]], ref, atol=1e-5, rtol=0)


def test_training_one_lora_task_leaves_the_others_slots_alone():
    """A task's slot depends on its own tensors only (LoRA tasks share the wrapped layer)."""
    model = _model_with({"la": 2, "lb": 4})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        af.forward_tasks(model, x, ["la", "lb"])
        af.adapter_parameters(model, "la")["blocks.0.attn.qkv.lora_B.la.weight"].add_(1.0)
        assert_rows(af.forward_tasks(model, x, ["la", "lb"]), separate(model, x, ["la", "lb"]))
    assert task_banks(model).builds == {"la": 2, "lb": 1}
