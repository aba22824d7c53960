"""The motion benchmark: exact label-free frame sets, and baselines that prove it needs time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adaptformer.cli import main
from adaptformer.data.video.datasets import read_video_list
from adaptformer.data.video.io import read_frames
from adaptformer.data.video.motion import (
    HEADINGS,
    MotionConfig,
    loop_points,
    path_order,
    sample_clip,
)

from ...conftest import MOTION


@pytest.mark.parametrize("directions, frames", [(4, 8), (4, 12), (8, 8), (8, 16)])
def test_every_label_shows_the_same_set_of_frames(directions: int, frames: int) -> None:
    cfg = MotionConfig(num_frames=frames, directions=directions)
    obj = np.random.default_rng(0).integers(1, 256, (28, 28, 3), dtype=np.uint8)
    points = loop_points(frames, directions, 10.0)
    reference = None
    for heading in range(directions):
        for clockwise in (True, False):
            order = path_order(frames, directions, heading, clockwise)
            step = points[order[1]] - points[order[0]]
            angle = 2 * np.pi * heading / directions  # the label is the heading of the first move
            np.testing.assert_allclose(
                step / np.linalg.norm(step), [np.cos(angle), np.sin(angle)], atol=1e-9
            )
            # same polygon (same seed): only the order of the frames may differ
            clip = sample_clip(obj, cfg, heading, clockwise, np.random.default_rng(1))
            frame_set = sorted(f.tobytes() for f in clip)
            reference = reference or frame_set
            assert frame_set == reference


def tubelet_pairs(order: np.ndarray, tubelet: int = 2) -> frozenset:
    """What a model blind to time sees once tubelets average frames: the set of frame groups."""
    groups = (order[i : i + tubelet].tolist() for i in range(0, len(order), tubelet))
    return frozenset(frozenset(g) for g in groups)


def test_what_tubelets_of_two_leave_an_order_blind_model() -> None:
    """Averaging frames in pairs (the benchmark's tubelet 2) keeps which frames share a tubelet.
    With 4 directions and 8 frames that shows only the turn (clockwise or not), which is
    independent of the label: chance, 25%. With 8 directions and 8 frames it shows the heading's
    parity: an order-blind model can reach 25% (one of 4), twice chance (12.5%); docs/video.md
    reads the default full fine-tuning's 8-direction row with this ceiling."""
    for heading in range(4):
        assert {tubelet_pairs(path_order(8, 4, heading, cw)) for cw in (True, False)} == {
            tubelet_pairs(path_order(8, 4, 0, cw)) for cw in (True, False)
        }
    by_heading = {h: {tubelet_pairs(path_order(8, 8, h, cw)) for cw in (True, False)}
                  for h in range(8)}  # fmt: skip
    assert all(len(sets) == 1 for sets in by_heading.values())  # the turn does not show
    assert by_heading[0] == by_heading[2] == by_heading[4] == by_heading[6]
    assert by_heading[1] == by_heading[3] == by_heading[5] == by_heading[7] != by_heading[0]


def centroids(clips: np.ndarray) -> np.ndarray:
    """``[N, T, 2]`` intensity-weighted (x, y) centre of each frame."""
    g = clips.astype(np.float64).mean(-1)
    ys, xs = np.mgrid[: g.shape[2], : g.shape[3]]
    mass = g.sum((2, 3))
    return np.stack([(g * xs).sum((2, 3)) / mass, (g * ys).sum((2, 3)) / mass], -1)


def nearest_centroid(train_x, train_y, test_x, test_y, classes: int) -> float:
    means = np.stack([train_x[train_y == c].mean(0) for c in range(classes)])
    pred = ((test_x[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    return float((pred == test_y).mean())


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    recs = read_video_list(root / f"{split}.csv")
    clips = np.stack([read_frames(r.path, range(MOTION.num_frames)) for r in recs])
    return clips, np.array([r.label for r in recs])


def test_generated_data_needs_temporal_order(motion_dir: Path) -> None:
    train_x, train_y = load_split(motion_dir, "train")
    test_x, test_y = load_split(motion_dir, "test")
    assert train_x.shape == (400, 8, 64, 64, 3) and len(test_y) == 200
    assert np.bincount(train_y).tolist() == [100] * 4  # balanced
    assert (motion_dir / "classes.txt").read_text().split() == HEADINGS[4]
    # frame averaging: class means of the mean frame are the same, so nearest-centroid guesses
    mean_frame = lambda c: c.astype(np.float32).mean(1).reshape(len(c), -1)  # noqa: E731
    averaged = nearest_centroid(mean_frame(train_x), train_y, mean_frame(test_x), test_y, 4)
    # a temporal feature: where the object moved between the first two frames
    step = lambda c: centroids(c[:, :2])[:, 1] - centroids(c[:, :2])[:, 0]  # noqa: E731
    temporal = nearest_centroid(step(train_x), train_y, step(test_x), test_y, 4)
    assert averaged < 0.36  # chance is 0.25; 200 test clips give about +-0.06
    assert temporal > 0.95


def test_generation_is_deterministic_and_the_cli_writes_it(tmp_path: Path, shared_data) -> None:
    args = ["--train", "4", "--val", "2", "--test", "2", "--source-root", str(shared_data.parent)]
    for name in ("a", "b"):
        assert main(["make-motion-data", "--out", str(tmp_path / name), *args]) == 0
    for rel in ("train.csv", "test.csv", "train/000003.mp4", "val/000001.mp4"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    lines = (tmp_path / "a" / "train.csv").read_text().splitlines()
    assert [line.split()[0] for line in lines] == [f"train/{i:06d}.mp4" for i in range(4)]
    frames_args = [*args, "--format", "frames", "--directions", "8", "--num-frames", "8"]
    assert main(["make-motion-data", "--out", str(tmp_path / "f"), *frames_args]) == 0
    assert len(list((tmp_path / "f" / "test" / "000001").glob("*.png"))) == 8
    with pytest.raises(ValueError, match="multiple of directions"):
        MotionConfig(num_frames=6, directions=4)
