"""The ``adaptformer`` command line: one module per subcommand, each with ``register``.

Each subcommand module defines ``register(subparsers)``, which adds its parser and sets
``func=run`` as default; ``run(args) -> int`` returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from typing import NoReturn

# Subcommand modules, in the order ``adaptformer --help`` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "demo",
    "train",
    "vtab",
    "compare",
    "eval",
    "predict",
    "serve",
    "tasks",
    "export",
    "models",
    "convert_onnx",
    "make_motion_data",
)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error: argparse's default prints the whole
    usage first (40 lines for ``train``), which buries the one line that matters."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"adaptformer: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="adaptformer",
        description="Adapt pretrained Vision Transformers with AdaptFormer (NeurIPS 2022).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. User errors print one line and exit 2; a NaN loss exits 1; Ctrl-C
    prints one line (with the resume command for a training) and exits 130, as shells do."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from ..data.safe import UnreadableImageError
    from ..training.engine import NonFiniteLossError
    from ..utils.errors import TrainingInterrupted, UserFacingError

    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as e:
        print(
            "adaptformer: interrupted; the last finished epoch is saved, resume with: "
            f"adaptformer train --resume --output {shlex.quote(e.run_folder)}",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print("adaptformer: interrupted", file=sys.stderr)
        return 130
    except NonFiniteLossError as e:
        print(f"adaptformer: training stopped: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, KeyError, UserFacingError, UnreadableImageError) as e:
        if args.verbose:
            raise
        print(f"adaptformer: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(error: Exception) -> str:
    """The message of a user error. A ``KeyError``'s is its key: our own carry a sentence, a
    bare key (``'config'``) came from a file that lacks it and is said so."""
    if not isinstance(error, KeyError):
        return str(error)
    key = error.args[0] if error.args else ""
    if isinstance(key, str) and " " in key:
        return key
    return f"missing key {key!r} in a file it read (run with -v to see where)"


if __name__ == "__main__":
    sys.exit(main())
