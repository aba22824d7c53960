"""`adaptformer train --model swin_tiny_patch4_window7_224 --checkpoint FILE`: a Swin from a local
timm-format state dict, strictly loaded, trained on real images; and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from ..runs import make_image_folder, run_cli, train_args

SWIN_T = "swin_tiny_patch4_window7_224"
# Swin-T: (depth, width) per stage, and the AdaptFormer author's bottleneck dim // 12 per stage.
STAGES = [(2, 96), (2, 192), (6, 384), (2, 768)]


@pytest.fixture(scope="module")
def swin_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised Swin-T in timm format, headless (stands in for pretrained)."""
    torch.manual_seed(0)
    model = timm.create_model(SWIN_T, pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("swin") / "swin_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _small_copy(root: Path, dest: Path, train: int, test: int) -> Path:
    """The first ``train``/``test`` images per class of an ImageFolder (links, no copies)."""
    for split, n in (("train", train), ("val", test)):
        for folder in sorted((root / split).iterdir()):
            out = dest / split / folder.name
            out.mkdir(parents=True)
            for f in sorted(folder.iterdir())[:n]:
                (out / f.name).symlink_to(f)
    return dest


@pytest.mark.shared
@pytest.mark.slow
def test_swin_trains_on_real_images_and_its_task_file_evaluates(
    imagenette_root, swin_checkpoint, tmp_path
):
    """32 px: stage 0 is 8x8 (padded to 7x7 windows), the later stages are smaller than a
    window, so their windows shrink and the checkpoint's 13x13 bias tables are resized."""
    data = _small_copy(imagenette_root, tmp_path / "data", train=10, test=5)
    out = tmp_path / "run"
    r = run_cli(
        "train", "--model", SWIN_T, "--checkpoint", str(swin_checkpoint),
        "--dataset", "imagefolder", "--data-root", str(data), "--test-split", "val",
        "--img-size", "32", "--epochs", "3", "--batch-size", "16", "--workers", "0",
        "--bottleneck-ratio", "0.083", "--output", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    adapters = sum(n * (2 * w * (w // 12) + w // 12 + w) for n, w in STAGES)  # down + up
    head = 768 * 10 + 10
    assert summary["trainable_params"] == adapters + head == 371_898
    losses = [json.loads(x)["train_loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0], losses
    task = json.loads((out / "adapter_config.json").read_text())
    assert task["backbone"]["family"] == "swin"
    assert task["config"]["bottleneck_ratio"] == 0.083 and task["config"]["bottleneck"] is None

    r = run_cli("eval", "--run", str(out), "--workers", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "eval.json").read_text())["test_top1"] == summary["test_top1"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "data")


def _refusal(*args: str) -> str:
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_a_size_that_is_not_whole_patches_is_refused_naming_the_nearest(
    tiny_data, swin_checkpoint, tmp_path
):
    """timm 1.0 runs Swin at any whole number of 4-px patches (it pads feature maps to whole
    windows, as the Swin authors' detection code does); anything else is refused."""
    args = train_args(tiny_data, swin_checkpoint, tmp_path / "run")
    args[args.index("vit_tiny_patch16_224")] = SWIN_T
    args[args.index("--img-size") + 1] = "102"
    line = _refusal(*args)
    assert "--img-size 102 is not a multiple of the model's 4-pixel patches" in line
    assert "use 100 or 104" in line


def test_bottleneck_and_bottleneck_ratio_together_are_refused(tiny_data, tmp_path):
    args = train_args(tiny_data, tmp_path / "unused.safetensors", tmp_path / "run")
    line = _refusal(*args, "--bottleneck", "8", "--bottleneck-ratio", "0.1")
    assert "--bottleneck and --bottleneck-ratio both set the adapter width" in line


def test_a_ratio_flag_replaces_the_bottleneck_of_a_config_file():
    """``--config paper_image`` sets ``bottleneck: 64``; a ``--bottleneck-ratio`` flag wins over
    it as any flag wins over the file (and ``--bottleneck`` over a file's ratio)."""
    from adaptformer.cli import build_parser
    from adaptformer.cli.train import config_from_args

    parse = build_parser().parse_args
    cfg = config_from_args(
        parse(["train", "--config", "paper_image", "--bottleneck-ratio", "0.083"])
    )
    assert (cfg.bottleneck, cfg.bottleneck_ratio) == (None, 0.083)
    assert cfg.adapter_config().bottleneck_for(768) == 64
    cfg = config_from_args(parse(["train", "--config", "paper_image", "--bottleneck", "16"]))
    assert (cfg.bottleneck, cfg.bottleneck_ratio) == (16, None)
