"""``adaptformer models`` and ``adaptformer convert-onnx-dinov2``."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptformer.backbones import MODELS
from adaptformer.backbones.wheels import sha256_file
from adaptformer.cli import main
from tests.backbones import fixtures


def test_models_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADAPTFORMER_CACHE", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "SOURCE", "LICENCE", "SIZE", "CACHED"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert set(rows) == set(MODELS)
    assert rows["vit_small_patch14_dinov2.imgfocus"][1:] == ["wheel", "MIT", "44", "MB", "no"]
    assert rows["mae_pretrain_vit_base"][1] == "user-file"

    entry = MODELS["vit_small_patch14_dinov2.imgfocus"]
    entry.cache_path.parent.mkdir(parents=True)
    entry.cache_path.write_bytes(b"")
    assert main(["models", "--long"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[-1] == "yes"
    assert str(entry.cache_path) in out and "dl.fbaipublicfiles.com" in out


@pytest.mark.slow
@pytest.mark.shared
def test_convert_onnx_dinov2_cli(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    imagenette_root: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("onnxruntime", reason="--verify-images needs onnxruntime")
    onnx_path = fixtures.imgfocus_onnx(tmp_path_factory)
    images = tmp_path / "images"
    images.mkdir()
    for src in fixtures.first_val_images(imagenette_root, 2):
        (images / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "imgfocus.safetensors"
    argv = ["convert-onnx-dinov2", str(onnx_path), str(out), "--verify-images", str(images)]
    assert main(argv) == 0
    assert sha256_file(out) == MODELS["vit_small_patch14_dinov2.imgfocus"].sha256
    assert "parity on 2 images" in capsys.readouterr().out
    assert main([*argv[:3], "--verify-images", str(tmp_path / "nowhere")]) == 2
    assert "nowhere is not a directory" in capsys.readouterr().err
