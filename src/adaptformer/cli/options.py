"""Flags built from dataclass fields, so each option's help is written once (in the field)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is_list) of an annotation such as ``int | None`` or ``list[int] | None``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"list": list})  # annotations are postponed strings
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """One ``--flag`` per field; defaults are suppressed so only given flags override.

    ``defaults`` names the values a command sets itself where the field's default would apply
    (``vtab``'s 224 px), so that its ``--help`` states them."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, is_list = _base_type(f.type)
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        default = f.metadata.get("default_text", default)  # e.g. "the method's preset"
        default = (defaults or {}).get(f.name, default)
        kwargs["help"] = f"{help_text} (default: {default})"
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = f.metadata.get("parse", kind)
            if is_list:
                kwargs["nargs"] = "+"
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The dataclass fields the user set on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}
