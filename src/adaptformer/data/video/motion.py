"""A motion benchmark from real images: the label is the direction an object starts moving in.

A real image (a Fashion-MNIST item or a CIFAR-10 photo) travels once around a regular polygon
(a square for 4 directions, an octagon for 8) at constant speed, one step per frame, and the
clip ends one step before it is back where it started. The label is the heading of its first
move; whether it goes clockwise or anticlockwise is random, so each heading starts from one of
two vertices.

Why a closed loop rather than a straight line: a straight path leaves a streak in the average
frame whose orientation gives away the axis of motion, so a model that ignores frame order
could still beat chance. Around a loop, the clip's *set* of frames is the same whichever vertex
it starts from and whichever way it turns (only the order differs), and the object, polygon
size and position are drawn independently of the label. Any model that averages or pools
frames without their order is therefore at chance; only temporal order tells the classes
apart. Clips are written as all-intra H.264 (every frame a key frame at a fixed quantiser), so
compression cannot mark the first frame either.

Output: ``{train,val,test}/NNNNNN.mp4`` (or frame folders), ``{train,val,test}.csv`` in the
``video-list`` format (``path label``, paths relative to the output folder), ``classes.txt``
and ``motion.json`` with the generation settings. Train clips use the source's training
images, val and test clips its test images, so appearance never repeats across splits.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

_log = logging.getLogger(__name__)

Source = Literal["fashion-mnist", "cifar10"]
Format = Literal["mp4", "frames"]
SOURCES: tuple[str, ...] = ("fashion-mnist", "cifar10")
FORMATS: tuple[str, ...] = ("mp4", "frames")
HEADINGS = {
    4: ["right", "down", "left", "up"],
    8: ["right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right"],
}


@dataclass(frozen=True)
class MotionConfig:
    """Settings of a generated motion data set (written to ``motion.json``).

    Attributes:
        source: where the objects come from.
        num_train: training clips.
        num_val: validation clips.
        num_test: test clips.
        num_frames: frames per clip (a multiple of ``directions``).
        size: frame height and width in pixels.
        directions: 4 (square path) or 8 (octagon path) headings, one class each.
        format: ``mp4`` files or folders of PNG frames.
        seed: everything (objects, paths, labels) follows from it.
    """

    source: Source = "fashion-mnist"
    num_train: int = 1200
    num_val: int = 300
    num_test: int = 300
    num_frames: int = 8
    size: int = 64
    directions: int = 4
    format: Format = "mp4"
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.source not in SOURCES:
            problems.append(f"source={self.source!r} must be one of {', '.join(SOURCES)}")
        if self.format not in FORMATS:
            problems.append(f"format={self.format!r} must be one of {', '.join(FORMATS)}")
        if self.directions not in HEADINGS:
            problems.append(f"directions={self.directions} must be 4 or 8")
        elif self.num_frames < self.directions or self.num_frames % self.directions:
            problems.append(
                f"num_frames={self.num_frames} must be a positive multiple of "
                f"directions={self.directions} (equal steps on every side of the loop)"
            )
        if min(self.num_train, self.num_val, self.num_test) < 1:
            problems.append("num_train, num_val and num_test must be >= 1")
        if self.size < 32 or self.size % 2:
            problems.append(f"size={self.size} must be even and >= 32")
        if problems:
            raise ValueError("invalid motion data settings: " + "; ".join(problems))


def _read_idx_images(path: Path) -> np.ndarray:
    from ..datasets import read_idx_gz

    return read_idx_gz(path)


def load_objects(
    source: Source, root: str | Path, split: str, count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` random source images, ``uint8 [count, h, w, 3]``.

    Args:
        source: ``fashion-mnist`` (reads ``root/FashionMNIST/raw/*-images-idx3-ubyte.gz``) or
            ``cifar10`` (reads JPEGs from ``root/cifar10.tar`` without unpacking it).
        root: the shared data folder.
        split: ``train`` or ``test`` images of the source.
        count: how many to draw (with replacement when the source has fewer).
        rng: the random generator.
    """
    root = Path(root)
    if source == "fashion-mnist":
        name = "train" if split == "train" else "t10k"
        path = root / "FashionMNIST" / "raw" / f"{name}-images-idx3-ubyte.gz"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: pass the folder that holds FashionMNIST/raw"
            )
        images = _read_idx_images(path)
        pick = rng.choice(len(images), size=count, replace=count > len(images))
        return np.repeat(images[pick][..., None], 3, axis=-1)
    tar_path = root / "cifar10.tar"
    if not tar_path.is_file():
        raise FileNotFoundError(f"{tar_path} not found: pass the folder that holds cifar10.tar")
    with tarfile.open(tar_path) as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.isfile() and m.name.startswith(f"cifar10/{split}/")),
            key=lambda m: m.name,
        )
        pick = rng.choice(len(members), size=count, replace=count > len(members))
        out = []
        for i in pick:
            data = tf.extractfile(members[i]).read()
            out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(out)


def loop_points(num_frames: int, directions: int, side: float) -> np.ndarray:
    """``[num_frames, 2]`` (x, y) points equally spaced around a regular polygon, clockwise.

    Edge ``k`` runs at heading ``k * 360 / directions`` degrees in image coordinates (x right,
    y down, so heading 1 of 4 is "down"); point 0 is vertex 0, the polygon's centre is (0, 0).
    """
    angles = 2 * np.pi * np.arange(directions) / directions
    edges = side * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    vertices = np.concatenate([np.zeros((1, 2)), np.cumsum(edges, axis=0)[:-1]])
    vertices -= vertices.mean(axis=0)
    steps = num_frames // directions
    frac = np.arange(steps)[:, None] / steps
    return np.concatenate([vertices[k] + frac * edges[k] for k in range(directions)])


def path_order(num_frames: int, directions: int, heading: int, clockwise: bool) -> np.ndarray:
    """Indices into :func:`loop_points` for a clip whose first move has ``heading``.

    Clockwise from vertex ``i`` the first move runs along edge ``i``; anticlockwise it runs
    back along edge ``i - 1``, whose reversed heading is ``i - 1 + directions / 2``.
    """
    steps = num_frames // directions
    t = np.arange(num_frames)
    if clockwise:
        return (heading * steps + t) % num_frames
    start = (heading - directions // 2 + 1) % directions
    return (start * steps - t) % num_frames


def render_clip(
    obj: np.ndarray,
    size: int,
    positions: np.ndarray,
) -> np.ndarray:
    """``uint8 [T, size, size, 3]``: ``obj`` pasted on black with its top-left at each position."""
    h, w = obj.shape[:2]
    frames = np.zeros((len(positions), size, size, 3), dtype=np.uint8)
    for t, (x, y) in enumerate(positions):
        frames[t, y : y + h, x : x + w] = obj
    return frames


def sample_clip(
    obj: np.ndarray,
    cfg: MotionConfig,
    heading: int,
    clockwise: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """One clip: random polygon size and place (independent of the label), then render."""
    h, w = obj.shape[:2]
    room = cfg.size - max(h, w)  # the object's top-left may move within [0, room]
    unit = loop_points(cfg.num_frames, cfg.directions, 1.0)
    extent = float((unit.max(axis=0) - unit.min(axis=0)).max())
    side = rng.uniform(0.45, 0.95) * room / extent
    points = loop_points(cfg.num_frames, cfg.directions, side)
    low, high = points.min(axis=0), points.max(axis=0)
    offset = rng.uniform(-low, room - high)
    corners = np.rint(points + offset).astype(np.int64)
    order = path_order(cfg.num_frames, cfg.directions, heading, clockwise)
    return render_clip(obj, cfg.size, corners[order])


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """All-intra H.264 at a fixed quantiser: each frame coded alone, identically for any order."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 1
        stream.codec_context.thread_count = 1  # deterministic bytes
        stream.codec_context.options = {"qp": "4", "preset": "veryfast", "bframes": "0"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames, start=1):
        Image.fromarray(f).save(folder / f"img_{t:05d}.png")


def make_motion_dataset(
    out: str | Path, cfg: MotionConfig, source_root: str | Path
) -> dict[str, int]:
    """Generate the benchmark into ``out``; returns clips per split.

    Args:
        out: output folder (created; existing clips with the same names are overwritten).
        cfg: what to generate.
        source_root: the shared data folder holding the source images.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    for k, (split, count) in enumerate(counts.items()):
        rng = np.random.default_rng([cfg.seed, k])
        objects = load_objects(
            cfg.source, source_root, "train" if split == "train" else "test", count, rng
        )
        labels = rng.permutation(np.arange(count) % cfg.directions)  # balanced classes
        clockwise = rng.random(count) < 0.5
        (out / split).mkdir(exist_ok=True)
        lines = []
        for i in range(count):
            frames = sample_clip(objects[i], cfg, int(labels[i]), bool(clockwise[i]), rng)
            name = f"{split}/{i:06d}" + (".mp4" if cfg.format == "mp4" else "")
            if cfg.format == "mp4":
                write_mp4(out / name, frames)
            else:
                write_frames(out / name, frames)
            lines.append(f"{name} {labels[i]}")
        (out / f"{split}.csv").write_text("\n".join(lines) + "\n")
        _log.info("%s: %d clips", split, count)
    (out / "classes.txt").write_text("\n".join(HEADINGS[cfg.directions]) + "\n")
    meta = {"config": asdict(cfg), "chance_percent": 100.0 / cfg.directions, "counts": counts}
    (out / "motion.json").write_text(json.dumps(meta, indent=2) + "\n")
    return counts


def chance(directions: int) -> float:
    """Accuracy of guessing, in percent."""
    return 100.0 / directions


__all__ = [
    "HEADINGS",
    "MotionConfig",
    "load_objects",
    "loop_points",
    "make_motion_dataset",
    "path_order",
    "render_clip",
    "sample_clip",
    "write_mp4",
]
