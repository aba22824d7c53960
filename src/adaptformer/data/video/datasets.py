"""The ``video-list`` data set: ``train.csv`` / ``val.csv`` / ``test.csv`` of ``path label`` lines.

The list format is VideoMAE's (and AdaptFormer's): one video per line, the path and an integer
label separated by whitespace, no header. Paths may be video files (mp4/webm/avi/... decoded
with PyAV) or folders of extracted frames; relative paths resolve against ``video_root``, or
against the list file's folder when no root is given.

Unreadable videos are skipped and counted, never replaced silently: the constructor probes
every file (in parallel threads) and leaves out those that fail, recording them in
``skipped``; a video that fails later, while decoding, is replaced by another random video in
training (so batches keep their size and DDP ranks stay in step) and dropped in evaluation
(``__getitem__`` returns None; :func:`collate_videos` removes it and the multi-view evaluator
reports the video as missing).

Items are ``(clip, label, video_index)`` where ``video_index`` is the line's position in the
list file. A training clip is ``[3, T, H, W]``; an evaluation item holds every view of its
video, ``[V, 3, T, H, W]`` with ``V = num_clips * num_crops`` in clip-major order, decoded once,
so multi-view testing costs one decode per video and its logits can be averaged per video.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, default_collate

from .io import VideoDecodeError, read_frames
from .io import probe as probe_video
from .sampling import SAMPLINGS, Sampling, eval_indices, train_indices
from .transforms import MULTISCALE, EvalTransform, TrainTransform

_log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}


@dataclass(frozen=True)
class VideoRecord:
    """One line of a list file: where the video is, its label, its position in the file."""

    path: Path
    label: int
    index: int


@dataclass(frozen=True)
class SkippedVideo:
    """A listed video left out because it could not be read, and why."""

    path: Path
    reason: str


def read_video_list(
    list_file: str | os.PathLike, video_root: str | os.PathLike | None = None
) -> list[VideoRecord]:
    """Parse a ``path label`` list file (VideoMAE format; blank lines ignored).

    Raises:
        FileNotFoundError: the list file is missing.
        ValueError: a line does not end in an integer label.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(
            f"video list {list_file} does not exist; --data-root must hold train.csv, val.csv "
            "and test.csv with 'path label' lines"
        )
    root = Path(video_root) if video_root is not None else list_file.parent
    records = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise ValueError(
                f"{list_file}:{lineno}: expected '<path> <integer label>', got {line.strip()!r}"
            )
        path = Path(parts[0])
        records.append(
            VideoRecord(path if path.is_absolute() else root / path, int(parts[1]), len(records))
        )
    if not records:
        raise ValueError(f"video list {list_file} is empty")
    return records


def _probe(path: Path) -> int | str:
    """The frame count, or the reason the video cannot be read."""
    try:
        return probe_video(path).num_frames
    except VideoDecodeError as e:
        return str(e)


class VideoListDataset(Dataset):
    """Clips of the videos in one list file.

    Args:
        list_file: the ``path label`` file.
        train: random clips with augmentation; otherwise every evaluation view, deterministic.
        video_root: where relative paths start; None: the list file's folder.
        num_frames: frames per clip.
        sampling: ``dense`` (frames ``sampling_rate`` apart) or ``segment`` (one per segment).
        sampling_rate: stride of dense sampling (ignored by segment sampling).
        size: clip height and width.
        mean: input normalisation mean of the backbone.
        std: input normalisation std.
        flip: random horizontal flip in training (off for SSv2-style data).
        num_clips: temporal views per video in evaluation.
        num_crops: spatial views per video in evaluation.
        probe: check every video at construction and skip unreadable ones.
        max_retries: replacement videos tried when a training video fails to decode.
    """

    def __init__(
        self,
        list_file: str | os.PathLike,
        *,
        train: bool,
        video_root: str | os.PathLike | None = None,
        num_frames: int = 8,
        sampling: Sampling = "dense",
        sampling_rate: int = 4,
        size: int = 224,
        mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
        flip: bool = True,
        num_clips: int = 1,
        num_crops: int = 1,
        probe: bool = True,
        max_retries: int = 10,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling={sampling!r} must be one of {', '.join(SAMPLINGS)}")
        if num_frames < 1 or sampling_rate < 1 or num_clips < 1 or num_crops < 1:
            raise ValueError("num_frames, sampling_rate, num_clips and num_crops must be >= 1")
        self.list_file = Path(list_file)
        self.train = train
        self.num_frames, self.sampling, self.sampling_rate = num_frames, sampling, sampling_rate
        self.num_clips, self.num_crops = num_clips, num_crops
        self.max_retries = max_retries
        self.train_transform = TrainTransform(size, mean, std, flip=flip, scales=MULTISCALE)
        self.eval_transform = EvalTransform(size, mean, std, num_crops=num_crops)
        listed = read_video_list(self.list_file, video_root)
        self.num_listed = len(listed)
        self.num_classes = max(r.label for r in listed) + 1
        self.skipped: list[SkippedVideo] = []
        self.decode_failures = 0  # in this process; DataLoader workers count their own
        if probe:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                found = list(pool.map(_probe, [r.path for r in listed]))
            self.videos = [r for r, n in zip(listed, found, strict=True) if isinstance(n, int)]
            self._lengths: list[int | None] = [n for n in found if isinstance(n, int)]
            self.skipped = [
                SkippedVideo(r.path, n)
                for r, n in zip(listed, found, strict=True)
                if isinstance(n, str)
            ]
        else:
            self.videos, self._lengths = listed, [None] * len(listed)
        if self.skipped:
            _log.warning(
                "%s: skipped %d of %d videos that cannot be read (first: %s)",
                self.list_file,
                len(self.skipped),
                self.num_listed,
                self.skipped[0].reason,
            )
        if not self.videos:
            raise ValueError(f"{self.list_file}: none of the {self.num_listed} videos can be read")

    @property
    def num_views(self) -> int:
        """Views per evaluation item (1 in training)."""
        return 1 if self.train else self.num_clips * self.num_crops

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.videos], dtype=np.int64)

    @property
    def video_indices(self) -> np.ndarray:
        """List-file positions of the readable videos: the set evaluation must cover."""
        return np.array([r.index for r in self.videos], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.videos)

    def _length(self, i: int) -> int:
        n = self._lengths[i]
        return probe_video(self.videos[i].path).num_frames if n is None else n

    def _train_clip(self, i: int, rng: np.random.Generator) -> torch.Tensor:
        idx = train_indices(
            self._length(i), self.num_frames, self.sampling, self.sampling_rate, rng
        )
        return self.train_transform(read_frames(self.videos[i].path, idx), rng)

    def _eval_views(self, i: int) -> torch.Tensor:
        clips = eval_indices(
            self._length(i), self.num_frames, self.sampling, self.sampling_rate, self.num_clips
        )
        frames = read_frames(self.videos[i].path, np.concatenate(clips))  # one decode per video
        views = [
            self.eval_transform(frames[c * self.num_frames : (c + 1) * self.num_frames])
            for c in range(self.num_clips)
        ]
        return torch.cat(views)  # [clips * crops, 3, T, H, W], clip-major

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | None:
        if not self.train:
            try:
                return self._eval_views(i), self.videos[i].label, self.videos[i].index
            except VideoDecodeError as e:
                self.decode_failures += 1
                _log.warning("skipping unreadable video in evaluation: %s", e)
                return None
        # seeded from torch's RNG: distinct per DataLoader worker and epoch, reproducible
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        for _ in range(self.max_retries + 1):
            try:
                return self._train_clip(i, rng), self.videos[i].label, self.videos[i].index
            except VideoDecodeError as e:
                self.decode_failures += 1
                _log.warning("unreadable training video replaced by a random one: %s", e)
                i = int(rng.integers(len(self.videos)))
        raise RuntimeError(
            f"{self.max_retries + 1} videos in a row failed to decode from {self.list_file}; "
            "check the files (see the warnings above)"
        )

    def __repr__(self) -> str:
        mode = "train" if self.train else f"eval {self.num_clips}x{self.num_crops} views"
        return (
            f"VideoListDataset({self.list_file}, {len(self)} videos, {mode}, "
            f"{self.num_frames} frames {self.sampling} rate {self.sampling_rate})"
        )


def collate_videos(
    batch: list[tuple[torch.Tensor, int, int] | None],
) -> tuple[torch.Tensor, ...] | None:
    """``default_collate`` without the items of videos that failed to decode (None).

    Returns None when every item of the batch failed; callers skip such batches.
    """
    items = [b for b in batch if b is not None]
    return default_collate(items) if items else None


@dataclass
class VideoDataSplits:
    """The ``video-list`` data set's splits.

    Attributes:
        train: random training clips.
        val: evaluation views of ``val.csv``, for model selection (None without the file).
        test: evaluation views of ``test.csv``; score it once, at the end.
        num_classes: from the training labels.
        classes: names from ``classes.txt`` in the data root when present, else the indices.
        skipped: unreadable videos of every split.
    """

    train: VideoListDataset
    val: VideoListDataset | None
    test: VideoListDataset
    num_classes: int
    classes: list[str] = field(default_factory=list)
    skipped: list[SkippedVideo] = field(default_factory=list)
    multilabel: bool = False  # the run summary and heads treat video labels as single-label

    def summary(self) -> dict[str, int | bool | str]:
        """Sizes, for the run log and ``summary.json`` (the image splits' keys)."""
        return {
            "train": len(self.train),
            "val": len(self.val) if self.val is not None else 0,
            "test": len(self.test),
            "test_split": "test",
            "classes": self.num_classes,
            "multilabel": False,
            "skipped": len(self.skipped),
        }


def build_video_datasets(
    data_root: str | os.PathLike,
    *,
    video_root: str | os.PathLike | None = None,
    num_frames: int = 8,
    sampling: Sampling = "dense",
    sampling_rate: int = 4,
    size: int = 224,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    flip: bool = True,
    test_clips: int = 1,
    test_crops: int = 1,
    **kwargs: Any,
) -> VideoDataSplits:
    """Train/val/test :class:`VideoListDataset` s from ``data_root/{train,val,test}.csv``.

    Validation and test use the same multi-view setting (``test_clips x test_crops``).
    ``kwargs`` go to every :class:`VideoListDataset` (``probe``, ``max_retries``).
    """
    root = Path(data_root)
    common = dict(
        video_root=video_root,
        num_frames=num_frames,
        sampling=sampling,
        sampling_rate=sampling_rate,
        size=size,
        mean=mean,
        std=std,
        **kwargs,
    )
    views = dict(num_clips=test_clips, num_crops=test_crops)
    train = VideoListDataset(root / SPLIT_FILES["train"], train=True, flip=flip, **common)
    val_file = root / SPLIT_FILES["val"]
    val = VideoListDataset(val_file, train=False, **views, **common) if val_file.is_file() else None
    if val is None:
        _log.info("%s not found: no validation split", val_file)
    test = VideoListDataset(root / SPLIT_FILES["test"], train=False, **views, **common)
    classes_file = root / "classes.txt"
    num_classes = train.num_classes
    classes = (
        [c.strip() for c in classes_file.read_text().splitlines() if c.strip()]
        if classes_file.is_file()
        else [str(i) for i in range(num_classes)]
    )
    num_classes = max(num_classes, len(classes))
    skipped = train.skipped + (val.skipped if val else []) + test.skipped
    return VideoDataSplits(train, val, test, num_classes, classes, skipped)
