"""``adaptformer make-motion-data``: write the motion-direction video benchmark.

See :mod:`adaptformer.data.video.motion` for what the clips show and why a model that ignores frame
order scores at chance on them.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from ..data.video.motion import FORMATS, SOURCES, MotionConfig, make_motion_dataset

_log = logging.getLogger(__name__)


def _default_source_root() -> str:
    shared = os.environ.get("ADAPTFORMER_SHARED")
    return str(Path(shared) / "data") if shared else "../shared/data"


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = MotionConfig()
    p = subparsers.add_parser(
        "make-motion-data",
        help="generate the motion-direction video benchmark (video-list format)",
        description=(
            "Render clips of a real image (Fashion-MNIST or CIFAR-10) travelling once around a "
            "square (or octagon); the label is the heading of its first move. Every clip's set "
            "of frames is independent of the label, so only temporal order solves it. Writes "
            "{train,val,test}.csv for --dataset video-list."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (the --data-root)")
    p.add_argument("--source", choices=SOURCES, default=defaults.source, help="object images")
    p.add_argument(
        "--source-root",
        type=Path,
        default=_default_source_root(),
        help="folder with FashionMNIST/raw/*.gz or cifar10.tar (default: $ADAPTFORMER_SHARED/data "
        "or ../shared/data)",
    )
    p.add_argument("--train", type=int, default=defaults.num_train, help="training clips")
    p.add_argument("--val", type=int, default=defaults.num_val, help="validation clips")
    p.add_argument("--test", type=int, default=defaults.num_test, help="test clips")
    p.add_argument("--num-frames", type=int, default=defaults.num_frames, help="frames per clip")
    p.add_argument("--size", type=int, default=defaults.size, help="frame side in pixels")
    p.add_argument(
        "--directions", type=int, choices=(4, 8), default=defaults.directions, help="classes"
    )
    p.add_argument("--format", choices=FORMATS, default=defaults.format, help="clip storage")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = MotionConfig(
        source=args.source,
        num_train=args.train,
        num_val=args.val,
        num_test=args.test,
        num_frames=args.num_frames,
        size=args.size,
        directions=args.directions,
        format=args.format,
        seed=args.seed,
    )
    start = time.perf_counter()
    counts = make_motion_dataset(args.out, cfg, args.source_root)
    _log.info(
        "wrote %s clips to %s in %.1f s (chance: %.1f%%)",
        "/".join(str(n) for n in counts.values()),
        args.out,
        time.perf_counter() - start,
        100.0 / cfg.directions,
    )
    return 0
