"""Gradient checkpointing must leave the adapters' gradients intact.

timm releases whose ``checkpoint_seq`` used re-entrant checkpointing (before ``use_reentrant``
defaulted to False) give the parameters inside a checkpointed block **no gradient** when the
block's input does not require one, which is the case for a frozen backbone: training then
silently fits only the head. ``pyproject.toml``'s timm floor excludes them; these tests are
what ``tests/min_versions.sh`` runs at that floor.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

import adaptformer as af
from adaptformer.adapters.trainable import mark_trainable
from adaptformer.training.config import TrainConfig
from adaptformer.training.runner import fit

from ..helpers import randomize_, tiny_vit

X = torch.randn(4, 3, 32, 32)
Y = torch.tensor([0, 1, 2, 3])


def _adapter_grads(checkpointing: bool) -> dict[str, torch.Tensor | None]:
    torch.manual_seed(0)
    model = tiny_vit()
    af.inject(model, af.AdapterConfig(bottleneck=4, dropout=0.0))
    randomize_(model)  # adapters start with up_proj = 0: make every gradient non-trivial
    mark_trainable(model, "adaptformer")
    model.set_grad_checkpointing(checkpointing)
    model.train()
    torch.nn.functional.cross_entropy(model(X), Y).backward()
    return {n: p.grad for n, p in model.named_parameters() if "adaptmlp" in n}


def test_set_grad_checkpointing_keeps_every_adapter_gradient():
    """The library's switch (the timm API on an injected model): same gradients as without."""
    plain, checkpointed = _adapter_grads(False), _adapter_grads(True)
    assert len(plain) == 16  # 4 blocks x down/up weight/bias
    for name, grad in checkpointed.items():
        assert grad is not None, f"{name} got no gradient under gradient checkpointing"
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, plain[name], rtol=1e-5, atol=1e-7)


def test_grad_checkpointing_training_trains_the_adapters(tiny_task):
    """``--grad-checkpointing``: one step moves every block's adapter (``up_proj`` starts at
    zero, so an adapter without gradient stays exactly zero; no warm-up, so the lr is not 0)."""
    cfg = TrainConfig(
        model="vit_tiny_patch16_224", checkpoint=str(tiny_task / "vit.safetensors"),
        dataset="imagefolder", data_root=str(tiny_task / "data"), img_size=32, batch_size=8,
        epochs=1, blr=1.0, workers=0, val_fraction=0.25, augment="none", grad_checkpointing=True,
        warmup_epochs=0.0, max_steps_per_epoch=1, device="cpu", output=str(tiny_task / "run"),
    )  # fmt: skip
    fit(cfg, progress=False)
    weights = load_file(tiny_task / "run" / "adapter_model.safetensors")
    up = {k: v for k, v in weights.items() if "up_proj.weight" in k}
    assert len(up) == 12  # every block of vit_tiny
    frozen = [k for k, v in up.items() if not v.abs().sum() > 0]
    assert not frozen, f"adapters without gradient under --grad-checkpointing: {frozen}"
