"""Shared fixtures: seeds, the ../shared real assets (skipped with a reason when absent)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptformer.data.video.motion import MotionConfig, make_motion_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADAPTFORMER_SHARED", REPO.parent / "shared")).resolve()
BACKBONE = SHARED / "assets" / "vit_small_patch14_dinov2.imgfocus.safetensors"


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same seeds, so failures reproduce."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"needs the shared real assets at {path} (set ADAPTFORMER_SHARED to the folder "
            "that holds assets/ and data/; CI provides it)"
        )
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def shared_backbone() -> Path:
    """The real pretrained ViT-S/14 (DINOv2 architecture) in timm format, float16."""
    return _need(BACKBONE)


@pytest.fixture(scope="session")
def imagenette_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared Imagenette subset, unpacked once per test session into a temp dir."""
    import tarfile

    tar = _need(SHARED / "data" / "imagenette.tar")
    dest = tmp_path_factory.mktemp("data")
    with tarfile.open(tar) as tf:
        tf.extractall(dest, filter="data")
    return dest / "imagenette"


# --- video: the shared real clips and a small generated motion data set

# Frame counts of the shared clips, measured by decoding every frame (../shared/data/videos).
CLIP_FRAMES = {"demo.mp4": 280, "test.avi": 164, "test.mp4": 300}


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    """The three real clips copied from MMAction2."""
    return _need(SHARED / "data" / "videos")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED / "data" / "FashionMNIST")


MOTION = MotionConfig(num_train=400, num_val=40, num_test=200, seed=3)


@pytest.fixture(scope="session")
def motion_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A small motion-direction data set (mp4), generated once per session."""
    out = tmp_path_factory.mktemp("motion")
    make_motion_dataset(out, MOTION, shared_data.parent)
    return out
