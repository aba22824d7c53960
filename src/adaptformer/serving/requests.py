"""Reading HTTP requests safely: the body-size limit, request fields, JSON error answers.

Split from ``app.py`` so the routes there read as the service they are; everything here turns
untrusted request parts into checked values or a 4xx ``HTTPException`` naming the problem.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .catalog import ALL
from .store import check_name

MAX_TOP_K = 1000


class TooLarge(HTTPException):
    """The request body is bigger than ``--max-upload-mb``."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body is larger than this server's limit of {limit:,} bytes "
            "(--max-upload-mb)",
        )  # fmt: skip


class BodyLimit:
    """ASGI middleware: refuse bodies above ``limit`` bytes, by Content-Length when it is sent
    and by counting when it is not (chunked), before anything is parsed or spooled."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(413, str(TooLarge(self.limit).detail))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


def task_names(tasks: Any) -> list[str]:
    if tasks is None:
        return [ALL]
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise HTTPException(422, '"tasks" must be a name, "a,b", a list of names, or "all"')
    names = [t.strip() for t in tasks if t.strip()]
    if not names:
        raise HTTPException(422, 'no task named: pass "tasks" (a name, "a,b" or "all")')
    return names


def parse_top_k(value: Any, default: int) -> int:
    """``top_k`` from a form string or a JSON number: a whole number in 1..MAX_TOP_K.

    A string is checked to be a few ASCII digits before ``int()`` sees it: ``int()`` raises on
    5,000 digits (Python's conversion limit) and on digits such as ``"²"`` that ``isdigit``
    accepts; the error quotes at most a short prefix of what was sent.
    """
    if value is None or value == "":
        return default
    if isinstance(value, str):
        text = value.strip()
        whole = text.isascii() and text.isdigit() and len(text) <= len(str(MAX_TOP_K))
        number = int(text) if whole else 0
    else:
        whole = isinstance(value, int) and not isinstance(value, bool)
        number = value if whole and 1 <= value <= MAX_TOP_K else 0
    if not 1 <= number <= MAX_TOP_K:
        raise HTTPException(
            422, f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {_shown(value)}"
        )
    return number


def _shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (a huge int's repr itself can raise)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return "a number with more digits than any top_k"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def path_name(request: Request) -> str:
    name = request.path_params["name"]
    try:
        return check_name(name)
    except ValueError as e:
        raise HTTPException(422, str(e)) from e
