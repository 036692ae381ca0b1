"""The trainer worker: take a job, train the module on all its facts, gate, publish.

Jobs arrive through the Redis consumer group (at least once). A job is acknowledged only
after it reached a terminal state, so a worker that dies mid-job leaves it pending, and
another worker reclaims it once the heartbeat has stopped for `job_claim_idle_ms`.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from loramem.adapter_store import (
    AdapterRef,
    AdapterStore,
    checksum,
    read_files,
    validate_adapter_config,
)
from loramem.base_model import prepare_base_model
from loramem.engine import EngineClient
from loramem.errors import EngineUnavailable
from loramem.queue import JobQueue, ModuleLock
from loramem.registry import Registry
from loramem.registry.facts import Fact
from loramem.registry.jobs import TERMINAL, Job, JobStatus
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from trainer import train as training
from trainer import variants
from trainer.config import TrainConfig
from trainer.merge import MergeRefused, build_merge
from trainer.metrics import TrainerMetrics
from trainer.synth import make_generator

log = logging.getLogger("loramem.trainer")

MAX_ATTEMPTS = 3


class GateFailed(Exception):
    pass


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


class TrainingRun:
    """One job's training: rounds of training and the recall gate, with progress."""

    def __init__(self, worker: Worker, job: Job, config: TrainConfig) -> None:
        self.worker, self.job, self.config = worker, job, config
        self.registry = worker.registry
        self.done_steps = 0  # across rounds and splits, so progress only moves forward
        self.last_loss = float("inf")
        self.started = time.perf_counter()
        self.peft_model: Any = None
        # PiSSA's initial adapter, which publishing converts against (trainer/variants.py).
        self.initial = tempfile.TemporaryDirectory(prefix="loramem-init-")
        # A gate of 0 (experiments) publishes what one round reaches: no extra rounds.
        extra = worker.settings.gate_extra_rounds if config.recall_gate > 0 else 0
        self.rounds = 1 + extra
        self.progress: dict[str, Any] = {
            "phase": "training",
            "step": 0,
            "total_steps": config.max_steps * (1 + extra),
        }

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 1)

    def on_step(self, step: int, _total: int, loss: float) -> None:
        self.worker.metrics.steps.inc()
        self.progress.update(step=self.done_steps + step, loss=round(loss, 5))
        self.registry.jobs.set_progress(self.job.id, self.progress)

    def train_until_gate(self, facts: list[Fact], warm: bool) -> float:
        """Train on `facts`, with extra rounds below the gate; return the measured recall."""
        config = self.config
        qas = [
            self.worker.generator.fact_data(f.id, f.text, config.questions_per_fact) for f in facts
        ]
        self.progress.update(facts=len(facts), phase="training")
        self.registry.jobs.transition(self.job.id, JobStatus.TRAINING, progress=self.progress)
        base, tokenizer = training.load_base(self.worker.model_path)
        self.peft_model = training.make_peft_model(base, config)
        if config.variant == "pissa":
            variants.save_initial(self.peft_model, Path(self.initial.name))
        if warm and config.variant == "lora":  # other variants publish a different shape
            self.progress["warm_start"] = self.worker.warm_start(self.job, self.peft_model, config)
        examples = training.build_examples(tokenizer, qas, config.data_format)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        first = training.first_trained_layer(base, config)
        prefix = training.FrozenPrefix(self.peft_model, examples, first, pad_id)
        round_config, measured = config, 0.0
        for round_number in range(self.rounds):
            if round_number:  # below the gate: train on, towards a lower loss
                self.registry.jobs.transition(
                    self.job.id, JobStatus.TRAINING, progress=self.progress
                )
                round_config = replace(round_config, target_loss=round_config.target_loss / 4)
            with self.worker.metrics.phase_seconds.labels("training").time():
                result = training.train(self.peft_model, prefix, round_config, self.on_step)
            self.done_steps += result.steps
            self.last_loss = result.loss
            self.progress.update(phase="validating", step=self.done_steps)
            self.registry.jobs.transition(self.job.id, JobStatus.VALIDATING, progress=self.progress)
            with self.worker.metrics.phase_seconds.labels("validating").time():
                measured, _answers = training.recall(self.peft_model, tokenizer, qas)
            self.progress.update(recall=round(measured, 4))
            self.registry.jobs.set_progress(self.job.id, self.progress)
            # Every fact recalled: done. Merely above the gate: the extra rounds are cheap
            # next to serving a module that misses a fact, so use them; publish either way.
            if measured >= 1.0:
                break
        return measured


class Worker:
    def __init__(self, settings: Settings, registry: Registry, engines: list[EngineClient]) -> None:
        self.settings = settings
        self.registry = registry
        self.queue = registry.queue
        self.metrics = TrainerMetrics(self.queue)
        self.store = AdapterStore(settings.adapters_path, registry)
        self.engines = engines
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.model_path = prepare_base_model(settings)
        self.generator = make_generator(
            settings.data_generator,
            settings.generator_url or settings.engine_url,
            settings.generator_model or settings.base_name,
        )
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
                self._process(job)
            self.queue.ack(entry_id)
            self.metrics.jobs.labels("published").inc()
        except (GateFailed, MergeRefused) as exc:
            self.registry.jobs.transition(job.id, JobStatus.FAILED, error=str(exc))
            self.queue.ack(entry_id)
            self.metrics.jobs.labels("failed").inc()
        except Exception as exc:
            log.exception("job %s failed", job.id)
            if self.registry.jobs.count_attempt(job.id) >= MAX_ATTEMPTS:
                self.registry.jobs.transition(
                    job.id, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}"
                )
                self.queue.ack(entry_id)
                self.metrics.jobs.labels("failed").inc()
            # else: left pending; it is reclaimed and retried after the idle time
        finally:
            lock.release()

    def _process(self, job: Job) -> None:
        if job.kind == "merge":  # no training: combine published modules (trainer/merge.py)
            build_merge(self, job)
            return
        config = TrainConfig.from_settings(self.settings, **job.overrides)
        if job.kind == "add":
            # Batches posted right behind this one join it rather than queue a retrain of
            # the module for just after; their own jobs then find them already covered.
            coalesce_s = self.settings.job_coalesce_ms / 1000
            time.sleep(max(0.0, job.created_at_s + coalesce_s - time.time()))
        facts = self.registry.facts.of_module(job.module, job.tenant)
        if not facts:  # every fact was deleted: the module stops serving
            self._skip_to_publishing(job, "retiring")
            self.registry.modules.retire(job.module, job.tenant, job_id=job.id)
            return
        covering = self._covering_version(job, facts)
        if covering:  # an earlier job already trained these facts (posted back to back)
            self._skip_to_publishing(job, "already published")
            self.registry.jobs.transition(job.id, JobStatus.PUBLISHED, version=covering)
            return
        run = TrainingRun(self, job, config)
        warm = job.kind == "add"
        while True:
            measured = run.train_until_gate(facts, warm)
            if measured >= config.recall_gate:
                break
            if len(facts) < 2 or not self.settings.gate_split:
                raise GateFailed(
                    f"recall {measured:.3f} is below the gate {config.recall_gate:.2f} "
                    f"after {run.done_steps} steps (loss {run.last_loss:.4f})"
                )
            # Too much for one module: move half of the facts to a new module (its own
            # job) and train this one, from scratch, on the rest.
            keep, move = facts[: len(facts) // 2], facts[len(facts) // 2 :]
            moved = self.registry.facts.split(
                job.module, job.tenant, [f.id for f in move], job.overrides
            )
            run.progress.setdefault("split_into", []).append(moved.module)
            facts, warm = keep, False
        run.progress.update(phase="publishing", train_seconds=run.seconds())
        self.registry.jobs.transition(job.id, JobStatus.PUBLISHING, progress=run.progress)
        with self.metrics.phase_seconds.labels("publishing").time():
            self._publish(job, run, [f.id for f in facts], measured)
        run.initial.cleanup()

    def _skip_to_publishing(self, job: Job, reason: str) -> None:
        self.registry.jobs.transition(job.id, JobStatus.TRAINING, progress={"phase": reason})
        self.registry.jobs.transition(job.id, JobStatus.VALIDATING)
        self.registry.jobs.transition(job.id, JobStatus.PUBLISHING)

    def _covering_version(self, job: Job, facts: list[Fact]) -> int | None:
        """The active version, when it was trained on every fact this "add" job sees."""
        active = self.registry.modules.get(job.module).active_version
        if job.kind != "add" or not active or job.overrides:
            return None
        trained = set(self.registry.modules.version(job.module, active).fact_ids)
        return active if {f.id for f in facts} <= trained else None

    def load_everywhere(self, ref: AdapterRef) -> None:
        """Load into every reachable engine; one that is down gets it from the gateway's
        reconciler when it is back. No engine at all: the job is retried later."""
        loaded = 0
        for engine in self.engines:
            try:
                engine.load_adapter(ref)
                loaded += 1
            except EngineUnavailable as exc:
                log.warning("could not load %s: %s", ref.name, exc)
        if not loaded:
            raise EngineUnavailable(f"no engine could load {ref.name}")

    def warm_start(self, job: Job, peft_model: Any, config: TrainConfig) -> int | None:
        """Start an "add" job from the module's active version when its shape matches."""
        active = self.registry.modules.get(job.module).active_version
        if not active:
            return None
        if self.registry.modules.version(job.module, active).train_config != asdict(config):
            return None
        files = self.registry.modules.version_files(job.module, active)
        training.warm_start(peft_model, files["adapter_model.safetensors"])
        return active

    def _publish(self, job: Job, run: TrainingRun, fact_ids: list[str], measured: float) -> None:
        config = run.config
        with tempfile.TemporaryDirectory() as scratch:
            variants.save_servable(
                run.peft_model, Path(scratch), config, self.model_path, Path(run.initial.name)
            )
            files = read_files(Path(scratch))
        ref = self.publish(
            job,
            job.module,
            files,
            max_rank=max(256, 2 * config.rank),
            fact_ids=fact_ids,
            recall=measured,
            train_config=asdict(config),
        )
        log.info("published %s (recall %.3f)", ref.name, measured)

    def publish(
        self, job: Job, module: str, files: dict[str, bytes], max_rank: int, **details: Any
    ) -> AdapterRef:
        """Check, store, load into the engines, then announce a new version of `module`.
        `details` are the rest of its VersionInfo. The order matters: a version is
        servable before anyone can be routed to it."""
        validate_adapter_config(files, max_rank=max_rank)
        version = self.registry.modules.next_version(module)
        ref = self.store.write_local(module, version, files)
        self.load_everywhere(ref)
        info = VersionInfo(
            module=module, version=version, tenant=job.tenant, checksum=checksum(files), **details
        )
        self.registry.modules.publish(info, files, job_id=job.id)
        return ref


def main(settings: Settings) -> None:
    registry = Registry.from_url(settings.redis_url, settings.module_capacity_facts)
    worker = Worker(settings, registry, [EngineClient(url) for url in settings.engines])
    worker.metrics.serve(settings.trainer_metrics_port)
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        pass
