"""The HTTP service: Starlette routes over a :class:`Catalog` and a :class:`Batcher`.

Routes (all answers JSON, errors ``{"error": message, "status": code}``):

- ``POST /v1/predict``: images (multipart files, or JSON ``{"images": [base64, ...]}``), the
  tasks to answer (``tasks``: one name, several comma-separated, or ``all``; default all) and
  ``top_k``; one row per image and task joins the shared queue.
- ``GET /v1/tasks``; ``PUT /v1/tasks/NAME`` (JSON ``{"run": RUN_DIR}`` or ``{}`` to (re)load the
  registry's entry) and ``DELETE /v1/tasks/NAME``, with ``Authorization: Bearer TOKEN``.
- ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /`` (the web page).

Reading and checking the request itself (body limit, fields, error answers) is in ``requests.py``.
The event loop only parses and routes: decoding and preprocessing run on a thread pool, forward
passes on the batcher's model thread, task loading on Starlette's thread pool.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..data import build_eval_transform
from .batcher import Batcher, ModelStopped, Overloaded
from .catalog import Catalog, TaskUnavailable, TaskVersion, TooManyTasks, UnknownTask
from .config import ServeConfig
from .images import BadImage, from_base64, preprocess
from .metrics import ServeMetrics
from .multitask import top_k
from .requests import (
    CLOSE,
    BodyLimit,
    HostCheck,
    error_response,
    http_error,
    internal_error,
    parse_json_body,
    parse_top_k,
    path_name,
    read_multipart,
    task_names,
)

_log = logging.getLogger(__name__)


class Service:
    """What the routes share: settings, tasks, queue, metrics and the decode threads."""

    def __init__(self, catalog: Catalog, config: ServeConfig, admin_token: str | None) -> None:
        self.catalog, self.config, self.admin_token = catalog, config, admin_token or None
        self.metrics = ServeMetrics()
        b = catalog.backbone
        self.transform = build_eval_transform(
            b["img_size"], b["mean"], b["std"], b["interpolation"]
        )
        self.batcher = Batcher(
            catalog.model,
            catalog.device,
            max_batch=config.max_batch_size,
            max_wait=config.max_wait_ms / 1000,
            max_queue=config.max_queue,
            mode=config.batching,  # type: ignore[arg-type]
            on_batch=self.metrics.observe_batch,
            on_done=catalog.release,
            model_lock=catalog.model_lock,
            coming=lambda: self.preparing,
            compile=config.compile,
        )
        self.decoder = ThreadPoolExecutor(config.decode_threads, "adaptformer-decode")
        # Requests whose tasks must be loaded wait here (a thread each, blocked on the
        # catalog's condition; at most --max-queue requests are in progress).
        self.pager = ThreadPoolExecutor(config.max_queue, "adaptformer-page")
        self.active = 0  # /v1/predict requests being handled
        self.preparing = 0  # ... of which not yet queued (read, decoded): worth a batch's wait
        self.reading = 0  # ... of which the body is still arriving
        self.uploads: collections.Counter[str] = collections.Counter()  # reading, per address
        self.draining = False
        self.metrics.tasks.set(len(catalog.list()))
        self.metrics.watch_residents(catalog.residents)
        self.metrics.queue_depth.set_function(self.batcher.depth)
        self.metrics.reading.set_function(lambda: self.reading)

    # -- predict ----------------------------------------------------------------------------------
    async def predict(self, request: Request) -> Response:
        start = time.perf_counter()
        address = request.client.host if request.client else "unknown"
        refused = self._refusal(address)
        if refused is not None:
            return self._count(refused)
        self.active += 1
        try:
            self.preparing += 1
            try:
                images, versions, tensors, top_k = await self._prepare(request, address)
            finally:  # no await until submit: the batcher never sees this request twice
                self.preparing -= 1
            try:
                futures = self.batcher.submit([(x, v.adapter) for x in tensors for v in versions])
            except BaseException:
                self.catalog.release_versions(versions, len(images), pinned=True)
                raise
            logits = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
            response = self._answer(images, versions, logits, top_k, start)
        except HTTPException as e:
            response = error_response(e.status_code, str(e.detail), dict(e.headers or {}))
        except BadImage as e:
            response = error_response(e.status, str(e))
        except (UnknownTask, TooManyTasks) as e:
            response = error_response(422, str(e))
        except TaskUnavailable as e:
            again = {} if e.retry_after is None else {"Retry-After": str(e.retry_after)}
            response = error_response(503, str(e), again)
        except Overloaded as e:
            response = error_response(503, str(e), {"Retry-After": str(e.retry_after)})
        except ClientDisconnect:
            response = client_gone(request)
        except Exception as e:  # answer, log, and keep serving the others
            _log.exception("a /v1/predict request failed")
            response = error_response(500, f"internal error: {type(e).__name__}: {e}")
        finally:
            self.active -= 1
        return self._count(response)

    def _refusal(self, address: str) -> Response | None:
        """The answer to a request that cannot be taken now (every slot is taken, or its client
        address has as many uploads in progress as it may), or None."""
        again = {"Retry-After": "1", **CLOSE}  # its body is not read: close the connection
        n, cap = self.config.max_queue, self.config.max_uploads_per_client
        if self.active >= n:
            message = f"too many requests in progress ({self.active}; --max-queue {n})"
            return error_response(503, message, again)
        if cap and self.uploads[address] >= cap:
            message = (
                f"{address} already has {cap} uploads in progress, this server's limit per client "
                "address (--max-uploads-per-client)"
            )
            return error_response(429, message, again)
        return None

    def _count(self, response: Response) -> Response:
        self.metrics.requests.labels(str(response.status_code)).inc()
        return response

    async def _prepare(
        self, request: Request, address: str
    ) -> tuple[list[tuple[str, bytes]], list[TaskVersion], list[torch.Tensor], int]:
        """Read the request, take its task versions, decode its images on the decode threads,
        then pin its versions in memory (loading those that are not): the versions returned
        hold its rows until :meth:`Catalog.release`."""
        self.reading += 1
        self.uploads[address] += 1
        try:
            images, tasks, top_k = await self._read(request)
        finally:  # the slot is back however the reading ended (408, 413, a client gone)
            self.reading -= 1
            self.uploads[address] -= 1
            if not self.uploads[address]:
                del self.uploads[address]
        versions = self.catalog.checkout(tasks, rows_each=len(images))
        try:
            loop = asyncio.get_running_loop()
            jobs = [
                loop.run_in_executor(
                    self.decoder,
                    preprocess,
                    data,
                    f"image {i} ({name})" if name else f"image {i}",
                    self.transform,
                    self.config.max_pixels,
                )
                for i, (name, data) in enumerate(images)
            ]
            tensors = await asyncio.gather(*jobs)
        except BaseException:
            self.catalog.release_versions(versions, len(images))
            raise
        versions = await self._resident(versions, len(images))
        return images, versions, tensors, top_k

    async def _resident(self, versions: list[TaskVersion], rows_each: int) -> list[TaskVersion]:
        """``versions`` pinned in memory; tasks out of memory are loaded on the pager threads
        (never on the event loop, never on the model thread). Releases the checkout on error."""
        if self.catalog.pin(versions, rows_each):
            return versions
        future = self.pager.submit(
            self.catalog.acquire, versions, rows_each, self.config.resident_wait
        )
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client is gone; the loading thread finishes alone
            future.add_done_callback(functools.partial(_abandon, self.catalog, versions, rows_each))
            raise

    def _answer(
        self,
        images: list[tuple[str, bytes]],
        versions: list[TaskVersion],
        logits: list[torch.Tensor],
        top_k: int,
        start: float,
    ) -> Response:
        seconds = time.perf_counter() - start
        results, failed = [], []
        rows = iter(logits)  # submitted image-major: image 0's tasks, then image 1's, ...
        for i, (name, _) in enumerate(images):
            answers = {v.name: _top(next(rows), v, top_k) for v in versions}
            failed += [f"{a['error']} (image {i})" for a in answers.values() if "error" in a]
            results.append({"image": i, "filename": name, "tasks": answers})
        total = len(images) * len(versions)
        if failed:
            _log.warning("%d of %d answers were not finite: %s", len(failed), total, failed[0])
        if len(failed) == total:  # nothing to answer with
            return error_response(500, failed[0])
        for v in versions:
            self.metrics.rows.labels(v.name).inc(len(images))
            self.metrics.latency.labels(v.name).observe(seconds)
        return JSONResponse({"results": results, "seconds": round(seconds, 6)})

    async def _read(self, request: Request) -> tuple[list[tuple[str, bytes]], list[str], int]:
        """(filename, bytes) per image, task names and top_k from a multipart or JSON body."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        n = self.config.max_images
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            reader = (
                read_multipart(request, max_files=n, max_fields=16)
                if kind == "multipart/form-data"
                else request.form(max_files=n, max_fields=16)
            )
            form = await reader
            try:
                images = []
                for _, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        images.append((value.filename or "", await value.read()))
                tasks_field = [v for v in form.getlist("tasks") if isinstance(v, str)]
                tasks: Any = ",".join(tasks_field) if tasks_field else None
                top_k: Any = form.get("top_k")
            finally:
                await form.close()  # its spooled files
        elif kind == "application/json":
            body = parse_json_body(await request.body())
            if not isinstance(body, dict) or not isinstance(body.get("images"), list):
                raise HTTPException(
                    422, 'the JSON body must be an object with "images": [base64 strings]'
                )
            if len(body["images"]) > n:
                raise HTTPException(413, f"{len(body['images'])} images; at most {n} a request")
            images = [("", from_base64(b, f"image {i}")) for i, b in enumerate(body["images"])]
            tasks, top_k = body.get("tasks"), body.get("top_k")
        else:
            raise HTTPException(
                415, f"send multipart/form-data (image files) or application/json (base64 "
                f"images), not {kind or 'no content type'!r}",
            )  # fmt: skip
        if not images:
            raise HTTPException(422, "the request holds no image")
        return images, task_names(tasks), parse_top_k(top_k, self.config.top_k)

    # -- tasks ------------------------------------------------------------------------------------
    def _is_admin(self, request: Request) -> bool:
        """The request carries the admin token (compared in constant time)."""
        if self.admin_token is None:
            return False
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.admin_token.encode()
        )

    def _check_admin(self, request: Request) -> None:
        if self.admin_token is None:
            raise HTTPException(
                403, "task changes are disabled: start the server with ADAPTFORMER_ADMIN_TOKEN "
                "set (or --admin-token-file FILE)",
            )  # fmt: skip
        if not self._is_admin(request):
            raise HTTPException(
                401, "send the admin token as 'Authorization: Bearer TOKEN'",
                {"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    async def put_task(self, request: Request) -> Response:
        self._check_admin(request)
        name = path_name(request)
        raw = await request.body()
        body = parse_json_body(raw) if raw.strip() else {}
        if not isinstance(body, dict) or set(body) - {"run"}:
            raise HTTPException(
                422, 'the body is {"run": "RUN_DIR"} (a run folder to register and serve) or '
                "empty (serve the registry's entry)",
            )  # fmt: skip
        run = body.get("run")
        if run is not None and not isinstance(run, str):
            raise HTTPException(422, '"run" must be a path string')
        try:
            version = await run_in_threadpool(self.catalog.put, name, run)
        except UnknownTask as e:
            raise HTTPException(404, str(e)) from e
        except (ValueError, FileNotFoundError, OSError) as e:
            old = {v.name: v.version for v in self.catalog.list()}.get(name)
            keep = f"; version {old} keeps serving" if old else ""
            raise HTTPException(422, f"task {name!r} was not loaded: {e}{keep}") from e
        self.metrics.tasks.set(len(self.catalog.list()))
        return JSONResponse(version.describe())

    async def delete_task(self, request: Request) -> Response:
        self._check_admin(request)
        name = path_name(request)
        try:
            old = await run_in_threadpool(self.catalog.remove, name)
        except UnknownTask as e:
            raise HTTPException(404, str(e)) from e
        self.metrics.tasks.set(len(self.catalog.list()))
        return JSONResponse({"removed": old.name, "version": old.version})

    async def list_tasks(self, request: Request) -> Response:
        """The served tasks; the folders they were read from (server paths) only for the admin
        token."""
        tasks = [v.describe() for v in self.catalog.list()]
        if not self._is_admin(request):
            tasks = [{k: v for k, v in t.items() if k != "source"} for t in tasks]
        return JSONResponse(
            {
                "backbone": {k: self.catalog.backbone.get(k) for k in ("model", "img_size")},
                "tasks": tasks,
            }
        )

    # -- operations -------------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        """200 ``ok``, or 503 with a ``reason`` when a new request would not be answered."""
        body: dict[str, Any] = {
            "status": "ok",
            "tasks": len(self.catalog.list()),
            "queue": self.batcher.depth(),
            "preparing": self.preparing,
            "reading": self.reading,
        }
        if self.catalog.paged:  # tasks in memory, and the most the budget allows
            r = self.catalog.residents()
            body["resident"] = {"tasks": r.tasks, "max_tasks": r.budget.max_tasks,
                                "bytes": r.nbytes, "max_bytes": r.budget.max_bytes}  # fmt: skip
        if self.catalog.skipped:  # registry tasks not loaded at start-up (broken files) -> why
            body["skipped"] = self.catalog.skipped
        status, reason = self._unhealthy()
        if status:
            body.update(status=status, reason=reason)
        return JSONResponse(body, status_code=503 if status else 200)

    def _unhealthy(self) -> tuple[str, str]:
        """(status, reason) of what stops this server from answering, or ("", "")."""
        if self.batcher.failure is not None:
            return "failing", str(ModelStopped(self.batcher.failure))
        if self.draining:
            return "draining", "the server is shutting down"
        n = self.config.max_queue
        if self.active >= n:
            return "saturated", (
                f"all request slots are taken ({self.active} of {n}, --max-queue; "
                f"{self.reading} of them still receiving their body): new requests get 503"
            )
        return "", ""

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def index(self, request: Request) -> Response:
        page = resources.files("adaptformer.serving").joinpath("static", "index.html")
        return HTMLResponse(page.read_text(encoding="utf-8"))

    def begin_drain(self) -> None:
        """A shutdown began: /healthz says so (load balancers stop sending) and queued rows run
        without waiting for fuller batches."""
        self.draining = True
        self.batcher.hurry()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.batcher.start()
        _log.info(
            "serving %d task(s) of %s: batching %s, max batch %d, max wait %g ms",
            len(self.catalog.list()),
            self.catalog.registry.root,
            self.config.batching,
            self.config.max_batch_size,
            self.config.max_wait_ms,
        )
        if self.catalog.paged:
            _log.info("tasks are loaded on demand and kept within %s (--resident-wait %g s)",
                      self.catalog.budget.describe(), self.config.resident_wait)  # fmt: skip
        try:
            yield
        finally:  # the server stops here only after answering the requests in flight
            self.draining = True
            await run_in_threadpool(self.batcher.stop)
            self.decoder.shutdown(wait=True)
            self.pager.shutdown(wait=True)
            _log.info("drained: every queued request was answered")


def _abandon(
    catalog: Catalog,
    versions: list[TaskVersion],
    rows_each: int,
    future: concurrent.futures.Future,
) -> None:
    """Undo what a request whose client left got: the pins :meth:`Catalog.acquire` took for
    it, or its checkout if the acquire never ran (an acquire that failed released it)."""
    if future.cancelled():
        catalog.release_versions(versions, rows_each)
    elif future.exception() is None:
        catalog.release_versions(future.result(), rows_each, pinned=True)


def client_gone(request: Request) -> Response:
    """A client closed its connection while its body was being read: a client abort, not a
    server error. One INFO line; the 499 (nginx's code for it) is for the metrics only."""
    address = request.client.host if request.client else "unknown"
    _log.info(
        "%s %s: client %s closed the connection while its request body was being read",
        request.method, request.url.path, address,
    )  # fmt: skip
    return error_response(499, "the client closed the connection")


async def _client_gone(request: Request, exc: Exception) -> Response:
    return client_gone(request)


def _top(logits: torch.Tensor, version: TaskVersion, k: int) -> dict[str, Any]:
    """One task's answer for one image: its top ``k`` labels, or an ``error`` if its scores are
    not finite (overflowing weights): then only this answer fails, never the whole JSON."""
    top = top_k(logits, k, version.multilabel) if torch.isfinite(logits).all() else []
    if not top or not all(math.isfinite(p) for _, p in top):
        return {
            "version": version.version,
            "error": f"task {version.name!r} gave non-finite scores (inf or nan): its weights "
            "overflow; ask the server's admin to replace it",
        }
    return {
        "version": version.version,
        "top": [{"label": version.classes[i], "index": i, "prob": p} for i, p in top],
    }


def create_app(
    catalog: Catalog, config: ServeConfig | None = None, admin_token: str | None = None
) -> Starlette:
    """The ASGI application serving ``catalog``'s tasks (its batcher starts with the app).

    Args:
        catalog: the tasks and the model (:meth:`Catalog.from_registry`).
        config: batching, limits (host/port/device are the caller's business).
        admin_token: the bearer token for task changes; None disables them.
    """
    service = Service(catalog, config or ServeConfig(), admin_token)
    app = Starlette(
        routes=[
            Route("/", service.index, methods=["GET"]),
            Route("/healthz", service.healthz, methods=["GET"]),
            Route("/metrics", service.metrics_text, methods=["GET"]),
            Route("/v1/predict", service.predict, methods=["POST"]),
            Route("/v1/tasks", service.list_tasks, methods=["GET"]),
            Route("/v1/tasks/{name}", service.put_task, methods=["PUT"]),
            Route("/v1/tasks/{name}", service.delete_task, methods=["DELETE"]),
        ],
        exception_handlers={
            HTTPException: http_error,
            ClientDisconnect: _client_gone,
            Exception: internal_error,
        },
        lifespan=service.lifespan,
    )
    app.state.service = service
    c = service.config
    app.add_middleware(
        BodyLimit, limit=c.max_upload_bytes, timeout=c.body_timeout, rate=c.min_upload_rate * 1024
    )
    app.add_middleware(HostCheck, hosts=c.hosts)  # the outermost: checked before anything else
    return app


def serve(
    registry: Any,
    config: ServeConfig | None = None,
    names: Sequence[str] | None = None,
    admin_token: str | None = None,
) -> None:
    """Load ``registry``'s tasks (or ``names``) and serve them until SIGTERM/SIGINT.

    On SIGTERM the server stops accepting connections, answers every request in flight, then
    returns.

    Args:
        registry: a :class:`adaptformer.TaskRegistry` (or its folder).
        config: listening address, device, batching and limits.
        names: serve only these tasks (default: all of the registry's).
        admin_token: the bearer token for hot task changes (None: changes disabled).
    """
    import uvicorn

    from ..utils.distributed import resolve_device
    from .store import TaskRegistry

    config = config or ServeConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    if not isinstance(registry, TaskRegistry):
        registry = TaskRegistry(registry)
    catalog = Catalog.from_registry(
        registry, names, resolve_device(config.device), config.budget, config.load_threads
    )
    app = create_app(catalog, config, admin_token)
    service: Service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            service.begin_drain()
            super().handle_exit(sig, frame)

    if config.hosts == ["*"]:
        _log.info("answering any Host header: list the names clients use with --allowed-hosts")
    Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            http=json_h11_protocol(head_timeout=config.body_timeout),
            log_level="info",
            timeout_graceful_shutdown=None,  # wait for every request in flight
            lifespan="on",
        )
    ).run()


def json_h11_protocol(head_timeout: float = math.inf) -> type:
    """uvicorn's h11 protocol, with two changes for hostile clients:

    - a request that does not parse as HTTP (a bad request line, header or Content-Length) is
      answered with the server's JSON error instead of plain text;
    - a request head (request line and headers) must arrive within ``head_timeout`` seconds
      of the connection or of the previous answer, else the connection is closed: uvicorn has
      no such limit, so a client sending headers a byte at a time would hold its connection
      for ever (the body has its own deadline, :class:`~.requests.BodyLimit`).
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self._head_timer is None:
                self._arm_head_timer()
            super().data_received(data)

        def _arm_head_timer(self) -> None:
            if math.isfinite(head_timeout):
                waiting = self.cycle  # a new request head replaces it
                self._head_timer = self.loop.call_later(head_timeout, self._head_late, waiting)

        def _head_late(self, waiting: object) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is waiting:  # no request head came in time
                _log.info("closed a connection whose request head did not arrive within "
                          "--body-timeout %g s", head_timeout)  # fmt: skip
                self.transport.close()
            elif self.cycle.response_complete:  # answered since: time the next head
                self._arm_head_timer()

        def send_400_response(self, msg: str) -> None:
            body = json.dumps(
                {"error": f"invalid HTTP request: {msg.rstrip('.')}", "status": 400}
            ).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol
