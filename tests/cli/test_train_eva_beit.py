"""`adaptformer train --model ... --checkpoint FILE` on EVA and BEiT backbones, on real images.

The checkpoints are random (no EVA or BEiT weights are reachable offline): these tests are
about mechanics, not accuracy. Each saves a timm-format state dict at the model's default
224 px, and the CLI loads it strictly at a smaller ``--img-size`` (EVA's position embeddings
and BEiT's relative-position tables resampled), trains on four classes of the shared Imagenette,
and the loss must fall with exactly the parameters the method trains.

timm's smallest BEiT is BEiT-B (86 M parameters, too slow for a one-minute CPU test), so the
BEiT test registers ``beit_tiny_patch16_224``, BEiT-B's layout (a relative-position table in
every block, layer scale 0.1, q/v bias) at width 64 and depth 4, built by timm's own
``_create_beit``, in the process that runs the CLI (``beit_base_patch16_224`` itself goes through
the same code: only its size differs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.beit import _create_beit

from ..runs import run_cli

REPO = Path(__file__).resolve().parents[2]
TINY_BEIT = dict(patch_size=16, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4,
                 use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1)  # fmt: skip


def beit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """BEiT-B/16's layout at width 64 and depth 4 (timm's entry-point signature)."""
    return _create_beit("beit_tiny_patch16_224", pretrained=pretrained, **{**TINY_BEIT, **kwargs})


# Registers the tiny BEiT in the CLI's process only, then runs the CLI as ``python -m
# adaptformer`` does (this test process never registers it: timm's model list stays as it is).
TINY_BEIT_CLI = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from timm.models import register_model
from tests.cli.test_train_eva_beit import beit_tiny_patch16_224
register_model(beit_tiny_patch16_224)
from adaptformer.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def four_classes(imagenette_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four classes of the shared Imagenette: 24 train and 8 test images each (copies)."""
    out = tmp_path_factory.mktemp("imagenette4")
    classes = sorted(p.name for p in (imagenette_root / "train").iterdir())[:4]
    for split, source, n in (("train", "train", 24), ("test", "val", 8)):
        for c in classes:
            (out / split / c).mkdir(parents=True)
            for f in sorted((imagenette_root / source / c).iterdir())[:n]:
                shutil.copy(f, out / split / c / f.name)
    return out


def _random_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _args(model: str, ckpt: Path, data: Path, out: Path, img: int, *extra: str) -> list[str]:
    return ["train", "--model", model, "--checkpoint", str(ckpt), "--dataset", "imagefolder",
            "--data-root", str(data), "--img-size", str(img), "--epochs", "4",
            "--batch-size", "16", "--blr", "0.1", "--val-fraction", "0.25", "--workers", "0",
            "--seed", "0",
            "--output", str(out), *extra]  # fmt: skip


def _losses_fall_and_count(out: Path, expected_trainable: int) -> dict:
    losses = [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").open()]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1, losses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] == expected_trainable
    info = json.loads((out / "adapter_config.json").read_text())
    return info


@pytest.mark.shared
@pytest.mark.slow
def test_eva02_trains_from_a_local_checkpoint(four_classes, tmp_path):
    torch.manual_seed(0)
    ckpt = _random_checkpoint(
        timm.create_model("eva02_tiny_patch14_224", num_classes=0), tmp_path / "eva.safetensors"
    )
    out = tmp_path / "run"
    r = run_cli(*_args("eva02_tiny_patch14_224", ckpt, four_classes, out, 56,
                       "--method", "adaptformer", "--bottleneck", "16"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resampled pos_embed (1, 257, 192) -> (1, 17, 192)" in r.stderr
    # 12 blocks of width 192: down (192*16 + 16) and up (16*192 + 192); head 192*4 + 4
    info = _losses_fall_and_count(out, 12 * (2 * 192 * 16 + 16 + 192) + 192 * 4 + 4)
    assert info["backbone"]["family"] == "eva"


def test_a_size_eva_cannot_take_is_refused_with_the_nearest(tmp_path):
    ckpt = _random_checkpoint(
        timm.create_model("eva02_tiny_patch14_224", num_classes=0), tmp_path / "eva.safetensors"
    )
    r = run_cli(*_args("eva02_tiny_patch14_224", ckpt, tmp_path, tmp_path / "run", 50))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "adaptformer: error: --img-size 50 is not a multiple of the model's 14-pixel patches "
        "(it would run at 42 px): use 42 or 56"
    )


@pytest.mark.shared
@pytest.mark.slow
def test_beit_trains_lora_from_a_local_checkpoint(four_classes, tmp_path):
    torch.manual_seed(0)
    ckpt = _random_checkpoint(beit_tiny_patch16_224(num_classes=0), tmp_path / "beit.safetensors")

    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-c", TINY_BEIT_CLI, *args], capture_output=True,
                              text=True, timeout=300, env=env)  # fmt: skip

    out = tmp_path / "run"
    r = cli(*_args("beit_tiny_patch16_224", ckpt, four_classes, out, 64,
                   "--method", "lora", "--bottleneck", "8"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resampled 4 relative-position tables (732, 4) -> (52, 4)" in r.stderr
    # 4 blocks of width 64: A (8 x 64) and B (3*64 x 8); head 64*4 + 4
    info = _losses_fall_and_count(out, 4 * (8 * 64 + 3 * 64 * 8) + 64 * 4 + 4)
    assert info["backbone"]["family"] == "beit"
