"""The one strict key/shape comparison of two tensor collections (checkpoint vs model, adapter
file vs model, converted weights vs timm), so every loader reports mismatches the same way."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


def key_shape_problems(
    found: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    may_be_missing: Collection[str] = (),
    labels: tuple[str, str, str] = ("missing", "unexpected", "wrong shape"),
    sides: tuple[str, str] = ("found", "expected"),
    shown: int = 12,
) -> list[str]:
    """``"<label>: key, key ... (N in all)"`` for keys of ``expected`` absent from ``found``
    (beyond ``may_be_missing``), keys of ``found`` that ``expected`` lacks, and shared keys whose
    shapes differ (``key (<found side> (2, 3) vs <expected side> (3, 3))``); empty when they
    match. Values only need a ``.shape`` (tensors, or safetensors header entries)."""
    missing = sorted(k for k in expected if k not in found and k not in may_be_missing)
    unexpected = sorted(k for k in found if k not in expected)
    wrong = sorted(
        f"{k} ({sides[0]} {tuple(found[k].shape)} vs {sides[1]} {tuple(expected[k].shape)})"
        for k in found
        if k in expected and tuple(found[k].shape) != tuple(expected[k].shape)
    )
    return [
        f"{label}: {clip(items, shown)}"
        for label, items in zip(labels, (missing, unexpected, wrong), strict=True)
        if items
    ]


def clip(items: list[str], shown: int) -> str:
    """The first ``shown`` items, and how many there are when some are left out."""
    more = f" ... ({len(items)} in all)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
