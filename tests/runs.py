"""Tiny but complete training setups for end-to-end tests: a synthetic image folder and a
small timm ViT checkpoint, so CLI mechanics are tested fast and without ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

COLORS = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]


def make_image_folder(root: Path, train_per_class: int = 12, test_per_class: int = 4) -> Path:
    """Three classes of 32x32 images: a coloured square at a random place on noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c, color in enumerate(COLORS):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
                y, x = rng.integers(0, 16, 2)
                img[y : y + 16, x : x + 16] = color
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def make_checkpoint(path: Path) -> Path:
    """A random ``vit_tiny_patch16_224`` backbone in timm format (stands in for pretrained)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def train_args(data: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", "vit_tiny_patch16_224", "--checkpoint", str(ckpt),
        "--dataset", "imagefolder", "--data-root", str(data), "--img-size", "32",
        "--batch-size", "8", "--epochs", "3", "--blr", "1.0",
        "--workers", "0", "--val-fraction", "0.25", "--output", str(out),
        # blr 1.0 learns the tiny task in 3 epochs, far past every method's default, and some
        # presets' loss climbs before it falls: these tests are about mechanics, the guard has
        # its own (test_train.py, test_engine.py)
        "--no-divergence-guard", *extra,
    ]  # fmt: skip


def cli_in_process(capsys, *argv: object) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one in-process command (no interpreter start-up). A
    user error (exit 2) must be one ``adaptformer: error:`` line, never a traceback."""
    from adaptformer.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    if code == 2:
        assert out.err.strip().splitlines()[-1].startswith("adaptformer: error:"), out.err
        assert "Traceback" not in out.err
    return code, out.out, out.err


def run_cli(*args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "adaptformer", *args],
        capture_output=True, text=True, timeout=timeout, env=env, **popen,
    )  # fmt: skip
