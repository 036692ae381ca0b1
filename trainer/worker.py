"""The trainer worker: a loop that claims a job, hands it to its handler, publishes the
outcome, and acknowledges it.

Jobs arrive through the Redis consumer group (at least once). A job is acknowledged only
after it reached a terminal state, so a worker that dies mid-job leaves it pending, and
another worker reclaims it once the heartbeat has stopped for `job_claim_idle_ms`.

Attempts are counted at delivery (the stream's delivery count), not when an error is
caught: a job that kills its worker (OOM, segfault) is delivered again and again, and
after `max_job_attempts` deliveries it is dead-lettered (failed with the reason and
acknowledged) so that the jobs behind it are served.

Between jobs the worker sweeps retired versions past their retention (their record, their
blobs in Redis and its own local folders). The trainer sweeps rather than the gateways:
it is the one writer of versions, there are fewer workers than gateway replicas to race,
and a sweep between jobs never competes with serving.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis
import torch

from loramem.adapter_store import AdapterStore
from loramem.base_model import prepare_base_model
from loramem.engine import EngineClient
from loramem.errors import LockLost, NotFound
from loramem.queue import JobQueue, ModuleLock
from loramem.registry import Registry
from loramem.registry.jobs import TERMINAL, Job
from loramem.settings import Settings
from trainer import handlers
from trainer.context import TrainerContext
from trainer.metrics import TrainerMetrics
from trainer.outcomes import JobRefused
from trainer.publisher import Publisher
from trainer.synth import make_generator

log = logging.getLogger("loramem.trainer")

REDIS_BACKOFF_MIN_S = 0.5
REDIS_BACKOFF_MAX_S = 30.0


class Heartbeat:
    """Keeps a claimed stream entry and the module lock alive while a job runs."""

    def __init__(
        self, queue: JobQueue, consumer: str, entry_id: str, lock: ModuleLock, interval_s: float
    ) -> None:
        self._stop = threading.Event()
        self.lost = threading.Event()  # set once the module lock is no longer ours
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.queue, self.consumer, self.entry_id, self.lock = queue, consumer, entry_id, lock
        self.interval_s = interval_s

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.queue.heartbeat(self.consumer, self.entry_id)
                if not self.lock.renew():  # expired and maybe taken: another worker may
                    self.lost.set()  # be training this module now; this job must stop
                    log.error("lost the lock of %s; abandoning the job", self.lock.key)
                    return
            except Exception:  # a missed beat is retried; the job itself is unaffected
                log.exception("heartbeat failed")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        engines: list[EngineClient],
        ctx: TrainerContext | None = None,  # tests pass one without a base model
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.queue = registry.queue
        self.ctx = ctx or TrainerContext(
            settings=settings,
            registry=registry,
            store=AdapterStore(settings.adapters_path, registry),
            metrics=TrainerMetrics(self.queue),
            generator=make_generator(
                settings.data_generator,
                settings.generator_url or settings.engine_url,
                settings.generator_model or settings.base_name,
            ),
            model_path=prepare_base_model(settings),
        )
        self.metrics = self.ctx.metrics
        self.publisher = Publisher(self.ctx, engines)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._stopping = threading.Event()
        torch.set_num_threads(settings.train_threads or os.cpu_count() or 1)

    def stop(self) -> None:
        self._stopping.set()

    def run_forever(self) -> None:
        """Jobs until stopped. Redis going away does not end the worker: each failed loop
        is logged and retried after a backoff that doubles up to REDIS_BACKOFF_MAX_S (the
        client reconnects on the next call); a job it held stays pending and is retried."""
        log.info("worker %s waiting for jobs", self.consumer)
        backoff_s = 0.0
        while not self._stopping.is_set():
            try:
                self.queue.ensure_group()
                self.run_once()
                backoff_s = 0.0
            except redis.RedisError as exc:
                backoff_s = min(REDIS_BACKOFF_MAX_S, max(REDIS_BACKOFF_MIN_S, backoff_s * 2))
                log.error("redis error: %s; retrying in %.1f s", exc, backoff_s)
                self._stopping.wait(backoff_s)

    def run_once(self) -> bool:
        """Handle at most one job; reclaimed jobs of dead workers go first."""
        self.sweep()
        entries = self.queue.reclaim(self.consumer, self.settings.job_claim_idle_ms)
        if not entries:
            entries = self.queue.read(self.consumer, self.settings.worker_block_ms)
        for entry_id, job_id in entries:
            self.handle(entry_id, job_id)
        return bool(entries)

    def sweep(self) -> None:
        """Delete retired versions older than the retention: record, blobs, local folder."""
        try:
            swept = self.registry.modules.sweep_retired(self.settings.retired_version_retention_s)
        except Exception:  # the next loop sweeps again; jobs go on meanwhile
            log.exception("sweeping retired versions failed")
            return
        for module, version in swept:
            self.ctx.store.remove_local(module, version)
            log.info("swept retired version %s@v%d", module, version)

    def handle(self, entry_id: str, job_id: str) -> None:
        """Run one job to a terminal state, or leave it pending for a retry."""
        try:
            job = self.registry.jobs.get(job_id)
        except NotFound:  # a finished job that has expired since: nothing left to do
            self.queue.ack(entry_id)
            return
        if job.status in TERMINAL:  # a redelivery of finished work
            self.queue.ack(entry_id)
            return
        deliveries = self.queue.deliveries(entry_id)
        if deliveries > self.settings.max_job_attempts:
            self._dead_letter(entry_id, job, deliveries - 1)
            return
        self.registry.jobs.record_deliveries(job.id, deliveries)
        # The lock expires like a dead worker's claim does, so a crash frees the module too.
        lock = self.registry.module_lock(job.module, ttl_ms=self.settings.job_claim_idle_ms)
        while not lock.acquire():  # another worker is training this module right now
            self.queue.heartbeat(self.consumer, entry_id)
            time.sleep(1.0)
        interval_s = self.settings.job_claim_idle_ms / 3000
        try:
            with Heartbeat(self.queue, self.consumer, entry_id, lock, interval_s) as beat:
                outcome = handlers.handle(self.ctx, job)
                if beat.lost.is_set():  # the publish would also refuse: say why here
                    raise LockLost(f"lost the lock of {job.module} while training")
                self.publisher.apply(job, outcome, lock=lock)
            self._finished(entry_id, "published")
        except LockLost as exc:  # another worker holds the module: leave the job to it
            log.error("job %s abandoned: %s", job.id, exc)
        except JobRefused as exc:
            self.registry.jobs.fail(job.id, str(exc))
            self._finished(entry_id, "failed")
        except Exception as exc:
            log.exception("job %s failed", job.id)
            if deliveries >= self.settings.max_job_attempts:
                self.registry.jobs.fail(job.id, f"{type(exc).__name__}: {exc}")
                self._finished(entry_id, "failed")
            # else: left pending; it is reclaimed and retried after the idle time
        finally:
            lock.release()

    def _dead_letter(self, entry_id: str, job: Job, attempts: int) -> None:
        """Every earlier delivery ended without a terminal state or a caught error: the
        job took its worker down with it. Stop handing it out."""
        error = f"gave up after {attempts} deliveries: the worker died each time"
        log.error("job %s dead-lettered: %s", job.id, error)
        self.registry.jobs.fail(job.id, error)
        self._finished(entry_id, "failed")

    def _finished(self, entry_id: str, status: str) -> None:
        self.queue.ack(entry_id)
        self.metrics.jobs.labels(status).inc()


def main(settings: Settings) -> None:
    registry = Registry.from_settings(settings)
    engines = [EngineClient(url, api_key=settings.engine_api_key) for url in settings.engines]
    worker = Worker(settings, registry, engines)
    worker.metrics.serve(settings.trainer_metrics_port)
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        pass
