"""Swin checkpoints: strict loading, relative-position tables at another input size as timm's
own hub loading resizes them, the classifier at ``head.fc``."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import swin_transformer, swin_transformer_v2

import adaptformer as af

TINY = {  # timm name, the input size the checkpoint is saved at, its window, module
    "swin": ("swin_tiny_patch4_window7_224", 56, 7, swin_transformer),
    "swinv2": ("swinv2_tiny_window8_256", 64, 8, swin_transformer_v2),
}
SMALL = dict(embed_dim=24, depths=(2, 2), num_heads=(1, 2))


def _checkpoint(version: str, path, num_classes: int = 5) -> dict[str, torch.Tensor]:
    name, img, window, _ = TINY[version]
    torch.manual_seed(0)
    model = timm.create_model(
        name, img_size=img, window_size=window, num_classes=num_classes, **SMALL
    )
    with torch.no_grad():  # non-trivial tables and post-norms (timm starts some at zero)
        for k, p in model.named_parameters():
            if "relative_position_bias_table" in k or "norm" in k:
                p.normal_(1.0 if k.endswith("norm1.weight") else 0.0, 0.2)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    return sd


@pytest.mark.parametrize("version", ["swin", "swinv2"])
def test_another_size_loads_as_timm_loads_its_own_weights(version, tmp_path):
    """At 24 px the maps (6x6, 3x3) are smaller than the windows, which shrink to them, so Swin's
    13x13 (7x7 window) tables must be resized: the result equals timm's checkpoint_filter_fn."""
    name, _, window, module = TINY[version]
    sd = _checkpoint(version, tmp_path / "ckpt.safetensors")
    ours = af.create_backbone(
        name, checkpoint=tmp_path / "ckpt.safetensors", img_size=24, num_classes=5,
        window_size=window, **SMALL,
    )  # fmt: skip
    assert [b.window_size for s in ours.layers for b in s.blocks][::2] == [(6, 6), (3, 3)]
    theirs = timm.create_model(name, img_size=24, window_size=window, num_classes=5, **SMALL)
    theirs.load_state_dict(module.checkpoint_filter_fn(sd, theirs))
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, msg=k, rtol=0, atol=0)
    if version == "swin":
        table = ours.layers[1].blocks[0].attn.relative_position_bias_table
        assert table.shape == (5 * 5, 2) and sd[
            "layers.1.blocks.0.attn.relative_position_bias_table"].shape == (13 * 13, 2)  # fmt: skip


@pytest.mark.parametrize("version", ["swin", "swinv2"])
def test_a_headless_checkpoint_gets_a_fresh_head_at_head_fc(version, tmp_path):
    name, img, window, _ = TINY[version]
    sd = _checkpoint(version, tmp_path / "ckpt.safetensors", num_classes=0)
    assert not any(k.startswith("head") for k in sd)
    model = af.create_backbone(
        name, checkpoint=tmp_path / "ckpt.safetensors", img_size=img, num_classes=3,
        window_size=window, **SMALL,
    )  # fmt: skip
    assert model.head.fc.out_features == 3
    torch.testing.assert_close(model.layers[1].downsample.reduction.weight,
                               sd["layers.1.downsample.reduction.weight"])  # fmt: skip


def test_derived_buffers_of_older_timm_files_are_dropped_and_missing_keys_refused(tmp_path):
    name, img, window, _ = TINY["swin"]
    sd = _checkpoint("swin", tmp_path / "ckpt.safetensors")
    sd["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)  # saved by timm before 1.0
    sd["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    save_file(sd, str(tmp_path / "old.safetensors"))
    kwargs = dict(img_size=img, num_classes=5, window_size=window, **SMALL)
    af.create_backbone(name, checkpoint=tmp_path / "old.safetensors", **kwargs)

    del sd["layers.1.blocks.1.attn.qkv.weight"]
    save_file(sd, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ValueError, match=r"missing .*layers\.1\.blocks\.1\.attn\.qkv\.weight"):
        af.create_backbone(name, checkpoint=tmp_path / "cut.safetensors", **kwargs)
