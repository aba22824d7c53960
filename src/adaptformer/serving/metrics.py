"""Prometheus metrics of one server, in a registry of its own (two apps in one process, as in
the tests, must not share counters)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .batcher import BatchStats
from .catalog import Residents
from .paging import LOAD_BUCKETS

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

    def watch_residents(self, residents: Callable[[], Residents]) -> None:
        """Export what :meth:`Catalog.residents` says at each scrape (tasks in memory, loads,
        evictions, load times, the budget)."""
        self.registry.register(_ResidentsCollector(residents))

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_tasks.observe(stats.tasks)
        self.forward.observe(stats.seconds)
        for w in stats.waited:
            self.queue_wait.observe(w)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ResidentsCollector:
    """Reads the catalog's residency at scrape time: the catalog counts loads and evictions
    itself (from before the app existed, too), so nothing has to be kept in step."""

    def __init__(self, residents: Callable[[], Residents]) -> None:
        self.residents = residents

    def describe(self) -> list[Metric]:
        return []  # names are checked at scrape time; nothing clashes with the fixed metrics

    def collect(self) -> Iterator[Metric]:
        r = self.residents()
        gauges = [
            ("adaptformer_resident_tasks", "tasks whose adapter is in memory", r.tasks),
            ("adaptformer_resident_adapter_bytes", "bytes of the adapter and head tensors in "
             "memory", r.nbytes),
            ("adaptformer_resident_tasks_peak", "most tasks in memory (or being loaded) at once "
             "since start", r.peak_tasks),
            ("adaptformer_resident_adapter_bytes_peak", "most adapter bytes in memory (or being "
             "loaded) at once since start", r.peak_bytes),
            ("adaptformer_tasks_loading", "tasks being loaded now", r.loading),
            ("adaptformer_resident_budget_tasks", "--max-resident-tasks (0: no limit)",
             r.budget.max_tasks),
            ("adaptformer_resident_budget_bytes", "--adapter-memory in bytes (0: no limit)",
             r.budget.max_bytes),
        ]  # fmt: skip
        for name, text, value in gauges:
            yield GaugeMetricFamily(name, text, value=value)
        loads = CounterMetricFamily(
            "adaptformer_task_loads",
            "tasks put in memory, by kind: refill (copied into an evicted adapter of the same "
            "shape) or new (adapter modules built)",
            labels=["kind"],
        )
        for kind, n in sorted(r.stats.loads.items()):
            loads.add_metric([kind], n)
        yield loads
        yield CounterMetricFamily(
            "adaptformer_task_load_failures", "task loads refused (files damaged or changed)",
            value=r.stats.failures,
        )  # fmt: skip
        yield CounterMetricFamily(
            "adaptformer_task_evictions", "tasks evicted from memory to make room",
            value=r.stats.evictions,
        )  # fmt: skip
        counts = list(accumulate(r.stats.buckets))
        edges = [f"{b:g}" for b in LOAD_BUCKETS] + ["+Inf"]
        yield HistogramMetricFamily(
            "adaptformer_task_load_seconds",
            "seconds to read, check and put a task in memory (not the wait for room)",
            buckets=list(zip(edges, counts, strict=True)),
            sum_value=r.stats.seconds,
        )
