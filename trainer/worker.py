"""The trainer worker: a loop that claims a job, hands it to its handler, publishes the
outcome, and acknowledges it.

Jobs arrive through the Redis consumer group (at least once). A job is acknowledged only
after it reached a terminal state, so a worker that dies mid-job leaves it pending, and
another worker reclaims it once the heartbeat has stopped for `job_claim_idle_ms`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import torch

from loramem.adapter_store import AdapterStore
from loramem.base_model import prepare_base_model
from loramem.engine import EngineClient
from loramem.queue import JobQueue, ModuleLock
from loramem.registry import Registry
from loramem.registry.jobs import TERMINAL
from loramem.settings import Settings
from trainer import handlers
from trainer.context import TrainerContext
from trainer.metrics import TrainerMetrics
from trainer.outcomes import JobRefused
from trainer.publisher import Publisher
from trainer.synth import make_generator

log = logging.getLogger("loramem.trainer")

MAX_ATTEMPTS = 3


class Heartbeat:
    """Keeps a claimed stream entry and the module lock alive while a job runs."""

    def __init__(
        self, queue: JobQueue, consumer: str, entry_id: str, lock: ModuleLock, interval_s: float
    ) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.queue, self.consumer, self.entry_id, self.lock = queue, consumer, entry_id, lock
        self.interval_s = interval_s

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.queue.heartbeat(self.consumer, self.entry_id)
                self.lock.renew()
            except Exception:  # a missed beat is retried; the job itself is unaffected
                log.exception("heartbeat failed")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    def __init__(self, settings: Settings, registry: Registry, engines: list[EngineClient]) -> None:
        self.settings = settings
        self.registry = registry
        self.queue = registry.queue
        self.metrics = TrainerMetrics(self.queue)
        self.ctx = TrainerContext(
            settings=settings,
            registry=registry,
            store=AdapterStore(settings.adapters_path, registry),
            metrics=self.metrics,
            generator=make_generator(
                settings.data_generator,
                settings.generator_url or settings.engine_url,
                settings.generator_model or settings.base_name,
            ),
            model_path=prepare_base_model(settings),
        )
        self.publisher = Publisher(self.ctx, engines)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._stopping = threading.Event()
        torch.set_num_threads(settings.train_threads or os.cpu_count() or 1)

    def stop(self) -> None:
        self._stopping.set()

    def run_forever(self) -> None:
        self.queue.ensure_group()
        log.info("worker %s waiting for jobs", self.consumer)
        while not self._stopping.is_set():
            self.run_once()

    def run_once(self) -> bool:
        """Handle at most one job; reclaimed jobs of dead workers go first."""
        entries = self.queue.reclaim(self.consumer, self.settings.job_claim_idle_ms)
        if not entries:
            entries = self.queue.read(self.consumer, self.settings.worker_block_ms)
        for entry_id, job_id in entries:
            self.handle(entry_id, job_id)
        return bool(entries)

    def handle(self, entry_id: str, job_id: str) -> None:
        """Run one job to a terminal state, or leave it pending for a retry."""
        job = self.registry.jobs.get(job_id)
        if job.status in TERMINAL:  # a redelivery of finished work
            self.queue.ack(entry_id)
            return
        # The lock expires like a dead worker's claim does, so a crash frees the module too.
        lock = self.registry.module_lock(job.module, ttl_ms=self.settings.job_claim_idle_ms)
        while not lock.acquire():  # another worker is training this module right now
            self.queue.heartbeat(self.consumer, entry_id)
            time.sleep(1.0)
        interval_s = self.settings.job_claim_idle_ms / 3000
        try:
            with Heartbeat(self.queue, self.consumer, entry_id, lock, interval_s):
                self.publisher.apply(job, handlers.handle(self.ctx, job))
            self._finished(entry_id, "published")
        except JobRefused as exc:
            self.registry.jobs.fail(job.id, str(exc))
            self._finished(entry_id, "failed")
        except Exception as exc:
            log.exception("job %s failed", job.id)
            if self.registry.jobs.count_attempt(job.id) >= MAX_ATTEMPTS:
                self.registry.jobs.fail(job.id, f"{type(exc).__name__}: {exc}")
                self._finished(entry_id, "failed")
            # else: left pending; it is reclaimed and retried after the idle time
        finally:
            lock.release()

    def _finished(self, entry_id: str, status: str) -> None:
        self.queue.ack(entry_id)
        self.metrics.jobs.labels(status).inc()


def main(settings: Settings) -> None:
    registry = Registry.from_url(settings.redis_url, settings.module_capacity_facts)
    worker = Worker(settings, registry, [EngineClient(url) for url in settings.engines])
    worker.metrics.serve(settings.trainer_metrics_port)
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        pass
