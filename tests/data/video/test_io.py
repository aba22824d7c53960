"""Decoding the shared real clips with PyAV, frame folders, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adaptformer.data.video.io import VideoDecodeError, count_frames, probe, read_frames

from ...conftest import CLIP_FRAMES

av = pytest.importorskip("av")


@pytest.mark.parametrize("name", sorted(CLIP_FRAMES))
def test_real_clips_decode_fully(videos_dir, name: str) -> None:
    path = videos_dir / name
    info = probe(path)
    assert info.num_frames == CLIP_FRAMES[name] == count_frames(path)
    assert (info.width, info.height) == ((320, 240) if name == "test.avi" else (340, 256))


def test_read_frames_returns_the_requested_frames(videos_dir) -> None:
    path = videos_dir / "test.avi"
    with av.open(str(path)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    got = read_frames(path, [7, 0, 7, 163, 200])  # any order, repeats, past the end
    assert got.shape == (5, 240, 320, 3) and got.dtype == np.uint8
    for row, i in zip(got, [7, 0, 7, 163, 163], strict=True):
        assert np.array_equal(row, every[i])


def test_frame_folders(tmp_path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    frames = np.random.default_rng(0).integers(0, 256, (5, 12, 16, 3), dtype=np.uint8)
    for i, f in enumerate(frames, start=1):
        Image.fromarray(f).save(folder / f"img_{i:05d}.png")
    (folder / "notes.txt").write_text("ignored")
    assert probe(folder).num_frames == 5 == count_frames(folder)
    assert np.array_equal(read_frames(folder, [4, 1, 9]), frames[[4, 1, 4]])


def test_bad_files_raise_decode_errors(tmp_path) -> None:
    garbage = tmp_path / "x.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    for path in (garbage, tmp_path / "missing.mp4", tmp_path):
        with pytest.raises(VideoDecodeError):
            probe(path)
        with pytest.raises(VideoDecodeError):
            read_frames(path, [0])
    with pytest.raises(ValueError, match="at least one"):
        read_frames(garbage, [])
