"""Shared by the benchmark scripts: write a generated Markdown section into a docs page."""

from __future__ import annotations

import os
import re
from pathlib import Path


def update_docs(markdown: str, docs: Path, marker: str, images: Path | None = None) -> None:
    """Replace the text between ``<!-- marker:begin -->`` and ``<!-- marker:end -->``.

    The Markdown is written next to its PNGs; ``images`` is that folder, so that image links
    are rewritten to work from ``docs`` too.
    """
    if images is not None:
        rel = os.path.relpath(images.resolve(), docs.resolve().parent)
        markdown = re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"]({rel}/{m.group(1)})", markdown)
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    text = docs.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{docs} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    docs.write_text(f"{head}{begin}\n{markdown.strip()}\n{end}{tail}")
