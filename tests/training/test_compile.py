"""``--compile``: the training and evaluation steps run through ``torch.compile`` and still train
every adapter. The test swaps in dynamo's ``eager`` backend (the graph capture is what can break a
training loop; inductor's code generation takes minutes on a CPU and is measured in
benchmarks/multitask.py instead)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adaptformer.cli import build_parser
from adaptformer.training import runner
from adaptformer.training.config import TrainConfig

pytest.importorskip("torch._dynamo")


def test_compile_flag_trains_through_a_compiled_model(tiny_task, monkeypatch):
    from torch._dynamo.utils import counters

    compiled: list[torch.nn.Module] = []
    real = torch.compile

    def eager_compile(model, **kwargs):
        compiled.append(model)
        return real(model, backend="eager")

    monkeypatch.setattr(runner.torch, "compile", eager_compile)
    counters.clear()
    cfg = TrainConfig(
        model="vit_tiny_patch16_224", checkpoint=str(tiny_task / "vit.safetensors"),
        dataset="imagefolder", data_root=str(tiny_task / "data"), img_size=32, batch_size=8,
        epochs=1, blr=1.0, workers=0, val_fraction=0.25, augment="none", compile=True,
        warmup_epochs=0.0, max_steps_per_epoch=2, device="cpu", output=str(tiny_task / "run"),
    )  # fmt: skip
    summary = runner.fit(cfg, progress=False)
    assert len(compiled) == 1 and counters["frames"]["ok"] >= 1  # dynamo really ran
    weights = load_file(tiny_task / "run" / "adapter_model.safetensors")
    up = [v for k, v in weights.items() if "up_proj.weight" in k]
    assert len(up) == 12 and all(v.abs().sum() > 0 for v in up)  # every adapter trained
    assert summary["test_top1"] is not None


def test_the_flags_parse():
    parser = build_parser()
    train = parser.parse_args(["train", "--dataset", "cifar10", "--compile"])
    assert train.compile is True
    serve = parser.parse_args(["serve", "--compile"])
    assert serve.compile is True
    assert TrainConfig(dataset="cifar10").compile is False
