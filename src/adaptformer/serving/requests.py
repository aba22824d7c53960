"""Reading HTTP requests safely: the body-size limit, request fields, JSON error answers.

Split from ``app.py`` so the routes there read as the service they are; everything here turns
untrusted request parts into checked values or a 4xx ``HTTPException`` naming the problem.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..utils.files import loads_json
from .catalog import ALL
from .store import check_name

MAX_TOP_K = 1000


# An answer sent before the body was read in full closes the connection: what is left of the
# body would otherwise be read as the next request (h11 keeps a half-read connection open).
CLOSE = {"Connection": "close"}
_CLOSE_HEADER = (b"connection", b"close")


class TooLarge(HTTPException):
    """The request body is bigger than ``--max-upload-mb``."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body is larger than this server's limit of {limit:,} bytes "
            "(--max-upload-mb)", CLOSE,
        )  # fmt: skip


class TooSlow(HTTPException):
    """The request body did not arrive by its deadline (``--body-timeout``, extended by what
    its bytes earn at ``--min-upload-rate``)."""

    def __init__(self, received: int, seconds: float, timeout: float, rate_kib: float) -> None:
        super().__init__(
            408, f"the request body did not arrive in time ({received:,} bytes in {seconds:.1f} "
            f"s): this server allows --body-timeout {timeout:g} s plus 1 s per {rate_kib:g} KiB "
            f"received (--min-upload-rate {rate_kib:g} KiB/s)", CLOSE,
        )  # fmt: skip


class BodyLimit:
    """ASGI middleware bounding how a request body is read, before anything is parsed or spooled:

    - size: refused above ``limit`` bytes, by Content-Length when it is sent and by counting
      when it is not (chunked);
    - time: the body must be complete ``timeout`` seconds after the request began, plus
      ``1 / rate`` seconds per byte received (Apache's ``mod_reqtimeout`` rule). Each read waits
      only until that deadline, so a client that sends headers and then nothing, or a byte now
      and then, gets 408 and frees its slot, while a large upload at ``rate`` always finishes.

    Reads after the body is complete (waiting for a disconnect) are passed through untouched;
    an answer that starts before the body is complete (an error) closes the connection.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float = math.inf, rate: float = 0.0):
        self.app, self.limit, self.timeout, self.rate = app, limit, timeout, rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        too_long = declared is not None and declared.isdigit() and len(declared) > 18
        if too_long or (declared is not None and declared.isdigit() and int(declared) > self.limit):
            await error_response(413, str(TooLarge(self.limit).detail), CLOSE)(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        began, seen = loop.time(), 0
        complete = b"transfer-encoding" not in headers and declared in (None, b"0")  # no body

        def late() -> TooSlow:
            return TooSlow(seen, loop.time() - began, self.timeout, self.rate / 1024)

        async def bounded() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()
            earned = seen / self.rate if self.rate > 0 else 0.0
            left = began + self.timeout + earned - loop.time()
            if left <= 0:
                raise late()
            try:
                # a cancel scope, not asyncio.wait_for: no task per read, and no pause when the
                # body is already here (a burst of requests does not pile up in this stage)
                with anyio.fail_after(left if left < math.inf else None):
                    message = await receive()
            except TimeoutError:
                raise late() from None
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge(self.limit)
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def closing(message: Message) -> None:
            start = message["type"] == "http.response.start"
            if start and not complete and _CLOSE_HEADER not in message.get("headers", []):
                # answered before the body was read in full (an error): close the connection
                message = {**message, "headers": [*message.get("headers", []), _CLOSE_HEADER]}
            await send(message)

        await self.app(scope, bounded, closing)


class HostCheck:
    """ASGI middleware: answer only requests whose Host header is one of ``hosts`` (400
    otherwise), so a web page whose name was rebound to this address cannot read the API.

    ``*`` accepts any host and ``*.example.org`` any subdomain, as in Starlette's
    ``TrustedHostMiddleware``, whose plain-text refusal this replaces with the JSON one.
    """

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app, self.hosts = app, hosts
        self.any = "*" in hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] != "http":  # (no WebSocket routes: Starlette refuses them)
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self.allowed(host_name(raw)):
            await self.app(scope, receive, send)
            return
        message = (
            f"this server does not answer for host {raw[:100]!r}: it answers "
            f"{', '.join(self.hosts)}; to add a name, start it with --allowed-hosts"
        )
        await error_response(400, message, CLOSE)(scope, receive, send)

    def allowed(self, name: str) -> bool:
        return any(
            name == h or (h.startswith("*.") and name.endswith(h[1:]) and len(name) > len(h) - 1)
            for h in self.hosts
        )


def host_name(header: str) -> str:
    """The name of a Host header, without port, brackets, trailing dot or case:
    ``[::1]:8000`` -> ``::1``, ``Example.org.:80`` -> ``example.org``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.partition(":")[0].rstrip(".")


class _Multipart(MultiPartParser):
    """Starlette's multipart parser, noting whether the closing boundary was reached."""

    ended = False

    def on_end(self) -> None:
        self.ended = True


async def read_multipart(request: Request, max_files: int, max_fields: int) -> FormData:
    """The form of a multipart body; a body that does not parse, or that stops before its
    closing boundary (a truncated upload), is a 400 saying it is malformed.

    The caller closes the form (its spooled files).
    """
    parser = _Multipart(request.headers, request.stream(), max_files=max_files,
                        max_fields=max_fields)  # fmt: skip
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise HTTPException(400, f"malformed multipart body: {err.message}") from err
    if not parser.ended:
        await form.close()
        boundary = parse_options_header(request.headers.get("content-type", ""))[1].get(
            b"boundary", b""
        )
        raise HTTPException(
            400, "malformed multipart body: it ends before its closing boundary "
            f"(--{boundary.decode('latin-1')[:70]}--): a truncated upload?",
        )  # fmt: skip
    return form


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def internal_error(request: Request, exc: Exception) -> Response:
    """The last resort (Starlette logs the traceback): a JSON 500, not a plain-text one."""
    return error_response(500, f"internal error: {type(exc).__name__}")


MAX_NUMBER_DIGITS = 100


def parse_json_body(raw: bytes) -> Any:
    """A JSON request body, or a 400 naming what is wrong with it: read by the same reader as
    every JSON file (:func:`adaptformer.utils.files.loads_json`: nesting at most 64 deep), with
    numbers bounded at :data:`MAX_NUMBER_DIGITS` digits (``json`` would otherwise raise advice
    about ``sys.set_int_max_str_digits``)."""
    try:
        return loads_json(raw, "it", max_digits=MAX_NUMBER_DIGITS)
    except ValueError as err:
        raise HTTPException(400, f"malformed JSON body: {str(err)[:200]}") from err


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
