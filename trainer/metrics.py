"""Prometheus metrics of a trainer worker, served on LORAMEM_TRAINER_METRICS_PORT."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from loramem.queue import JobQueue

PHASE_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class QueueCollector(Collector):
    """Queue depth and the oldest waiting job's age, read from Redis at scrape time, so
    that every worker reports the same shared figures."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "loramem_trainer_queue_depth", "Jobs not yet acknowledged: waiting or running."
        )
        age = GaugeMetricFamily(
            "loramem_trainer_oldest_pending_age_seconds",
            "Age of the oldest job that is waiting or running (0 when none).",
        )
        waiting, oldest_ms = self.queue.backlog()
        depth.add_metric([], waiting)
        age.add_metric([], max(0.0, time.time() - oldest_ms / 1000) if oldest_ms else 0.0)
        yield depth
        yield age


class TrainerMetrics:
    def __init__(self, queue: JobQueue, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "loramem_trainer_jobs_total",
            "Jobs that reached a final status.",
            ["status"],
            registry=self.registry,
        )
        self.phase_seconds = Histogram(
            "loramem_trainer_phase_duration_seconds",
            "Time spent in each job phase.",
            ["phase"],
            buckets=PHASE_BUCKETS_S,
            registry=self.registry,
        )
        self.steps = Counter(
            "loramem_trainer_steps_total", "Optimizer steps taken.", registry=self.registry
        )
        self.answer_pause_seconds = Counter(
            "loramem_trainer_answer_pause_seconds_total",
            "Time training waited for an engine on this host to answer (answer_pause.py).",
            registry=self.registry,
        )
        self.registry.register(QueueCollector(queue))
        for status in (
            "published",
            "failed",
            "cancelled",
        ):  # so rates exist before the first job ends
            self.jobs.labels(status)
        for phase in ("training", "validating", "publishing"):
            self.phase_seconds.labels(phase)

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
