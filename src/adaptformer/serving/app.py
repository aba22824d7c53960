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
import contextlib
import hmac
import json
import logging
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
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..data import build_eval_transform
from .batcher import Batcher, Overloaded
from .catalog import Catalog, TaskVersion, UnknownTask
from .config import ServeConfig
from .images import BadImage, from_base64, preprocess
from .metrics import ServeMetrics
from .multitask import top_k
from .requests import BodyLimit, error_response, http_error, parse_top_k, path_name, task_names

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
        )
        self.decoder = ThreadPoolExecutor(config.decode_threads, "adaptformer-decode")
        self.active = 0  # /v1/predict requests being handled
        self.preparing = 0  # ... of which not yet queued (read, decoded): worth a batch's wait
        self.draining = False
        self.metrics.tasks.set(len(catalog.list()))
        self.metrics.queue_depth.set_function(self.batcher.depth)

    # -- predict ----------------------------------------------------------------------------------
    async def predict(self, request: Request) -> Response:
        start = time.perf_counter()
        if self.active >= self.config.max_queue:
            return self._count(
                error_response(503, "too many requests in progress", {"Retry-After": "1"})
            )
        self.active += 1
        try:
            self.preparing += 1
            try:
                images, versions, tensors, top_k = await self._prepare(request)
            finally:  # no await until submit: the batcher never sees this request twice
                self.preparing -= 1
            try:
                futures = self.batcher.submit([(x, v.adapter) for x in tensors for v in versions])
            except BaseException:
                self.catalog.release_versions(versions, len(images))
                raise
            logits = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
            response = self._answer(images, versions, logits, top_k, start)
        except HTTPException as e:
            response = error_response(e.status_code, str(e.detail), dict(e.headers or {}))
        except BadImage as e:
            response = error_response(e.status, str(e))
        except UnknownTask as e:
            response = error_response(422, str(e))
        except Overloaded as e:
            response = error_response(503, str(e), {"Retry-After": str(e.retry_after)})
        except Exception as e:  # answer, log, and keep serving the others
            _log.exception("a /v1/predict request failed")
            response = error_response(500, f"internal error: {type(e).__name__}: {e}")
        finally:
            self.active -= 1
        return self._count(response)

    def _count(self, response: Response) -> Response:
        self.metrics.requests.labels(str(response.status_code)).inc()
        return response

    async def _prepare(
        self, request: Request
    ) -> tuple[list[tuple[str, bytes]], list[TaskVersion], list[torch.Tensor], int]:
        """Read the request, take its task versions, decode its images on the decode threads."""
        images, tasks, top_k = await self._read(request)
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
        return images, versions, tensors, top_k

    def _answer(
        self,
        images: list[tuple[str, bytes]],
        versions: list[TaskVersion],
        logits: list[torch.Tensor],
        top_k: int,
        start: float,
    ) -> Response:
        seconds = time.perf_counter() - start
        results = []
        rows = iter(logits)  # submitted image-major: image 0's tasks, then image 1's, ...
        for i, (name, _) in enumerate(images):
            answers = {v.name: _top(next(rows), v, top_k) for v in versions}
            results.append({"image": i, "filename": name, "tasks": answers})
        for v in versions:
            self.metrics.rows.labels(v.name).inc(len(images))
            self.metrics.latency.labels(v.name).observe(seconds)
        return JSONResponse({"results": results, "seconds": round(seconds, 6)})

    async def _read(self, request: Request) -> tuple[list[tuple[str, bytes]], list[str], int]:
        """(filename, bytes) per image, task names and top_k from a multipart or JSON body."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        n = self.config.max_images
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            async with request.form(max_files=n, max_fields=16) as form:  # closes spooled files
                images = []
                for _, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        images.append((value.filename or "", await value.read()))
                tasks_field = [v for v in form.getlist("tasks") if isinstance(v, str)]
                tasks: Any = ",".join(tasks_field) if tasks_field else None
                top_k: Any = form.get("top_k")
        elif kind == "application/json":
            try:
                body = json.loads(await request.body())
            except (ValueError, RecursionError) as err:  # RecursionError: '[' * 200000
                raise HTTPException(400, f"malformed JSON body: {err}") from err
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
    def _check_admin(self, request: Request) -> None:
        if self.admin_token is None:
            raise HTTPException(
                403, "task changes are disabled: start the server with ADAPTFORMER_ADMIN_TOKEN "
                "set (or --admin-token-file FILE)",
            )  # fmt: skip
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.admin_token.encode()
        ):
            raise HTTPException(
                401, "send the admin token as 'Authorization: Bearer TOKEN'",
                {"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    async def put_task(self, request: Request) -> Response:
        self._check_admin(request)
        name = path_name(request)
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError) as err:  # RecursionError: '[' * 200000
            raise HTTPException(400, f"malformed JSON body: {err}") from err
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
        return JSONResponse(
            {
                "backbone": {k: self.catalog.backbone.get(k) for k in ("model", "img_size")},
                "tasks": [v.describe() for v in self.catalog.list()],
            }
        )

    # -- operations -------------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        status = "draining" if self.draining else "ok"
        return JSONResponse(
            {
                "status": status,
                "tasks": len(self.catalog.list()),
                "queue": self.batcher.depth(),
                "preparing": self.preparing,
                # registry tasks not loaded at start-up (broken files) -> why
                **({"skipped": self.catalog.skipped} if self.catalog.skipped else {}),
            },
            status_code=503 if self.draining else 200,
        )

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
        try:
            yield
        finally:  # the server stops here only after answering the requests in flight
            self.draining = True
            await run_in_threadpool(self.batcher.stop)
            self.decoder.shutdown(wait=True)
            _log.info("drained: every queued request was answered")


def _top(logits: torch.Tensor, version: TaskVersion, k: int) -> dict[str, Any]:
    return {
        "version": version.version,
        "top": [
            {"label": version.classes[i], "index": i, "prob": p}
            for i, p in top_k(logits, k, version.multilabel)
        ],
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
        exception_handlers={HTTPException: http_error},
        lifespan=service.lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimit, limit=service.config.max_upload_bytes)
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
    catalog = Catalog.from_registry(registry, names, resolve_device(config.device))
    app = create_app(catalog, config, admin_token)
    service: Service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            service.begin_drain()
            super().handle_exit(sig, frame)

    Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            timeout_graceful_shutdown=None,  # wait for every request in flight
            lifespan="on",
        )
    ).run()
