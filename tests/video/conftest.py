"""Fixtures of the video tests: the shared real clips and a small generated motion data set."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptformer.video.motion import MotionConfig, make_motion_dataset

from ..conftest import SHARED, _need

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
