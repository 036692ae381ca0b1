"""Jobs: the lifecycle of a queued piece of training work, and its storage.

Every status write goes through `JobStore.transition` (or `finish` / `fail`, which call
it), so the allowed-transition table below is the only way a status changes. A job that
reaches a terminal state expires `finished_ttl_s` later, set in the same transaction.

A client may cancel an unfinished job (`cancel`). Cancelling is a status change like any
other, so a worker still running the job finds out at its next write: its next step's
progress (`set_progress` refuses), its next transition (JobCancelled), or, last of all,
the publish transaction, which finishes the job and so cannot publish for a cancelled one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from loramem import keys
from loramem.errors import Conflict, NotFound
from loramem.names import module_name
from loramem.registry.codec import decode, encode


class JobStatus(StrEnum):
    QUEUED = "queued"
    TRAINING = "training"
    VALIDATING = "validating"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.PUBLISHED, JobStatus.FAILED, JobStatus.CANCELLED})
# Only these kinds may be cancelled: an "edit" or "delete" job is what makes the served
# module forget the old or deleted fact, which is already gone from storage.
CANCELLABLE_KINDS = frozenset({"add", "merge"})
# Kinds a worker queues for itself when idle; a user's job queued meanwhile goes first
# (trainer/handlers.py consolidate yields to it).
BACKGROUND_KINDS = frozenset({"consolidate"})

# A reclaimed job (its worker died) restarts training from any non-terminal state, and a
# failed gate sends a job from validating back to training for more steps. Any unfinished
# job may be cancelled.
_ENDS = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.TRAINING}) | _ENDS,
    JobStatus.TRAINING: frozenset({JobStatus.TRAINING, JobStatus.VALIDATING}) | _ENDS,
    JobStatus.VALIDATING: frozenset({JobStatus.TRAINING, JobStatus.PUBLISHING}) | _ENDS,
    JobStatus.PUBLISHING: frozenset({JobStatus.TRAINING, JobStatus.PUBLISHED}) | _ENDS,
    JobStatus.PUBLISHED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in ALLOWED[current]


class InvalidTransition(Exception):
    def __init__(self, job_id: str, current: str, new: str) -> None:
        super().__init__(f"job {job_id}: {current} -> {new} is not allowed")


class JobCancelled(InvalidTransition):
    """The job was cancelled (or finished elsewhere) while this worker ran it: stop, and
    publish nothing."""


@dataclass
class Job:
    id: str
    tenant: str
    module: str
    status: JobStatus = JobStatus.QUEUED
    version: int | None = None
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    created_at_s: float = 0.0
    # "add" only grows a module, so training may start from its active version's weights;
    # "edit" and "delete" must unlearn, so they train from scratch; "merge" combines
    # published modules without training.
    kind: str = "add"
    training: dict[str, Any] = field(default_factory=dict)  # knobs this job overrides

    def public(self) -> dict[str, Any]:
        """What the job's tenant is shown: the module by its name in the tenant's namespace."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status.value,
            "module": module_name(self.module),
            "version": self.version,
            "progress": self.progress,
            "error": self.error,
        }


def stage_job(pipe: redis.client.Pipeline, job: Job) -> None:
    """Queue `job` inside the caller's transaction, next to the writes it is about."""
    job.created_at_s = time.time()
    pipe.hset(
        keys.job(job.id),
        mapping={
            "tenant": job.tenant,
            "module": job.module,
            "kind": job.kind,
            "training": json.dumps(job.training),
            "status": job.status.value,
            "progress": json.dumps(job.progress),
            "attempts": 0,
            "created_at_s": job.created_at_s,
        },
    )
    pipe.sadd(keys.tenant_open_jobs(job.tenant), job.id)  # until terminal (quota)
    # The tenant's own stream, and the tenant into the round-robin unless it is there
    # already with its turn (loramem/queue.py).
    # The rotation and the list of streams are the tenant's bucket's: the same hash slot.
    bucket = keys.bucket(job.tenant)
    # The kind rides along so a worker can tell a user's waiting job from its own
    # background work without reading the job (loramem/queue.py waiting_kinds).
    pipe.xadd(keys.job_stream(job.tenant), {"job_id": job.id, "kind": job.kind})
    # EVAL by name: redis-py's cluster pipeline has no eval(), but passes the command on.
    pipe.execute_command("EVAL", _JOIN_ROTATION, 1, keys.jobs_ready(bucket), job.tenant)
    pipe.sadd(keys.job_streams(bucket), job.tenant)


# The tenant joins the trainers' round-robin unless it is in it already, with Redis's clock
# as its turn: behind every tenant waiting since earlier, whichever host queues the job.
_JOIN_ROTATION = (
    "local t = redis.call('time') redis.call('zadd', KEYS[1], 'NX', t[1] * 1000000 + t[2], ARGV[1])"
)

# More writes to make in the same transaction as a status change (a publish, a retire).
AlsoWrite = Callable[[redis.client.Pipeline], None]
# Reads those writes depend on: run on the pipeline after WATCH, before MULTI, and again
# whenever a watched key changed (then the transaction is retried).
AlsoRead = Callable[[redis.client.Pipeline], None]

DEFAULT_FINISHED_TTL_S = 7 * 86_400.0

# Write one field of a job that is still unfinished; 0 when it is gone or finished, so a
# worker never writes into a cancelled job, nor brings back an expired one as a stub.
_SET_IF_UNFINISHED = (
    "local status = redis.call('hget', KEYS[1], 'status') "
    "if not status or status == 'published' or status == 'failed' or status == 'cancelled' "
    "then return 0 end redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) return 1"
)


class JobStore:
    def __init__(self, client: redis.Redis, finished_ttl_s: float = DEFAULT_FINISHED_TTL_S) -> None:
        self._redis = client
        self.finished_ttl_s = finished_ttl_s

    def get(self, job_id: str) -> Job:
        raw = self._redis.hgetall(keys.job(job_id))
        if not raw:
            raise NotFound(f"job not found: {job_id}")
        return Job(
            id=job_id,
            tenant=decode(raw[b"tenant"]),
            module=decode(raw[b"module"]),
            status=JobStatus(decode(raw[b"status"])),
            version=int(raw[b"version"]) if b"version" in raw else None,
            error=decode(raw[b"error"]) if b"error" in raw else None,
            progress=json.loads(raw.get(b"progress", b"{}")),
            attempts=int(raw.get(b"attempts", 0)),
            created_at_s=float(raw.get(b"created_at_s", 0)),
            kind=decode(raw.get(b"kind", b"add")),
            training=json.loads(raw.get(b"training", b"{}")),
        )

    def status(self, job_id: str) -> JobStatus | None:
        """The job's status; None once it has expired."""
        raw = self._redis.hget(keys.job(job_id), "status")
        return JobStatus(decode(raw)) if raw is not None else None

    def transition(
        self,
        job_id: str,
        new: JobStatus,
        also: AlsoWrite | None = None,
        read: AlsoRead | None = None,
        watch: tuple[str, ...] = (),
        **fields: Any,
    ) -> None:
        """Move a job to `new` if the lifecycle allows it, atomically against other writers;
        `also` adds writes that must happen in the same transaction or not at all, `read`
        reads what they depend on, from keys named in `watch`."""

        def write(pipe: redis.client.Pipeline) -> None:
            current, tenant = pipe.hmget(keys.job(job_id), "status", "tenant")
            if current is None:
                raise NotFound(f"job not found: {job_id}")
            if JobStatus(decode(current)) is JobStatus.CANCELLED:
                raise JobCancelled(job_id, decode(current), new.value)
            if not can_transition(JobStatus(decode(current)), new):
                raise InvalidTransition(job_id, decode(current), new.value)
            if read is not None:
                read(pipe)
            pipe.multi()
            mapping = {"status": new.value, "updated_at_s": time.time()}
            mapping.update({k: encode(v) for k, v in fields.items() if v is not None})
            pipe.hset(keys.job(job_id), mapping=mapping)
            if new in TERMINAL:  # finished jobs do not pile up in Redis
                pipe.expire(keys.job(job_id), max(0, round(self.finished_ttl_s)))
                if tenant is not None:
                    pipe.srem(keys.tenant_open_jobs(decode(tenant)), job_id)
            if also is not None:
                also(pipe)

        self._redis.transaction(write, keys.job(job_id), *watch)

    def finish(
        self,
        job_id: str,
        version: int | None = None,
        also: AlsoWrite | None = None,
        read: AlsoRead | None = None,
        watch: tuple[str, ...] = (),
    ) -> None:
        """The job's work is served (`version`), or needed no new version (a retire)."""
        self.transition(
            job_id, JobStatus.PUBLISHED, also=also, read=read, watch=watch, version=version
        )

    def fail(self, job_id: str, error: str) -> None:
        self.transition(job_id, JobStatus.FAILED, error=error)

    def skip_to_publishing(self, job_id: str, progress: dict[str, Any]) -> None:
        """Walk the lifecycle to publishing for a job that trains nothing (`progress` says
        why), so that its status history reads the same as every other job's."""
        self.transition(job_id, JobStatus.TRAINING, progress=progress)
        self.transition(job_id, JobStatus.VALIDATING)
        self.transition(job_id, JobStatus.PUBLISHING)

    def open_of_tenant(self, tenant: str) -> list[Job]:
        """The tenant's jobs not yet published or failed, oldest first."""
        jobs = []
        for job_id in self._redis.smembers(keys.tenant_open_jobs(tenant)):
            try:
                jobs.append(self.get(decode(job_id)))
            except NotFound:  # finished and expired between the two reads
                continue
        return sorted(jobs, key=lambda j: (j.created_at_s, j.id))

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> bool:
        """False, writing nothing, when the job is no longer running (cancelled, or
        finished by another worker): the caller must stop."""
        return self._set_if_unfinished(job_id, "progress", json.dumps(progress))

    def record_deliveries(self, job_id: str, deliveries: int) -> None:
        """How often the queue has handed this job to a worker (its attempts so far)."""
        self._set_if_unfinished(job_id, "attempts", deliveries)

    def _set_if_unfinished(self, job_id: str, field: str, value: str | int) -> bool:
        return bool(self._redis.eval(_SET_IF_UNFINISHED, 1, keys.job(job_id), field, value))

    def cancel(self, job_id: str, tenant: str) -> Job:
        """Cancel an unfinished job of `tenant` (another tenant's job: NotFound). A queued
        job never runs; a running one is abandoned by its worker at its next write, and
        nothing is published for it. The facts of a cancelled "add" job stay stored and
        in their module: the module's next job learns them. Until then no published
        version knows them; they are listed in the job's `progress.unlearned_fact_ids`."""
        job = self.get(job_id)
        if job.tenant != tenant:
            raise NotFound(f"job not found: {job_id}")
        if job.kind not in CANCELLABLE_KINDS:
            raise Conflict(
                f"job {job_id} cannot be cancelled: {job.kind} jobs are what make the served "
                "module forget the old text, which is already gone from storage",
                param="job_id",
            )
        unlearned: list[str] = []

        def read(pipe: redis.client.Pipeline) -> None:
            unlearned[:] = _unlearned_facts(pipe, job.module)

        def also(pipe: redis.client.Pipeline) -> None:
            progress = {**job.progress, "unlearned_fact_ids": unlearned}
            pipe.hset(keys.job(job_id), "progress", json.dumps(progress))

        watch = (keys.module(job.module), keys.module_facts(job.module))
        try:
            self.transition(
                job_id,
                JobStatus.CANCELLED,
                also=also,
                read=read,
                watch=watch,
                error="cancelled by the client",
            )
        except InvalidTransition as exc:  # finished meanwhile, or already cancelled
            current = self.get(job_id).status.value
            raise Conflict(f"job {job_id} is already {current}", param="job_id") from exc
        job.status, job.error = JobStatus.CANCELLED, "cancelled by the client"
        job.progress = {**job.progress, "unlearned_fact_ids": unlearned}
        return job  # not read back: with a retention of 0 it is already gone


def _unlearned_facts(pipe: redis.client.Pipeline, module: str) -> list[str]:
    """The module's facts that its active version was not trained on."""
    facts = {decode(f) for f in pipe.smembers(keys.module_facts(module))}
    active = int(pipe.hget(keys.module(module), "active_version") or 0)
    trained = pipe.hget(keys.version(module, active), "fact_ids") if active else None
    return sorted(facts - set(json.loads(trained) if trained else []))
