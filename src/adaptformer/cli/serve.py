"""``adaptformer serve``: every task of a registry over HTTP, from one frozen backbone.

Requests for different tasks share forward passes (cross-task dynamic batching); see
docs/serving.md. The HTTP layer needs the ``serve`` extra; without it the command says how to
install it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from ..serving.config import ServeConfig
from ..utils.errors import UserFacingError
from .options import add_dataclass_flags, given

TOKEN_ENV = "ADAPTFORMER_ADMIN_TOKEN"
# import name -> the distribution that provides it
_NEEDS = {
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "prometheus_client": "prometheus-client",
    "multipart": "python-multipart",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve every registry task over HTTP with cross-task dynamic batching"
    )
    p.add_argument(
        "--registry",
        help="registry folder (default: $ADAPTFORMER_TASKS or ~/.cache/adaptformer/tasks)",
    )
    p.add_argument("--tasks", help="comma-separated tasks to serve (default: every task)")
    p.add_argument(
        "--admin-token-file",
        help=f"file holding the bearer token for PUT/DELETE /v1/tasks (or set ${TOKEN_ENV}; "
        "without either, task changes are disabled)",
    )
    add_dataclass_flags(p, ServeConfig)
    p.set_defaults(func=run)


def missing_extra() -> list[str]:
    """The ``serve`` extra's distributions that are not installed."""
    return [dist for module, dist in _NEEDS.items() if importlib.util.find_spec(module) is None]


def admin_token(path: str | None) -> str | None:
    if path:
        token = Path(path).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"--admin-token-file {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def run(args: argparse.Namespace) -> int:
    config = ServeConfig(**given(args, ServeConfig))
    missing = missing_extra()
    if missing:
        raise UserFacingError(
            f"`adaptformer serve` needs {', '.join(missing)}: pip install 'adaptformer[serve]'"
        )
    from ..serving.app import serve

    names = [t for t in args.tasks.split(",") if t] if args.tasks else None
    serve(args.registry, config, names=names, admin_token=admin_token(args.admin_token_file))
    return 0
