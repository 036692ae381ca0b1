"""Facts: storing them, packing them into modules, editing, deleting and splitting.

Every change to facts queues, in the same transaction, the job that retrains their module,
and announces the change (a `facts_changed` event) so that routers answer the new text
from context until a version trained on it is published (router/pending.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from loramem import keys
from loramem.errors import Conflict, NotFound
from loramem.names import (
    delta_id,
    is_module_of,
    is_reserved_module_name,
    module_id,
    module_name,
    new_id,
    new_job_id,
)
from loramem.registry.codec import decode
from loramem.registry.jobs import TERMINAL, Job, JobStatus, stage_job
from loramem.registry.limits import TenantQuotas
from loramem.registry.modules import announce, stage_module


@dataclass(frozen=True)
class Fact:
    id: str
    tenant: str
    text: str
    module: str
    embedding: bytes = b""


class FactStore:
    def __init__(
        self, client: redis.Redis, module_capacity_facts: int, delta_adds: bool = False
    ) -> None:
        self._redis = client
        self.module_capacity_facts = module_capacity_facts
        self.delta_adds = delta_adds  # settings.py: packed adds train alone into a delta

    def add(
        self,
        tenant: str,
        texts: list[str],
        fact_ids: list[str | None],
        embeddings: list[bytes],
        module: str | None = None,
        training: dict[str, Any] | None = None,
        quotas: TenantQuotas | None = None,
    ) -> tuple[Job, list[str]]:
        """Store facts and queue the job that trains them into a module, atomically; over
        a quota (checked in the same transaction) nothing is stored. `module` is the id of
        a module of `tenant` (loramem/names.py module_id); None packs the facts."""
        ids = [fid or new_id() for fid in fact_ids]
        _check_namespace(tenant, module)
        if len(set(ids)) != len(ids):
            raise Conflict("fact ids in one request must be unique", param="facts")
        job = Job(id=new_job_id(tenant), tenant=tenant, module="", training=training or {})

        def write(pipe: redis.client.Pipeline) -> None:
            existing = [fid for fid in ids if pipe.exists(keys.fact(tenant, fid))]
            if existing:
                raise Conflict(f"fact id already exists: {existing[0]}", param="facts")
            target = module or self._packing_target(pipe, tenant, len(ids))
            exists = _check_target(pipe, tenant, target, chosen=module is not None)
            if quotas is not None:
                quotas.check(pipe, tenant, len(ids), new_module=not exists)
            # An open module that holds facts already: the new ones train alone, into a
            # delta of it (its cost then does not grow with the module's), until an idle
            # worker consolidates them into it.
            job.module = target if module else self._delta_of(pipe, target)
            now = time.time()
            pipe.multi()
            _stage_modules(pipe, tenant, target, exists, job.module)
            if module is None:
                pipe.set(keys.tenant_open_module(tenant), target)
            for fid, text, emb in zip(ids, texts, embeddings, strict=True):
                pipe.hset(
                    keys.fact(tenant, fid),
                    mapping={
                        "text": text,
                        "module": job.module,
                        "embedding": emb,
                        "created_at_s": now,
                    },
                )
            pipe.sadd(keys.tenant_facts(tenant), *ids)
            pipe.sadd(keys.module_facts(job.module), *ids)
            pipe.sadd(keys.tenants(keys.bucket(tenant)), tenant)
            stage_job(pipe, job)
            _announce_change(pipe, job, "add", ids)

        watched = [keys.tenant_open_module(tenant)] + [keys.fact(tenant, f) for f in ids]
        if module:
            watched.append(keys.module(module))
        if quotas is not None:
            watched += quotas.watched(tenant)
        self._redis.transaction(write, *watched)
        return job, ids

    def _delta_of(self, pipe: redis.client.Pipeline, target: str) -> str:
        """A fresh delta of the open module `target` when it holds facts (and deltas are
        on), else `target` itself."""
        if self.delta_adds and pipe.scard(keys.module_facts(target)):
            return delta_id(target)
        return target

    def _packing_target(self, pipe: redis.client.Pipeline, tenant: str, count: int) -> str:
        """The tenant's open module while it has room (counting its deltas' facts, which
        consolidation brings into it), else a fresh one."""
        open_module = pipe.get(keys.tenant_open_module(tenant))
        if open_module is not None:
            name = decode(open_module)
            pipe.watch(keys.module_facts(name), keys.module_deltas(name))
            held = [name] + [decode(d) for d in pipe.smembers(keys.module_deltas(name))]
            pipe.watch(*[keys.module_facts(m) for m in held])
            if (
                sum(pipe.scard(keys.module_facts(m)) for m in held) + count
                <= self.module_capacity_facts
            ):
                return name
        return module_id(tenant, "m-" + new_id()[:10])

    def replace(self, tenant: str, fact_id: str, text: str, embedding: bytes) -> Job:
        """New text for a fact, and the job that retrains its module with it."""
        return self._change(tenant, fact_id, {"text": text, "embedding": embedding})

    def delete(self, tenant: str, fact_id: str) -> Job:
        """Remove a fact, and queue the job that retrains its module without it."""
        return self._change(tenant, fact_id, None)

    def _change(self, tenant: str, fact_id: str, update: dict[str, Any] | None) -> Job:
        key = keys.fact(tenant, fact_id)
        kind = "delete" if update is None else "edit"
        job = Job(id=new_job_id(tenant), tenant=tenant, module="", kind=kind)

        def write(pipe: redis.client.Pipeline) -> None:
            module = pipe.hget(key, "module")
            if module is None:
                raise NotFound(f"fact not found: {fact_id}", param="fact_id")
            job.module = decode(module)
            pipe.multi()
            if update is None:
                pipe.delete(key)
                pipe.srem(keys.tenant_facts(tenant), fact_id)
                pipe.srem(keys.module_facts(job.module), fact_id)
            else:
                pipe.hset(key, mapping=update)
            stage_job(pipe, job)
            _announce_change(pipe, job, job.kind, [fact_id])

        self._redis.transaction(write, key)
        return job

    def split(
        self,
        module: str,
        tenant: str,
        fact_ids: list[str],
        training: dict[str, Any],
        sources: Iterable[str] = (),
        moved_from: dict[str, Any] | None = None,
    ) -> Job:
        """Move facts of `module` (or of `sources`: a consolidation's deltas) into a new
        module of the same tenant and queue its training job, which shows `moved_from` in
        its progress. Atomic against edits and deletes (WATCH on each fact): a fact deleted
        or moved since the trainer read it is skipped, never brought back as a text-less
        hash. The move is announced as an add by the new job: until it publishes, no
        active version will hold the facts, so routers answer them from context."""
        target = module_id(tenant, f"{module_name(module)[:37]}-s{new_id()[:6]}")
        job = Job(id=new_job_id(tenant), tenant=tenant, module=target, training=training)
        if moved_from is not None:
            job.progress = {"moved_from": moved_from}
        owners_allowed = {module.encode(), *(s.encode() for s in sources)}

        def write(pipe: redis.client.Pipeline) -> None:
            owners = [pipe.hget(keys.fact(tenant, fid), "module") for fid in fact_ids]
            moving = [(f, o) for f, o in zip(fact_ids, owners, strict=True) if o in owners_allowed]
            pipe.multi()
            stage_module(pipe, tenant, target)
            for fact_id, owner in moving:
                pipe.srem(keys.module_facts(decode(owner)), fact_id)
                pipe.sadd(keys.module_facts(target), fact_id)
                pipe.hset(keys.fact(tenant, fact_id), "module", target)
            stage_job(pipe, job)  # no fact left to move: the job retires the empty module
            if moving:
                _announce_change(pipe, job, "add", [fact_id for fact_id, _o in moving])

        self._redis.transaction(write, *[keys.fact(tenant, fid) for fid in fact_ids])
        return job

    def deltas_to_fold(self, module: str, tenant: str) -> dict[str, list[Fact]]:
        """The module's deltas that consolidation may fold in now, with their facts: those
        with no job queued or running on them (an add not yet published, an edit)."""
        deltas = sorted(decode(d) for d in self._redis.smembers(keys.module_deltas(module)))
        open_jobs = [decode(j) for j in self._redis.smembers(keys.tenant_open_jobs(tenant))]
        pipe = self._redis.pipeline(transaction=False)
        for job_id in open_jobs:
            pipe.hget(keys.job(job_id), "module")
        busy = {decode(m) for m in pipe.execute() if m is not None}
        return {d: self.of_module(d, tenant) for d in deltas if d not in busy}

    def consolidations_due(
        self, min_deltas: int, after_s: float, retry_s: float = 0.0, now: float | None = None
    ) -> list[tuple[str, str]]:
        """(module, tenant) of every module with at least `min_deltas` deltas, or one made
        `after_s` or longer ago (settings.py consolidate_*), unless its last consolidation
        failed less than `retry_s` ago and no delta has been made since."""
        now = time.time() if now is None else now
        pipe = self._redis.pipeline(transaction=False)
        for bucket in keys.BUCKET_IDS:
            pipe.zrange(keys.deltas(bucket), 0, -1, withscores=True)
        made = [(decode(d), float(t)) for reply in pipe.execute() for d, t in reply]
        for delta, _t in made:
            pipe.hmget(keys.module(delta), "parent", "tenant")
        oldest: dict[tuple[str, str], list[float]] = {}
        for (_d, t), (parent, tenant) in zip(made, pipe.execute(), strict=True):
            if parent is not None and tenant is not None:
                oldest.setdefault((decode(parent), decode(tenant)), []).append(t)
        due = sorted(
            owner
            for owner, times in oldest.items()
            if len(times) >= min_deltas or now - min(times) >= after_s
        )
        return [
            (module, tenant)
            for module, tenant in due
            if not self._failed_lately(module, max(oldest[module, tenant]), retry_s, now)
        ]

    def _failed_lately(
        self, module: str, newest_delta_s: float, retry_s: float, now: float
    ) -> bool:
        """The module's last consolidation failed (below the gate) less than `retry_s` ago
        and no delta came since: the same facts would fail the same way, so an idle worker
        does not retrain the module again every scan."""
        last = self._redis.hget(keys.module(module), "consolidate_job")
        if last is None:
            return False
        status, created = self._redis.hmget(keys.job(decode(last)), "status", "created_at_s")
        if status is None or JobStatus(decode(status)) is not JobStatus.FAILED:
            return False
        started = float(created or 0)
        return now - started < retry_s and newest_delta_s <= started

    def queue_consolidation(self, module: str, tenant: str) -> Job | None:
        """Queue the job that retrains `module` with its deltas' facts and retires them;
        None when one is queued or running already."""
        job = Job(id=new_job_id(tenant), tenant=tenant, module=module, kind="consolidate")
        queued: list[Job] = []

        def write(pipe: redis.client.Pipeline) -> None:
            queued.clear()
            current = pipe.hget(keys.module(module), "consolidate_job")
            if current is not None:
                status = pipe.hget(keys.job(decode(current)), "status")
                if status is not None and JobStatus(decode(status)) not in TERMINAL:
                    return
            pipe.multi()
            stage_job(pipe, job)
            pipe.hset(keys.module(module), "consolidate_job", job.id)
            queued.append(job)

        self._redis.transaction(write, keys.module(module))
        return queued[0] if queued else None

    def get(self, tenant: str, fact_id: str) -> Fact:
        raw = self._redis.hgetall(keys.fact(tenant, fact_id))
        if not raw:
            raise NotFound(f"fact not found: {fact_id}")
        return _fact(tenant, fact_id, raw)

    def of_tenant(self, tenant: str) -> list[Fact]:
        ids = sorted(decode(i) for i in self._redis.smembers(keys.tenant_facts(tenant)))
        return self.by_id(tenant, ids)

    def of_module(self, module: str, tenant: str) -> list[Fact]:
        ids = sorted(decode(i) for i in self._redis.smembers(keys.module_facts(module)))
        return self.by_id(tenant, ids)

    def by_id(self, tenant: str, ids: Iterable[str]) -> list[Fact]:
        ids = list(ids)
        pipe = self._redis.pipeline(transaction=False)
        for fid in ids:
            pipe.hgetall(keys.fact(tenant, fid))
        return [
            _fact(tenant, fid, raw) for fid, raw in zip(ids, pipe.execute(), strict=True) if raw
        ]


def _announce_change(pipe: redis.client.Pipeline, job: Job, change: str, ids: list[str]) -> None:
    """`change` is "add", "edit" or "delete"; the job is the one that will train it."""
    announce(
        pipe,
        "facts_changed",
        tenant=job.tenant,
        module=job.module,
        job_id=job.id,
        change=change,
        fact_ids=json.dumps(ids),
    )


def _stage_modules(
    pipe: redis.client.Pipeline, tenant: str, target: str, exists: bool, trained: str
) -> None:
    """Create the target module unless it `exists`, and the delta of it that the job
    trains when that is not the target itself."""
    if not exists:
        stage_module(pipe, tenant, target)
    if trained != target:
        stage_module(pipe, tenant, trained, parent=target)
        pipe.sadd(keys.module_deltas(target), trained)
        pipe.zadd(keys.deltas(keys.bucket(tenant)), {trained: time.time()})


def _check_namespace(tenant: str, module: str | None) -> None:
    """An id outside `tenant`'s namespace is a bug; refused before the WATCH, which a
    cluster would refuse across hash slots anyway."""
    if module is not None and not is_module_of(tenant, module):
        raise ValueError(f"module {module!r} is not in tenant {tenant!r}'s namespace")


def _check_target(pipe: redis.client.Pipeline, tenant: str, target: str, chosen: bool) -> bool:
    """Whether the target module exists. Refuses, with one answer that does not say which,
    a merged module (its facts belong to its sources) and a new module that the client
    named (`chosen`) in a form the system names its own modules with (packed, split or
    merged: one chosen first would be squatted). Names are per tenant, so no other
    tenant's module is ever in question: an id outside `tenant`'s namespace is a bug."""
    if not is_module_of(tenant, target):
        raise ValueError(f"module {target!r} is not in tenant {tenant!r}'s namespace")
    raw = pipe.hmget(keys.module(target), "tenant", "sources")
    exists, merged = raw[0] is not None, raw[1] is not None
    if merged or (chosen and not exists and is_reserved_module_name(module_name(target))):
        raise Conflict(f"module name is not available: {module_name(target)}", param="module")
    return exists


def _fact(tenant: str, fact_id: str, raw: dict[bytes, bytes]) -> Fact:
    return Fact(
        id=fact_id,
        tenant=tenant,
        text=decode(raw[b"text"]),
        module=decode(raw[b"module"]),
        embedding=raw.get(b"embedding", b""),
    )
