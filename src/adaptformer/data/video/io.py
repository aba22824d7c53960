"""Read frames from video files (PyAV) and from folders of extracted frames.

Only the requested frames are kept: a video is decoded from its start up to the last frame
needed, which is exact for any container (seeking lands on key frames and is not). Clips of
action-recognition data sets are seconds long, so this costs little. PyAV is the optional
``[video]`` extra; it is imported on first use with an install hint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..safe import DECODE_ERRORS, open_image

_log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoDecodeError(OSError):
    """A video or frame folder is missing, unreadable, corrupt or has no frames."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` reads from a container header (or a frame folder listing)."""

    num_frames: int
    height: int
    width: int
    fps: float | None


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "decoding video files needs PyAV: pip install 'adaptformer[video]' (or pip install av)"
        ) from e
    return av


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a frame folder in name order (``img_00001.jpg``, ...)."""
    files = sorted(
        p for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file()
    )
    if not files:
        raise VideoDecodeError(f"frame folder {folder} holds no {'/'.join(FRAME_EXTENSIONS)} files")
    return files


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, size and rate from the header, without decoding the whole video.

    The count comes from the container (exact for the MP4/AVI files checked in the tests);
    when a container does not record it, the video is decoded once to count.

    Raises:
        VideoDecodeError: the file is missing, not a video, or has no video stream.
    """
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        try:
            with open_image(files[0]) as im:
                return VideoInfo(len(files), im.height, im.width, None)
        except DECODE_ERRORS as e:
            raise VideoDecodeError(f"cannot read frame {files[0]}: {e}") from e
    if not path.is_file():
        raise VideoDecodeError(f"video {path} does not exist")
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            n = stream.frames
            if n <= 0:
                n = sum(1 for _ in container.decode(stream))
            if n <= 0:
                raise VideoDecodeError(f"{path} has a video stream without frames")
            return VideoInfo(n, stream.height, stream.width, fps)
    except av.FFmpegError as e:
        raise VideoDecodeError(f"cannot read video {path}: {e}") from e


def count_frames(path: str | os.PathLike) -> int:
    """The exact number of decodable frames (decodes the whole video)."""
    path = Path(path)
    if path.is_dir():
        return len(frame_files(path))
    av = _av()
    try:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))
    except (av.FFmpegError, IndexError) as e:
        raise VideoDecodeError(f"cannot decode video {path}: {e}") from e


def read_frames(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Frames ``indices`` (any order, repeats allowed) as ``uint8 [len(indices), H, W, 3]``.

    If the video ends before a requested index (a header that overstates the frame count),
    that index gets the last frame decoded, and a debug message is logged.

    Raises:
        VideoDecodeError: the video is missing, corrupt or yields no frame.
    """
    if len(indices) == 0:
        raise ValueError("read_frames needs at least one frame index")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, indices)
    return _read_video(path, indices)


def _read_folder(folder: Path, indices: Sequence[int]) -> np.ndarray:
    files = frame_files(folder)
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in indices:
        j = min(i, len(files) - 1)
        if j not in cache:
            try:
                with open_image(files[j]) as im:
                    cache[j] = np.asarray(im.convert("RGB"))
            except DECODE_ERRORS as e:
                raise VideoDecodeError(f"cannot read frame {files[j]}: {e}") from e
        out.append(cache[j])
    return np.stack(out)


def _read_video(path: Path, indices: Sequence[int]) -> np.ndarray:
    if not path.is_file():
        raise VideoDecodeError(f"video {path} does not exist")
    av = _av()
    wanted = set(indices)
    last = max(wanted)
    frames: dict[int, np.ndarray] = {}
    tail: np.ndarray | None = None  # the final frame, when the video ends before `last`
    decoded = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path} has no video stream")
            for i, frame in enumerate(container.decode(video=0)):
                decoded = i + 1
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
            else:
                if decoded:
                    tail = frames.get(decoded - 1)
                    if tail is None:
                        tail = frame.to_ndarray(format="rgb24")
    except av.FFmpegError as e:
        raise VideoDecodeError(f"cannot decode video {path}: {e}") from e
    if not decoded:
        raise VideoDecodeError(f"video {path} yielded no frames")
    if len(frames) < len(wanted):
        _log.debug("%s: %d frames decoded, indices up to %d requested", path, decoded, last)
        for i in wanted - frames.keys():
            frames[i] = tail
    return np.stack([frames[i] for i in indices])
