"""Which frames of a video form a clip: dense-with-stride and segment-based sampling.

- ``dense`` (Kinetics, HMDB, UCF in VideoMAE/AdaptFormer): ``num_frames`` frames ``rate``
  apart. Training takes a random start; evaluation takes ``num_clips`` starts spread evenly
  from the first to the last possible one (VideoMAE's multi-clip test), or the centre for one.
- ``segment`` (Something-Something v2, TSN-style): the video is cut into ``num_frames`` equal
  segments and one frame is taken per segment, so a clip always spans the whole video, which
  SSv2's start-to-end actions need. Training takes a random frame per segment; evaluation clip
  ``i`` of ``n`` takes the frame at ``(i + 0.5) / n`` of each segment (the middle for one clip).

Evaluation indices are a pure function of the video length, so every process and every run
scores the same frames. Short videos repeat their last frame.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Sampling = Literal["dense", "segment"]
SAMPLINGS: tuple[str, ...] = ("dense", "segment")


def _check(num_video_frames: int, num_frames: int, rate: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    if num_frames < 1 or rate < 1:
        raise ValueError(f"num_frames={num_frames} and sampling rate={rate} must be >= 1")


def dense_span(num_frames: int, rate: int) -> int:
    """Frames covered by one dense clip, first to last inclusive."""
    return (num_frames - 1) * rate + 1


def dense_indices(num_video_frames: int, num_frames: int, rate: int, start: int) -> np.ndarray:
    """``start, start + rate, ...`` (``num_frames`` of them), clamped to the last frame."""
    _check(num_video_frames, num_frames, rate)
    idx = start + rate * np.arange(num_frames)
    return np.minimum(idx, num_video_frames - 1).astype(np.int64)


def dense_eval_starts(
    num_video_frames: int, num_frames: int, rate: int, num_clips: int
) -> list[int]:
    """Start frames of ``num_clips`` evenly spread dense clips (one clip: the centred one)."""
    slack = max(num_video_frames - dense_span(num_frames, rate), 0)
    if num_clips == 1:
        return [slack // 2]
    return [round(i * slack / (num_clips - 1)) for i in range(num_clips)]


def segment_indices(
    num_video_frames: int,
    num_frames: int,
    offsets: np.ndarray,
) -> np.ndarray:
    """One frame per segment at ``offsets`` (fractions in [0, 1)) of each of ``num_frames``.

    Segment ``k`` is frames ``[floor(k n / T), floor((k + 1) n / T))``: whole frames, no
    overlap, so the clip is strictly increasing whenever the video has ``T`` frames or more.
    """
    _check(num_video_frames, num_frames, 1)
    bounds = (num_video_frames * np.arange(num_frames + 1)) // num_frames
    lengths = np.maximum(np.diff(bounds), 1)
    idx = bounds[:-1] + np.floor(np.asarray(offsets) * lengths).astype(np.int64)
    return np.clip(idx, 0, num_video_frames - 1).astype(np.int64)


def train_indices(
    num_video_frames: int,
    num_frames: int,
    sampling: Sampling,
    rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A random training clip's frame indices."""
    if sampling == "dense":
        slack = max(num_video_frames - dense_span(num_frames, rate), 0)
        start = int(rng.integers(0, slack + 1))
        return dense_indices(num_video_frames, num_frames, rate, start)
    if sampling == "segment":
        return segment_indices(num_video_frames, num_frames, rng.random(num_frames))
    raise ValueError(f"sampling={sampling!r} must be one of {', '.join(SAMPLINGS)}")


def eval_indices(
    num_video_frames: int,
    num_frames: int,
    sampling: Sampling,
    rate: int,
    num_clips: int = 1,
) -> list[np.ndarray]:
    """The ``num_clips`` deterministic evaluation clips of a video, in temporal order."""
    if num_clips < 1:
        raise ValueError(f"num_clips={num_clips} must be >= 1")
    if sampling == "dense":
        starts = dense_eval_starts(num_video_frames, num_frames, rate, num_clips)
        return [dense_indices(num_video_frames, num_frames, rate, s) for s in starts]
    if sampling == "segment":
        return [
            segment_indices(
                num_video_frames, num_frames, np.full(num_frames, (i + 0.5) / num_clips)
            )
            for i in range(num_clips)
        ]
    raise ValueError(f"sampling={sampling!r} must be one of {', '.join(SAMPLINGS)}")


def view_grid(num_clips: int, num_crops: int) -> list[tuple[int, int]]:
    """``(clip, crop)`` of every view, clip-major: view ``v`` is ``(v // crops, v % crops)``."""
    if num_clips < 1 or num_crops < 1:
        raise ValueError(f"num_clips={num_clips} and num_crops={num_crops} must be >= 1")
    return [(c, s) for c in range(num_clips) for s in range(num_crops)]
