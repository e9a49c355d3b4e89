"""``GET /metrics``: the server's state in Prometheus's text format, through prometheus-client.

- ``factory_http_requests_total{method,route,status}`` and
  ``factory_http_request_duration_seconds{method,route}`` (a histogram), for every request,
  refused ones included; ``route`` is the matched route's template, never the raw path.
- ``factory_engine_generated_tokens_total`` (tokens per second: its ``rate()``),
  ``factory_engine_requests_total``, ``factory_engine_batches_total``, ``factory_engine_queued_requests``,
  ``factory_engine_running_requests``, and ``factory_engine_batch_size`` (a histogram), from the engine.
- ``factory_jobs{status}``: jobs in each status, read from the jobs table when scraped, and
  ``factory_job_duration_seconds{kind,status}`` (a histogram of the finished jobs still kept).
- ``process_cpu_seconds_total``, ``process_resident_memory_bytes``...: prometheus-client's own
  process collector.
- ``factory_gpu_utilization_ratio{gpu}``, ``factory_gpu_memory_used_bytes{gpu}``,
  ``factory_gpu_memory_total_bytes{gpu}`` through NVML (nvidia-ml-py), only when NVML finds GPUs:
  without one these series are absent, never zeros.

Each app has its own registry, so two servers in one process never mix their counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from factory.store.database import StoreError
from factory.store.jobs import JobQueue

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
JOB_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
# engine.stats() key -> (metric, help, counter?)
ENGINE_SERIES = {
    "generated_tokens": ("factory_engine_generated_tokens", "tokens generated (rate() is tokens per second)", True),
    "requests": ("factory_engine_requests", "generation requests queued on the engine", True),
    "batches": ("factory_engine_batches", "batches the engine ran", True),
    "queued": ("factory_engine_queued_requests", "requests waiting for a batch", False),
    "running": ("factory_engine_running_requests", "requests in the running batch", False),
}


class EngineCollector(Collector):
    """The engine's own counters, read when scraped."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        stats = self.engine.stats()
        for key, (name, doc, counter) in ENGINE_SERIES.items():
            if key in stats:
                family = CounterMetricFamily if counter else GaugeMetricFamily
                yield family(name, doc, value=stats[key])


class JobsCollector(Collector):
    """Jobs by status and finished jobs' durations, from the jobs table when scraped."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Any]:
        try:
            counts = self.queue.counts()
            durations = self.queue.durations()
        except StoreError as exc:  # an unreachable database shows as missing series, not as a failed scrape
            log.warning("metrics: %s", exc)
            return
        depth = GaugeMetricFamily("factory_jobs", "jobs in each status", labels=["status"])
        for status, count in counts.items():
            depth.add_metric([status], count)
        yield depth
        histogram = HistogramMetricFamily(
            "factory_job_duration_seconds", "seconds from claim to end of finished jobs", labels=["kind", "status"]
        )
        groups: dict[tuple[str, str], list[float]] = {}
        for kind, status, seconds in durations:
            groups.setdefault((kind, status), []).append(seconds)
        for labels, values in sorted(groups.items()):
            buckets = [(str(bound), sum(v <= bound for v in values)) for bound in JOB_BUCKETS]
            histogram.add_metric(list(labels), [*buckets, ("+Inf", len(values))], sum(values))
        yield histogram


class GpuCollector(Collector):
    """Per-GPU utilisation and memory through NVML; built only when NVML starts and finds devices."""

    def __init__(self, nvml: Any, count: int) -> None:
        self.nvml, self.count = nvml, count

    @classmethod
    def create(cls) -> GpuCollector | None:
        try:
            import pynvml  # the module of nvidia-ml-py

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except Exception:  # no package, no driver, no GPU: the series are left out
            return None
        return cls(pynvml, count) if count else None

    def collect(self) -> Iterator[Any]:
        utilization = GaugeMetricFamily(
            "factory_gpu_utilization_ratio", "GPU busy share over NVML's last sample", labels=["gpu"]
        )
        used = GaugeMetricFamily("factory_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("factory_gpu_memory_total_bytes", "GPU memory in all", labels=["gpu"])
        for index in range(self.count):
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization.add_metric([str(index)], self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
            used.add_metric([str(index)], memory.used)
            total.add_metric([str(index)], memory.total)
        yield from (utilization, used, total)


class ServiceMetrics:
    """One app's registry and the ASGI middleware that times its requests."""

    def __init__(self, engine: Any, queue: JobQueue) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "factory_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "factory_http_request_duration_seconds",
            "seconds from request to the end of the answer",
            ["method", "route"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "factory_engine_batch_size", "requests per engine batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        ProcessCollector(registry=self.registry)
        self.registry.register(EngineCollector(engine))
        self.registry.register(JobsCollector(queue))
        gpus = GpuCollector.create()
        if gpus is not None:
            self.registry.register(gpus)
        engine.on_batch = self.batch_size.observe

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def middleware(self, app: Any) -> Any:
        """Wrap an ASGI app so every HTTP request is counted and timed."""

        async def timed(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def watch(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, watch)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.requests.labels(scope["method"], route, str(status)).inc()
                self.latency.labels(scope["method"], route).observe(time.perf_counter() - started)

        return timed
