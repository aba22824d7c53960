"""EVA and BEiT checkpoints load strictly at another input size: EVA's absolute position
embeddings are resampled without antialiasing (RoPE is computed from the grid), BEiT's
relative-position tables with timm's own ``resize_rel_pos_bias_table``; both agree with the
models' own ``checkpoint_filter_fn`` (EVA's with ``antialias=False``)."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.beit import checkpoint_filter_fn as beit_filter
from timm.models.eva import checkpoint_filter_fn as eva_filter

import adaptformer as af

EVA = dict(depth=2, embed_dim=64, num_heads=4)  # eva02_tiny_patch14_224 shrunk
BEIT = dict(depth=2, embed_dim=64, num_heads=4)  # beit_base_patch16_224 shrunk


def _checkpoint(name: str, kwargs: dict, path) -> dict[str, torch.Tensor]:
    """A random model of timm's default size (224 px), saved in timm format."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)  # tables and biases start at zero: make resampling visible
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    return sd


def test_eva_pos_embed_is_resampled_like_timm_without_antialias(tmp_path):
    sd = _checkpoint("eva02_tiny_patch14_224", EVA, tmp_path / "eva.safetensors")
    model = af.create_backbone(
        "eva02_tiny_patch14_224", checkpoint=tmp_path / "eva.safetensors", img_size=112, **EVA
    )
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 64) and sd["pos_embed"].shape[1] == 1 + 16**2
    expected = eva_filter(sd, model, antialias=False)
    assert set(expected) == set(model.state_dict())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k], atol=0, rtol=0)
    x = torch.randn(1, 3, 112, 112)
    assert torch.isfinite(model(x)).all()


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm's interpolator: torch deprecations
def test_beit_tables_are_resampled_like_timm(tmp_path):
    sd = _checkpoint("beit_base_patch16_224", BEIT, tmp_path / "beit.safetensors")
    model = af.create_backbone(
        "beit_base_patch16_224", checkpoint=tmp_path / "beit.safetensors", img_size=96, **BEIT
    )
    table = model.blocks[1].attn.relative_position_bias_table
    assert table.shape == ((2 * 6 - 1) ** 2 + 3, 4) and sd[
        "blocks.1.attn.relative_position_bias_table"
    ].shape == ((2 * 14 - 1) ** 2 + 3, 4)
    expected = beit_filter(sd, model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k], atol=0, rtol=0)
    # the class-token entries (the last three rows) are carried over, not interpolated
    torch.testing.assert_close(table[-3:], sd["blocks.1.attn.relative_position_bias_table"][-3:])


def test_beit_at_its_own_size_loads_unchanged_and_drops_a_stale_index(tmp_path):
    sd = _checkpoint("beit_base_patch16_224", BEIT, tmp_path / "beit.safetensors")
    sd["blocks.0.attn.relative_position_index"] = torch.zeros(197, 197, dtype=torch.long)
    save_file(sd, str(tmp_path / "old.safetensors"))  # older timm saved the index
    model = af.create_backbone("beit_base_patch16_224", checkpoint=tmp_path / "old.safetensors",
                               **BEIT)  # fmt: skip
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert model.blocks[0].attn.relative_position_index.max() > 0  # its own, from the grid


def test_another_head_count_is_refused_naming_the_table(tmp_path):
    _checkpoint("beit_base_patch16_224", BEIT, tmp_path / "beit.safetensors")
    with pytest.raises(ValueError, match=r"wrong shape.*relative_position_bias_table"):
        af.create_backbone("beit_base_patch16_224", checkpoint=tmp_path / "beit.safetensors",
                           img_size=96, depth=2, embed_dim=64, num_heads=8)  # fmt: skip


@pytest.mark.parametrize(
    "name,kwargs,size,sizes",
    [("eva02_tiny_patch14_224", EVA, 50, "use 42 or 56"),
     ("beit_base_patch16_224", BEIT, 40, "use 32 or 48")],
)  # fmt: skip
def test_a_size_between_patches_is_refused_with_the_nearest(name, kwargs, size, sizes):
    with pytest.raises(ValueError, match=sizes):
        af.create_backbone(name, img_size=size, **kwargs)
