"""The video-list data set: list parsing, real clips, frame folders, corrupt videos skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from adaptformer.data.video.datasets import (
    VideoListDataset,
    build_video_datasets,
    collate_videos,
    read_video_list,
)


def write_lists(root: Path, lines: str, train_extra: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text(lines + train_extra)
    (root / "val.csv").write_text(lines)
    (root / "test.csv").write_text(lines + train_extra)


def test_read_video_list_resolves_paths(tmp_path) -> None:
    (tmp_path / "l.csv").write_text("a/b.mp4 3\n\n/abs/c.avi 0\nwith space.mp4 1\n")
    recs = read_video_list(tmp_path / "l.csv", video_root="/videos")
    assert [(str(r.path), r.label, r.index) for r in recs] == [
        ("/videos/a/b.mp4", 3, 0),
        ("/abs/c.avi", 0, 1),
        ("/videos/with space.mp4", 1, 2),
    ]
    assert read_video_list(tmp_path / "l.csv")[0].path == tmp_path / "a/b.mp4"
    (tmp_path / "bad.csv").write_text("a.mp4 cat\n")
    with pytest.raises(ValueError, match=r"bad\.csv:1: expected '<path> <integer label>'"):
        read_video_list(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="train.csv, val.csv"):
        read_video_list(tmp_path / "missing.csv")


def test_real_clips_with_a_corrupt_file_are_skipped_and_counted(tmp_path, videos_dir) -> None:
    (tmp_path / "x.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    write_lists(
        tmp_path, "demo.mp4 0\ntest.avi 1\ntest.mp4 2\n", train_extra=f"{tmp_path / 'x.mp4'} 1\n"
    )
    splits = build_video_datasets(
        tmp_path, video_root=videos_dir, num_frames=4, sampling_rate=8, size=32,
        test_clips=2, test_crops=3,
    )  # fmt: skip
    assert [len(splits.train), len(splits.val), len(splits.test)] == [3, 3, 3]
    assert [s.path.name for s in splits.skipped] == ["x.mp4", "x.mp4"]
    assert splits.num_classes == 3 and splits.test.num_listed == 4
    clip, label, index = splits.train[1]
    assert clip.shape == (3, 4, 32, 32) and (label, index) == (1, 1)
    views, label, index = splits.test[2]
    assert views.shape == (6, 3, 4, 32, 32) and (label, index) == (2, 2)
    assert splits.test.video_indices.tolist() == [0, 1, 2]  # x.mp4 (index 3) is not expected


def test_decode_failures_after_probing(tmp_path, videos_dir) -> None:
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"\0" * 4096)
    (tmp_path / "list.csv").write_text(f"{videos_dir / 'test.avi'} 0\n{bad} 1\n")
    evals = VideoListDataset(tmp_path / "list.csv", train=False, num_frames=2, size=16, probe=False)
    assert evals[1] is None and evals.decode_failures == 1
    clips, _, index = collate_videos([evals[0], evals[1]])
    assert clips.shape == (1, 1, 3, 2, 16, 16) and index.tolist() == [0]
    assert collate_videos([None]) is None
    train = VideoListDataset(tmp_path / "list.csv", train=True, num_frames=2, size=16, probe=False)
    torch.manual_seed(0)
    for _ in range(3):  # the broken video is replaced by a readable one
        clip, label, index = train[1]
        assert clip.shape == (3, 2, 16, 16) and (label, index) == (0, 0)
    assert train.decode_failures >= 3  # the bad video may be drawn again as a replacement


def test_frame_folders_and_segment_sampling(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for t in range(10):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / name / f"img_{t + 1:05d}.jpg"
            )
    (tmp_path / "list.csv").write_text("a 0\nb 1\n")
    data = VideoListDataset(
        tmp_path / "list.csv", train=True, num_frames=5, sampling="segment", size=16, flip=False
    )
    loader = DataLoader(data, batch_size=2, collate_fn=collate_videos)
    clips, labels, _ = next(iter(loader))
    assert clips.shape == (2, 3, 5, 16, 16) and labels.tolist() == [0, 1]
