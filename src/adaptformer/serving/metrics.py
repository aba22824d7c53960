"""Prometheus metrics of one server, in a registry of its own (two apps in one process, as in
the tests, must not share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .batcher import BatchStats

# Seconds: a 1 ms cache hit up to a 30 s pass of a large batch of 224 px images on a CPU.
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Requests, rows per task, batch sizes, queue depth and latency histograms."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "adaptformer_requests", "HTTP requests to /v1/predict by status code", ["status"],
            registry=r,
        )  # fmt: skip
        self.rows = Counter("adaptformer_rows", "images answered, per task", ["task"], registry=r)
        self.latency = Histogram(
            "adaptformer_latency_seconds",
            "per task: seconds from a request's arrival to its answer",
            ["task"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_wait = Histogram(
            "adaptformer_queue_wait_seconds",
            "seconds a row waited in the queue before its forward pass",
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            "adaptformer_batch_size", "rows per forward pass", buckets=_SIZES, registry=r
        )
        self.batch_tasks = Histogram(
            "adaptformer_batch_tasks", "distinct task versions per forward pass", buckets=_SIZES,
            registry=r,
        )  # fmt: skip
        self.forward = Histogram(
            "adaptformer_forward_seconds", "seconds per forward pass", buckets=_LATENCY, registry=r
        )
        self.queue_depth = Gauge(
            "adaptformer_queue_depth", "rows waiting for a forward pass", registry=r
        )
        self.tasks = Gauge("adaptformer_tasks", "tasks served", registry=r)
        self.reading = Gauge(
            "adaptformer_requests_reading",
            "/v1/predict requests whose body is still arriving (slow uploads show here)",
            registry=r,
        )

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_tasks.observe(stats.tasks)
        self.forward.observe(stats.seconds)
        for w in stats.waited:
            self.queue_wait.observe(w)

    def render(self) -> bytes:
        return generate_latest(self.registry)
