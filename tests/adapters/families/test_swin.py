"""Swin and Swin V2 through the BlockFamily seam: exact at init, the block written out by hand,
task files, mixed-task batches, export, and per-stage bottlenecks (``bottleneck_ratio``)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import adaptformer as af
from adaptformer.adapters.families import family_of
from adaptformer.adapters.files import loadable_problems, read_adapter_files
from adaptformer.adapters.inject import AdaptedBlock, block_widths, model_blocks
from adaptformer.adapters.layers import LoRALinear

from ...helpers import randomize_

# Two stages (widths 24, 48) of two blocks; the second block of each stage shifts its windows
# where the map is larger than the window (stage 0: 14x14 in 7x7 windows, V2: 16x16 in 8x8).
TINY = {
    "swin": ("swin_tiny_patch4_window7_224", 56, 7),
    "swinv2": ("swinv2_tiny_window8_256", 64, 8),
}
VERSIONS = tuple(TINY)


def tiny_swin(version: str, num_classes: int = 5, **kwargs) -> torch.nn.Module:
    """A tiny random Swin (V2) with drop-path off (timm's Swin default is 0.1) and random
    LayerNorm affines (Swin V2 starts its post-norms at zero, which hides the attention)."""
    name, img, window = TINY[version]
    kwargs.setdefault("drop_path_rate", 0.0)
    model = timm.create_model(
        name, pretrained=False, img_size=img, window_size=window, embed_dim=24, depths=(2, 2),
        num_heads=(1, 2), num_classes=num_classes, **kwargs,
    )  # fmt: skip
    with torch.no_grad():  # Swin V2 starts its post-norms at zero: a trained model's are not
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    return model.eval()


def images(version: str, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, TINY[version][1], TINY[version][1])


def _randomize_task(model: torch.nn.Module, name: str, std: float = 0.05) -> None:
    """Non-zero values in every tensor task ``name`` added (adapters start at zero)."""
    with torch.no_grad():
        for p in af.adapter_parameters(model, name).values():
            p.normal_(0.0, std)


@pytest.mark.parametrize("version", VERSIONS)
def test_blocks_in_depth_order_with_their_stage_widths(version):
    model = tiny_swin(version)
    assert family_of(model).name == version
    assert model_blocks(model) == [b for stage in model.layers for b in stage.blocks]
    assert block_widths(model) == [24, 24, 48, 48]


# (method, config fields): every method whose added weights start at zero (up / B), plus the
# methods that add nothing to the blocks.
ZERO_START = [
    ("adaptformer", {"position": "parallel"}),
    ("adaptformer", {"position": "sequential"}),
    ("adaptformer", {"position": "post"}),
    ("adaptformer", {"position": "houlsby"}),
    ("adaptformer", {"bottleneck_ratio": 0.083}),
    ("lora", {}),
    ("lora", {"bottleneck_ratio": 0.083}),
    ("bitfit", {}),
    ("linear", {}),
    ("full", {}),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("method", "fields"), ZERO_START)
def test_zero_start_leaves_outputs_unchanged(version, method, fields):
    model = tiny_swin(version)
    original = copy.deepcopy(model)
    af.inject(model, af.AdapterConfig(method=method, init="lora", **fields))
    x = images(version)
    for train in (False, True):  # drop-path 0; the adapters' dropout sits before a zero up_proj
        model.train(train)
        original.train(train)
        torch.testing.assert_close(model(x), original(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("version", VERSIONS)
def test_vpt_is_refused_with_one_line(version):
    model = tiny_swin(version)
    with pytest.raises(ValueError) as e:
        af.inject(model, af.AdapterConfig(method="vpt"))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"VPT cannot be used on {version} models: ")
    assert "windows" in message
    assert not any(isinstance(b, AdaptedBlock) for b in model.modules())  # nothing changed


# --- the block written out by hand --------------------------------------------------------------


def _adapter(x: torch.Tensor, mlp: torch.nn.Module) -> torch.Tensor:
    """AdaptFormer's AdaptMLP (eval, no LayerNorm): ``s * up(relu(down(x)))``."""
    h = F.relu(x @ mlp.down_proj.weight.T + mlp.down_proj.bias)
    return mlp.scale * (h @ mlp.up_proj.weight.T + mlp.up_proj.bias)


def _block_by_hand(version: str, block, x, adapter=None, position=None):
    """timm's Swin / Swin V2 block (eval: drop-path is the identity) with the adapter added
    where AdaptFormer's rules put it; ``block`` is a plain block (no adapter class)."""
    n, h, w, c = x.shape
    if version == "swin":  # pre-norm
        x = x + block._attn(block.norm1(x))
        mlp = block.mlp(block.norm2(x.reshape(n, h * w, c))).reshape(n, h, w, c)
    else:  # post-norm: the norms sit on the branch outputs
        x = x + block.norm1(block._attn(x))
        mlp = block.norm2(block.mlp(x.reshape(n, h * w, c))).reshape(n, h, w, c)
    out = x + mlp
    if position == "parallel":  # reads the stream after the attention residual
        out = out + _adapter(x, adapter)
    elif position == "sequential":  # reads the MLP branch
        out = out + _adapter(mlp, adapter)
    return out


def _inputs_of(block, n: int = 2) -> torch.Tensor:
    h, w = block.input_resolution
    return torch.randn(n, h, w, block.dim)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("position", ["parallel", "sequential"])
def test_adapted_block_equals_the_block_written_out(version, position):
    model = tiny_swin(version)
    plain = copy.deepcopy(model)
    af.inject(model, af.AdapterConfig(position=position, bottleneck_ratio=0.083))
    _randomize_task(model, "default")
    for i, (block, bare) in enumerate(zip(model_blocks(model), model_blocks(plain), strict=True)):
        x = _inputs_of(bare)
        adapter = block.adaptmlp["default"]
        assert adapter.down_proj.out_features == {24: 2, 48: 4}[block.dim], i  # round(0.083 w)
        expected = _block_by_hand(version, bare, x, adapter, position)
        assert not torch.allclose(expected, _block_by_hand(version, bare, x)), "adapter adds 0"
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_lora_block_equals_the_block_with_merged_qkv(version):
    """LoRA is ``W + alpha/r * B A`` on the fused qkv: the plain block with that weight merged
    in (through timm's own attention, including Swin V2's separate q/v biases) is the answer."""
    model = tiny_swin(version)
    plain = copy.deepcopy(model)
    af.inject(model, af.AdapterConfig(method="lora", bottleneck=3, lora_alpha=6.0))
    _randomize_task(model, "default")
    for block, bare in zip(model_blocks(model), model_blocks(plain), strict=True):
        lora = block.attn.qkv
        assert isinstance(lora, LoRALinear)
        merged = copy.deepcopy(bare)
        with torch.no_grad():
            delta = lora.lora_B["default"].weight @ lora.lora_A["default"].weight
            merged.attn.qkv.weight += 6.0 / 3 * delta
        x = _inputs_of(bare)
        expected = _block_by_hand(version, merged, x)
        assert not torch.allclose(expected, _block_by_hand(version, bare, x), atol=1e-4)
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


# --- heads, task files, mixed batches, export ---------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_task_heads_sit_in_the_classifier_head_which_still_pools(version):
    model = tiny_swin(version)
    af.inject(model, af.AdapterConfig(), name="a", num_classes=4)
    af.inject(model, af.AdapterConfig(method="lora", bottleneck=2), name="b", num_classes=6)
    x = images(version)
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert feats.shape == (3, 48)  # pooled over the grid
    assert model.head.fc is af.get_head(model, "b") and model(x).shape == (3, 6)
    af.inject(model, af.AdapterConfig(method="linear", head_batchnorm=True), name="c",
              num_classes=2)  # fmt: skip
    assert isinstance(model.head.fc[0], torch.nn.BatchNorm1d) and model(x).shape == (3, 2)
    af.set_adapter(model, "a")
    assert model.get_classifier() is af.get_head(model, "a") and model(x).shape == (3, 4)
    torch.testing.assert_close(model(x), model.head.fc(model.forward_head(
        model.forward_features(x), pre_logits=True)))  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "fields",
    [
        {"bottleneck_ratio": 0.083},
        {"position": "houlsby", "bottleneck": 3},
        {"method": "lora", "bottleneck_ratio": 0.1},
        {"method": "bitfit"},
    ],
)
def test_task_file_loads_under_another_name(version, fields, tmp_path):
    model = tiny_swin(version)
    backbone = copy.deepcopy(model)
    af.inject(model, af.AdapterConfig(**fields), name="a", num_classes=4)
    _randomize_task(model, "a")
    randomize_(af.get_head(model, "a"))
    x = images(version)
    expected = model(x)
    af.save_adapter(model, tmp_path / "a")

    info, tensors = read_adapter_files(tmp_path / "a")
    assert info["backbone"]["family"] == version
    assert info["backbone"]["widths"] == [24, 24, 48, 48]
    assert info["config"]["bottleneck_ratio"] == fields.get("bottleneck_ratio")
    assert loadable_problems(info, tensors) == []  # the stand-in built from the widths agrees

    af.load_adapter(backbone, tmp_path / "a", name="renamed")
    torch.testing.assert_close(backbone(x), expected, atol=1e-6, rtol=0)


def test_bottleneck_ratio_gives_per_stage_widths_and_round_trips(tmp_path):
    model = tiny_swin("swin")
    af.inject(model, af.AdapterConfig(bottleneck_ratio=0.083, method="lora"), name="t")
    af.save_adapter(model, tmp_path / "t")
    _, tensors = read_adapter_files(tmp_path / "t")
    ranks = [tensors[f"blocks.{i}.attn.qkv.lora_A.weight"].shape[0] for i in range(4)]
    assert ranks == [2, 2, 4, 4]  # round(0.083 * 24) = 2, round(0.083 * 48) = 4
    scalings = [b.attn.qkv.lora_scaling["t"] for b in model_blocks(model)]
    assert scalings == [16.0 / 2, 16.0 / 2, 16.0 / 4, 16.0 / 4]  # alpha / r, per block


def test_a_task_file_with_a_rank_the_ratio_does_not_give_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_swin("swin")
    af.inject(model, af.AdapterConfig(bottleneck_ratio=0.083), name="t")
    af.save_adapter(model, tmp_path / "t")
    weights = tmp_path / "t" / "adapter_model.safetensors"
    tensors = load_file(weights)
    for part in ("down_proj.weight", "down_proj.bias", "up_proj.weight"):
        key = f"blocks.3.adaptmlp.{part}"
        t = tensors[key]
        shape = (5, *t.shape[1:]) if part.startswith("down") else (t.shape[0], 5)
        tensors[key] = torch.zeros(shape)
    save_file(tensors, str(weights), {"format": "adaptformer-adapter/1"})
    with pytest.raises(ValueError, match=r"bottleneck_ratio=0.083 .* blocks.3.adaptmlp.down_proj"):
        read_adapter_files(tmp_path / "t")


@pytest.mark.parametrize("version", VERSIONS)
def test_mixed_batches_equal_each_task_alone(version):
    model = tiny_swin(version)
    af.inject(model, af.AdapterConfig(bottleneck_ratio=0.083), name="par", num_classes=3)
    af.inject(model, af.AdapterConfig(method="lora", bottleneck=2), name="lora", num_classes=5)
    af.inject(model, af.AdapterConfig(position="post", bottleneck=3), name="post", num_classes=4)
    af.inject(model, af.AdapterConfig(method="linear"), name="lin", num_classes=2)
    for name in ("par", "lora", "post", "lin"):
        _randomize_task(model, name)
    x = images(version, 6)
    tasks = ["lora", "par", "lora", "lin", "post", "par"]
    out = af.forward_tasks(model, x, tasks)
    for i, task in enumerate(tasks):
        af.set_adapter(model, task)
        alone = model(x[i : i + 1])[0]
        assert out.num_classes[i] == alone.shape[0]
        torch.testing.assert_close(out.logits[i, : alone.shape[0]], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_is_verified_for_one_task_and_for_several(version, fmt, tmp_path):
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    from adaptformer.serving.export import export_model

    model = tiny_swin(version)
    af.inject(model, af.AdapterConfig(bottleneck_ratio=0.083), name="a", num_classes=3)
    af.inject(model, af.AdapterConfig(method="lora", bottleneck=2), name="b", num_classes=5)
    for name in ("a", "b"):
        _randomize_task(model, name)
    suffix = "onnx" if fmt == "onnx" else "pt"
    one = export_model(model, tmp_path / f"one.{suffix}", format=fmt)
    both = export_model(model, tmp_path / f"both.{suffix}", format=fmt, tasks=["a", "b"])
    # export_model runs the file on another batch size and raises above 1e-4
    assert one.tasks == ["b"] and one.max_abs_error < 1e-4
    assert both.tasks == ["a", "b"] and both.max_abs_error < 1e-4
