"""The trainer worker: a loop that claims a job, hands it to its handler, publishes the
outcome, and acknowledges it.

Jobs arrive through the per-tenant streams of loramem/queue.py, in turns over the tenants
that have work (at least once). A job is acknowledged only after it reached a terminal
state, so a worker that dies mid-job leaves it pending, and another worker reclaims it
once the heartbeat has stopped for `job_claim_idle_ms`.

A cancelled job (DELETE /jobs/{id}) is abandoned at the next step's progress write, at
the next heartbeat (checked before publishing), or at the latest by the publish
transaction itself; nothing is published for it, and it is acknowledged. A consolidation
(background work) stops the same way when a user's job is queued behind it: it ends
cancelled as "yielded", and the next idle scan queues it again (trainer/handlers.py).

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
from loramem.priority import lower_priority
from loramem.queue import Claim, JobQueue, ModuleLock
from loramem.registry import Registry
from loramem.registry.jobs import (
    TERMINAL,
    InvalidTransition,
    Job,
    JobCancelled,
    JobStatus,
    JobStore,
)
from loramem.settings import Settings
from trainer import handlers
from trainer.answer_pause import AnswerPause
from trainer.context import TrainerContext
from trainer.metrics import TrainerMetrics
from trainer.outcomes import JobRefused, JobYielded
from trainer.publisher import Publisher
from trainer.synth import make_generator

log = logging.getLogger("loramem.trainer")

REDIS_BACKOFF_MIN_S = 0.5
REDIS_BACKOFF_MAX_S = 30.0


class Heartbeat:
    """Keeps a claimed stream entry and the module lock alive while a job runs, and
    notices when the job was cancelled meanwhile."""

    def __init__(
        self,
        queue: JobQueue,
        jobs: JobStore,
        consumer: str,
        claim: Claim,
        lock: ModuleLock,
        interval_s: float,
    ) -> None:
        self._stop = threading.Event()
        self.lost = threading.Event()  # set once the module lock is no longer ours
        self.cancelled = threading.Event()  # set once the job is finished elsewhere
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.queue, self.jobs, self.consumer, self.claim = queue, jobs, consumer, claim
        self.lock, self.interval_s = lock, interval_s

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.queue.heartbeat(self.consumer, self.claim)
                if not self.lock.renew():  # expired and maybe taken: another worker may
                    self.lost.set()  # be training this module now; this job must stop
                    log.error("lost the lock of %s; abandoning the job", self.lock.key)
                    return
                if self.jobs.status(self.claim.job_id) in TERMINAL | {None}:
                    self.cancelled.set()
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
            generator=make_generator(settings),
            model_path=prepare_base_model(settings),
            answer_pause=AnswerPause(engines, settings.worker_answer_pause_s),
        )
        self.metrics = self.ctx.metrics
        self.publisher = Publisher(self.ctx, engines)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._stopping = threading.Event()
        self._next_scan_s = 0.0  # when to look for dead workers' jobs again
        self._next_consolidation_s = 0.0  # when to look for deltas due again
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
                self.run_once()
                backoff_s = 0.0
            except redis.RedisError as exc:
                backoff_s = min(REDIS_BACKOFF_MAX_S, max(REDIS_BACKOFF_MIN_S, backoff_s * 2))
                log.error("redis error: %s; retrying in %.1f s", exc, backoff_s)
                self._stopping.wait(backoff_s)

    def run_once(self) -> bool:
        """Handle at most one job; reclaimed jobs of dead workers go first."""
        self.sweep()
        claim = self._reclaim() or self.queue.claim(self.consumer, self.settings.worker_block_ms)
        if claim is not None:
            self.handle(claim)
        else:  # idle: only now is consolidation queued, so it never holds back a batch
            self.queue_consolidations()
        return claim is not None

    def queue_consolidations(self) -> list[Job]:
        """Consolidation jobs for modules whose deltas are due (settings.py consolidate_*),
        at most every `job_claim_idle_ms` / 4 (the scan reads every bucket)."""
        if time.monotonic() < self._next_consolidation_s:
            return []
        self._next_consolidation_s = time.monotonic() + self.settings.job_claim_idle_ms / 4000
        facts = self.registry.facts
        due = facts.consolidations_due(
            self.settings.consolidate_deltas,
            self.settings.consolidate_after_s,
            self.settings.consolidate_retry_s,
        )
        queued = [
            job for module, tenant in due if (job := facts.queue_consolidation(module, tenant))
        ]
        for job in queued:
            log.info("queued consolidation %s of %s", job.id, job.module)
        return queued

    def _reclaim(self) -> Claim | None:
        """A dead worker's job, looked for over every tenant's stream at most every few
        seconds (a job is reclaimable only after `job_claim_idle_ms` anyway); `tidy`
        rides along, putting back a tenant left out of the rotation by a crash."""
        if time.monotonic() < self._next_scan_s:
            return None
        claim = self.queue.reclaim(self.consumer, self.settings.job_claim_idle_ms)
        if claim is None:  # else look again right after this job: there may be more
            self.queue.tidy()
            self._next_scan_s = time.monotonic() + self.settings.job_claim_idle_ms / 4000
        return claim

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

    def handle(self, claim: Claim) -> None:
        """Run one job to a terminal state, or leave it pending for a retry."""
        started = self._start(claim)
        if started is None:
            return
        job, deliveries = started
        # The lock expires like a dead worker's claim does, so a crash frees the module too.
        lock = self.registry.module_lock(job.module, ttl_ms=self.settings.job_claim_idle_ms)
        while not lock.acquire():  # another worker is training this module right now
            self.queue.heartbeat(self.consumer, claim)
            time.sleep(1.0)
        try:
            self._run(claim, job, lock)
            self._finished(claim, "published")
        except LockLost as exc:  # another worker holds the module: leave the job to it
            log.error("job %s abandoned: %s", job.id, exc)
        except JobCancelled:
            log.info("job %s was cancelled; abandoned, nothing published", job.id)
            self._finished(claim, "cancelled")
        except JobRefused as exc:
            self._fail(claim, job, str(exc))
        except JobYielded as exc:
            log.info("%s; queued again when idle", exc)
            self._yield(claim, job)
        except Exception as exc:
            log.exception("job %s failed", job.id)
            if deliveries >= self.settings.max_job_attempts:
                self._fail(claim, job, f"{type(exc).__name__}: {exc}")
            # else: left pending; it is reclaimed and retried after the idle time
        finally:
            lock.release()

    def _run(self, claim: Claim, job: Job, lock: ModuleLock) -> None:
        """Train and publish `job`, holding its claim and module lock alive meanwhile."""
        interval_s = self.settings.job_claim_idle_ms / 3000
        jobs = self.registry.jobs
        with Heartbeat(self.queue, jobs, self.consumer, claim, lock, interval_s) as beat:
            outcome = handlers.handle(self.ctx, job)
            if beat.lost.is_set():  # the publish would also refuse: say why here
                raise LockLost(f"lost the lock of {job.module} while training")
            if beat.cancelled.is_set():  # so would it here
                raise JobCancelled(job.id, "cancelled", "publishing")
            self.publisher.apply(job, outcome, lock=lock)

    def _start(self, claim: Claim) -> tuple[Job, int] | None:
        """The job and its delivery count, when it is to run now; None when it is done
        with (acknowledged, or dead-lettered)."""
        try:
            job = self.registry.jobs.get(claim.job_id)
        except NotFound:  # a finished job that has expired since: nothing left to do
            self.queue.ack(claim)
            return None
        if job.status in TERMINAL:  # a redelivery of finished work, or a cancelled job
            self.queue.ack(claim)
            return None
        deliveries = self.queue.deliveries(claim)
        if deliveries > self.settings.max_job_attempts:
            self._dead_letter(claim, job, deliveries - 1)
            return None
        self.registry.jobs.record_deliveries(job.id, deliveries)
        return job, deliveries

    def _dead_letter(self, claim: Claim, job: Job, attempts: int) -> None:
        """Every earlier delivery ended without a terminal state or a caught error: the
        job took its worker down with it. Stop handing it out."""
        error = f"gave up after {attempts} deliveries: the worker died each time"
        log.error("job %s dead-lettered: %s", job.id, error)
        self._fail(claim, job, error)

    def _fail(self, claim: Claim, job: Job, error: str) -> None:
        try:
            self.registry.jobs.fail(job.id, error)
        except JobCancelled:  # cancelled first: that is its end
            self._finished(claim, "cancelled")
            return
        self._finished(claim, "failed")

    def _yield(self, claim: Claim, job: Job) -> None:
        """Ends a background job that stopped for a user's: cancelled, so an idle worker
        queues it again (FactStore.queue_consolidation takes a finished one as none)."""
        try:
            self.registry.jobs.transition(
                job.id, JobStatus.CANCELLED, error="yielded to a queued job; queued again when idle"
            )
        except InvalidTransition:  # cancelled or finished meanwhile: that is its end
            pass
        self._finished(claim, "yielded")

    def _finished(self, claim: Claim, status: str) -> None:
        self.queue.ack(claim)
        self.metrics.jobs.labels(status).inc()


def main(settings: Settings) -> None:
    # First, before the model loads and torch starts its threads, which take this niceness.
    nice = lower_priority(settings.worker_nice)
    log.info("worker at niceness %d (LORAMEM_WORKER_NICE)", nice)
    registry = Registry.from_settings(settings)
    engines = [EngineClient(url, api_key=settings.engine_api_key) for url in settings.engines]
    worker = Worker(settings, registry, engines)
    worker.metrics.serve(settings.trainer_metrics_port)
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        pass
