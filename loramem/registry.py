"""The registry: facts, modules, versions and jobs in Redis.

Every write that must not be seen half-done is one MULTI/EXEC transaction (with WATCH where
it reads first). Key names come from loramem.keys only.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from loramem import keys
from loramem.errors import Conflict, InvalidRequest, NotFound
from loramem.jobs import InvalidTransition, JobStatus, can_transition


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def served_name(module: str, version: int) -> str:
    """The immutable engine-side name of one module version."""
    return f"{module}@v{version}"


def merge_recipe(sources: list[str], weights: list[float] | None) -> tuple[list[str], list[float]]:
    """Sources in name order with their weights (default: 1.0 each, a plain sum)."""
    pairs = sorted(zip(sources, map(float, weights or [1.0] * len(sources)), strict=True))
    return [m for m, _ in pairs], [w for _, w in pairs]


def merged_module_name(
    tenant: str, sources: list[str], combination: str, weights: list[float] | None = None
) -> str:
    """The same tenant, sources, combination and weights (in any order) always name the
    same merged module; its versions follow the sources' versions."""
    recipe = [tenant, combination, *merge_recipe(sources, weights)]
    return "mx-" + hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]


def merged_rank(ranks: list[int], combination: str, max_rank: int) -> int:
    """`cat` stacks the sources' ranks, which must fit the engine; `ties` and `linear`
    combine the weight updates and refactor them at the largest rank that is exact
    (the sum) and that the engine serves."""
    if combination == "cat":
        if sum(ranks) > max_rank:
            raise InvalidRequest(
                f"a cat merge has rank {sum(ranks)}, above the engine's max LoRA rank {max_rank}",
                param="combination",
            )
        return sum(ranks)
    return min(sum(ranks), max_rank)


def source_signature(versions: Mapping[str, int]) -> str:
    """The exact source versions of a merge, e.g. "a@v2,b@v1"."""
    return ",".join(served_name(m, v) for m, v in sorted(versions.items()))


def merge_is_current(built_from: Mapping[str, int], active: Mapping[str, int]) -> bool:
    """A merged version is stale once any source published a new version or was retired."""
    return bool(built_from) and all(active.get(m) == v for m, v in built_from.items())


@dataclass(frozen=True)
class Fact:
    id: str
    tenant: str
    text: str
    module: str
    embedding: bytes = b""


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    tenant: str
    active_version: int  # 0 while no version is published
    fact_count: int

    @property
    def active_name(self) -> str | None:
        return served_name(self.name, self.active_version) if self.active_version else None


@dataclass(frozen=True)
class VersionInfo:
    module: str
    version: int
    tenant: str
    fact_ids: list[str]
    recall: float
    checksum: str
    train_config: dict[str, Any]
    # A merged module's version: the source module versions it was built from.
    merged_from: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return served_name(self.module, self.version)


@dataclass(frozen=True)
class MergeSpec:
    """A merged module: PEFT's weighted combination of its sources' active versions."""

    name: str
    tenant: str
    sources: list[str]
    combination: str  # "ties", "linear" or "cat"
    weights: list[float]  # one per source
    active_version: int  # 0 until a build is published


@dataclass
class Job:
    id: str
    tenant: str
    module: str
    status: JobStatus
    version: int | None = None
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    created_at_s: float = 0.0
    # "add" only grows a module, so training may start from its active version's weights;
    # "edit" and "delete" must unlearn, so they train from scratch.
    kind: str = "add"
    overrides: dict[str, Any] = field(default_factory=dict)  # training knobs for this job

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "module": self.module,
            "version": self.version,
            "progress": self.progress,
            "error": self.error,
        }


def decode(value: Any) -> str:
    """Redis replies are bytes; keys and fields are read back as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class Registry:
    def __init__(self, client: redis.Redis, module_capacity_facts: int = 64) -> None:
        self.r = client
        self.module_capacity_facts = module_capacity_facts

    @classmethod
    def from_url(cls, url: str, module_capacity_facts: int = 64) -> Registry:
        return cls(redis.Redis.from_url(url), module_capacity_facts)

    # ------------------------------------------------------------------ facts
    def add_facts(
        self,
        tenant: str,
        texts: list[str],
        fact_ids: list[str | None],
        embeddings: list[bytes],
        module: str | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> tuple[Job, list[str]]:
        """Store facts and queue the job that trains them into a module, atomically."""
        ids = [fid or new_id() for fid in fact_ids]
        if len(set(ids)) != len(ids):
            raise Conflict("fact ids in one request must be unique", param="facts")
        job = Job(
            id=new_id(),
            tenant=tenant,
            module="",
            status=JobStatus.QUEUED,
            overrides=overrides or {},
        )

        def write(pipe: redis.client.Pipeline) -> None:
            existing = [fid for fid in ids if pipe.exists(keys.fact(tenant, fid))]
            if existing:
                raise Conflict(f"fact id already exists: {existing[0]}", param="facts")
            target = module or self._packing_target(pipe, tenant, len(ids))
            owner = pipe.hget(keys.module(target), "tenant")
            if owner is not None and decode(owner) != tenant:
                raise Conflict(f"module name is taken: {target}", param="module")
            if pipe.hexists(keys.module(target), "sources"):  # its facts belong to its sources
                raise Conflict(f"module {target} is a merged module", param="module")
            job.module = target
            now = time.time()
            pipe.multi()
            if owner is None:
                pipe.hset(
                    keys.module(target),
                    mapping={"tenant": tenant, "active_version": 0, "created_at_s": now},
                )
                pipe.sadd(keys.tenant_modules(tenant), target)
            if module is None:
                pipe.set(keys.tenant_open_module(tenant), target)
            for fid, text, emb in zip(ids, texts, embeddings, strict=True):
                pipe.hset(
                    keys.fact(tenant, fid),
                    mapping={"text": text, "module": target, "embedding": emb, "created_at_s": now},
                )
            pipe.sadd(keys.tenant_facts(tenant), *ids)
            pipe.sadd(keys.module_facts(target), *ids)
            pipe.sadd(keys.tenants(), tenant)
            self._queue_job(pipe, job)

        watched = [keys.tenant_open_module(tenant)] + [keys.fact(tenant, f) for f in ids]
        if module:
            watched.append(keys.module(module))
        self.r.transaction(write, *watched)
        return job, ids

    def _packing_target(self, pipe: redis.client.Pipeline, tenant: str, count: int) -> str:
        """The tenant's open module while it has room, else a fresh one."""
        open_module = pipe.get(keys.tenant_open_module(tenant))
        if open_module is not None:
            name = decode(open_module)
            pipe.watch(keys.module_facts(name))
            if pipe.scard(keys.module_facts(name)) + count <= self.module_capacity_facts:
                return name
        return "m-" + new_id()[:10]

    def _queue_job(self, pipe: redis.client.Pipeline, job: Job) -> None:
        job.created_at_s = time.time()
        pipe.hset(
            keys.job(job.id),
            mapping={
                "tenant": job.tenant,
                "module": job.module,
                "kind": job.kind,
                "overrides": json.dumps(job.overrides),
                "status": job.status.value,
                "progress": "{}",
                "attempts": 0,
                "created_at_s": job.created_at_s,
            },
        )
        pipe.xadd(keys.JOBS_STREAM, {"job_id": job.id})

    def replace_fact(self, tenant: str, fact_id: str, text: str, embedding: bytes) -> Job:
        """New text for a fact, and the job that retrains its module with it."""
        return self._change_fact(tenant, fact_id, {"text": text, "embedding": embedding})

    def delete_fact(self, tenant: str, fact_id: str) -> Job:
        """Remove a fact, and queue the job that retrains its module without it."""
        return self._change_fact(tenant, fact_id, None)

    def _change_fact(self, tenant: str, fact_id: str, update: dict[str, Any] | None) -> Job:
        key = keys.fact(tenant, fact_id)
        kind = "delete" if update is None else "edit"
        job = Job(id=new_id(), tenant=tenant, module="", status=JobStatus.QUEUED, kind=kind)

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
            self._queue_job(pipe, job)

        self.r.transaction(write, key)
        return job

    def split_module(self, module: str, fact_ids: list[str], overrides: dict[str, Any]) -> Job:
        """Move facts into a new module of the same tenant and queue its training job."""
        tenant = self.get_module(module).tenant
        target = f"{module[:37]}-s{new_id()[:6]}"
        job = Job(id=new_id(), tenant=tenant, module=target, status=JobStatus.QUEUED,
                  overrides=overrides)  # fmt: skip
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            keys.module(target),
            mapping={"tenant": tenant, "active_version": 0, "created_at_s": time.time()},
        )
        pipe.sadd(keys.tenant_modules(tenant), target)
        pipe.srem(keys.module_facts(module), *fact_ids)
        pipe.sadd(keys.module_facts(target), *fact_ids)
        for fact_id in fact_ids:
            pipe.hset(keys.fact(tenant, fact_id), "module", target)
        self._queue_job(pipe, job)
        pipe.execute()
        return job

    def get_fact(self, tenant: str, fact_id: str) -> Fact:
        raw = self.r.hgetall(keys.fact(tenant, fact_id))
        if not raw:
            raise NotFound(f"fact not found: {fact_id}")
        return _fact(tenant, fact_id, raw)

    def list_facts(self, tenant: str) -> list[Fact]:
        ids = sorted(decode(i) for i in self.r.smembers(keys.tenant_facts(tenant)))
        return self.facts_by_id(tenant, ids)

    def module_facts(self, module: str) -> list[Fact]:
        tenant = self.get_module(module).tenant
        ids = sorted(decode(i) for i in self.r.smembers(keys.module_facts(module)))
        return self.facts_by_id(tenant, ids)

    def facts_by_id(self, tenant: str, ids: Iterable[str]) -> list[Fact]:
        ids = list(ids)
        pipe = self.r.pipeline(transaction=False)
        for fid in ids:
            pipe.hgetall(keys.fact(tenant, fid))
        return [
            _fact(tenant, fid, raw) for fid, raw in zip(ids, pipe.execute(), strict=True) if raw
        ]

    # ---------------------------------------------------------------- modules
    def get_module(self, name: str) -> ModuleInfo:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(keys.module(name))
        pipe.scard(keys.module_facts(name))
        raw, count = pipe.execute()
        if not raw:
            raise NotFound(f"module not found: {name}")
        return ModuleInfo(
            name=name,
            tenant=decode(raw[b"tenant"]),
            active_version=int(raw.get(b"active_version", 0)),
            fact_count=int(count),
        )

    def list_modules(self, tenant: str) -> list[ModuleInfo]:
        names = sorted(decode(n) for n in self.r.smembers(keys.tenant_modules(tenant)))
        return [self.get_module(n) for n in names]

    def list_tenants(self) -> list[str]:
        return sorted(decode(t) for t in self.r.smembers(keys.tenants()))

    def next_version(self, module: str) -> int:
        """Versions only ever grow, even when a publish fails after taking a number."""
        return int(self.r.hincrby(keys.module(module), "version_seq", 1))

    def publish_version(
        self, info: VersionInfo, files: dict[str, bytes], job_id: str | None = None
    ) -> None:
        """Record a version, switch the active pointer and announce it, in one step."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            keys.version(info.module, info.version),
            mapping={
                "tenant": info.tenant,
                "fact_ids": json.dumps(info.fact_ids),
                "recall": info.recall,
                "checksum": info.checksum,
                "train_config": json.dumps(info.train_config),
                "merged_from": json.dumps(info.merged_from),
                "created_at_s": time.time(),
            },
        )
        if files:
            pipe.hset(keys.version_files(info.module, info.version), mapping=files)
        pipe.hset(keys.module(info.module), "active_version", info.version)
        if job_id is not None:
            pipe.hset(keys.job(job_id), mapping={"status": "published", "version": info.version})
        pipe.xadd(
            keys.EVENTS_STREAM,
            {
                "type": "published",
                "module": info.module,
                "version": info.version,
                "tenant": info.tenant,
                "job_id": job_id or "",
            },
            maxlen=keys.EVENTS_STREAM_MAXLEN,
            approximate=True,
        )
        pipe.execute()

    def retire_module(self, module: str, tenant: str, job_id: str | None = None) -> None:
        """A module left with no facts serves nothing: clear its active version."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.module(module), "active_version", 0)
        if job_id is not None:
            pipe.hset(
                keys.job(job_id), mapping={"status": "published", "updated_at_s": time.time()}
            )
        pipe.xadd(
            keys.EVENTS_STREAM,
            {"type": "retired", "module": module, "tenant": tenant},
            maxlen=keys.EVENTS_STREAM_MAXLEN,
            approximate=True,
        )
        pipe.execute()

    def get_version(self, module: str, version: int) -> VersionInfo:
        raw = self.r.hgetall(keys.version(module, version))
        if not raw:
            raise NotFound(f"version not found: {served_name(module, version)}")
        return VersionInfo(
            module=module,
            version=version,
            tenant=decode(raw[b"tenant"]),
            fact_ids=json.loads(raw[b"fact_ids"]),
            recall=float(raw[b"recall"]),
            checksum=decode(raw[b"checksum"]),
            train_config=json.loads(raw[b"train_config"]),
            merged_from=json.loads(raw.get(b"merged_from", b"{}")),
        )

    def version_files(self, module: str, version: int) -> dict[str, bytes]:
        raw = self.r.hgetall(keys.version_files(module, version))
        return {decode(k): v for k, v in raw.items()}

    def events_after(self, last_id: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        reply = self.r.xread({keys.EVENTS_STREAM: last_id}, block=block_ms, count=1000)
        events: list[tuple[str, dict[str, str]]] = []
        for _stream, entries in reply or []:
            for entry_id, data in entries:
                events.append((decode(entry_id), {decode(k): decode(v) for k, v in data.items()}))
        return events

    def last_event_id(self) -> str:
        last = self.r.xrevrange(keys.EVENTS_STREAM, count=1)
        return decode(last[0][0]) if last else "0-0"

    # ----------------------------------------------------------------- merges
    def request_merge(
        self, tenant: str, sources: list[str], combination: str, weights: list[float] | None
    ) -> tuple[Job, bool]:
        """Queue the build of a merged module from the sources' active versions, once.

        Returns (job, queued): a build of the same source versions that is queued, running
        or published is returned instead of queueing another (queued False).
        """
        sources, weights = merge_recipe(sources, weights)
        name = merged_module_name(tenant, sources, combination, weights)
        job = Job(id=new_id(), tenant=tenant, module=name, status=JobStatus.QUEUED, kind="merge")
        existing: list[str] = []

        def write(pipe: redis.client.Pipeline) -> None:
            existing.clear()
            versions = self._merge_sources(pipe, tenant, sources)
            request_key = keys.merge_request(name, source_signature(versions))
            pipe.watch(request_key)
            earlier = pipe.get(request_key)
            if earlier is not None:
                status = pipe.hget(keys.job(decode(earlier)), "status")
                if status is not None and decode(status) != JobStatus.FAILED.value:
                    existing.append(decode(earlier))
                    return
            fresh = not pipe.exists(keys.module(name))
            pipe.multi()
            if fresh:
                pipe.hset(
                    keys.module(name),
                    mapping={
                        "tenant": tenant,
                        "active_version": 0,
                        "created_at_s": time.time(),
                        "sources": json.dumps(sources),
                        "combination": combination,
                        "weights": json.dumps(weights),
                    },
                )
                pipe.sadd(keys.tenant_modules(tenant), name)
                pipe.sadd(keys.tenant_merges(tenant), name)
            pipe.set(request_key, job.id, ex=keys.MERGE_REQUEST_TTL_S)
            self._queue_job(pipe, job)

        self.r.transaction(write, keys.module(name), *[keys.module(s) for s in sources])
        if existing:
            return self.get_job(existing[0]), False
        return job, True

    def _merge_sources(
        self, client: redis.Redis | redis.client.Pipeline, tenant: str, sources: list[str]
    ) -> dict[str, int]:
        """Active versions of the sources; refuse foreign, unpublished or merged ones.
        `client` answers at once: the Redis client, or a pipeline while it WATCHes."""
        versions = {}
        for source in sources:
            raw = client.hgetall(keys.module(source))
            if not raw or decode(raw[b"tenant"]) != tenant:  # foreign looks like absent
                raise NotFound(f"module not found: {source}", param="modules")
            if b"sources" in raw:
                raise InvalidRequest(f"module {source} is itself a merge", param="modules")
            active = int(raw.get(b"active_version", 0))
            if not active:
                raise Conflict(f"module {source} has no published version yet", param="modules")
            versions[source] = active
        return versions

    def source_versions(self, tenant: str, sources: list[str]) -> dict[str, int]:
        """The sources' active versions now (what a merge build starts from)."""
        return self._merge_sources(self.r, tenant, sources)

    def get_merge(self, name: str) -> MergeSpec:
        raw = self.r.hgetall(keys.module(name))
        if not raw or b"sources" not in raw:
            raise NotFound(f"merged module not found: {name}")
        return MergeSpec(
            name=name,
            tenant=decode(raw[b"tenant"]),
            sources=json.loads(raw[b"sources"]),
            combination=decode(raw[b"combination"]),
            weights=json.loads(raw[b"weights"]),
            active_version=int(raw.get(b"active_version", 0)),
        )

    def list_merges(self, tenant: str) -> list[MergeSpec]:
        names = sorted(decode(n) for n in self.r.smembers(keys.tenant_merges(tenant)))
        return [self.get_merge(n) for n in names]

    def merge_current(self, spec: MergeSpec) -> bool:
        """Whether the published merged version was built from the sources' active versions."""
        if not spec.active_version:
            return False
        built_from = self.get_version(spec.name, spec.active_version).merged_from
        active = {m.name: m.active_version for m in map(self.get_module, spec.sources)}
        return merge_is_current(built_from, active)

    # ------------------------------------------------------------------- jobs
    def get_job(self, job_id: str) -> Job:
        raw = self.r.hgetall(keys.job(job_id))
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
            overrides=json.loads(raw.get(b"overrides", b"{}")),
        )

    def transition(self, job_id: str, new: JobStatus, **fields: Any) -> None:
        """Move a job to `new` if the lifecycle allows it; atomic against other writers."""

        def write(pipe: redis.client.Pipeline) -> None:
            current = pipe.hget(keys.job(job_id), "status")
            if current is None:
                raise NotFound(f"job not found: {job_id}")
            if not can_transition(JobStatus(decode(current)), new):
                raise InvalidTransition(job_id, decode(current), new.value)
            pipe.multi()
            mapping = {"status": new.value, "updated_at_s": time.time()}
            mapping.update({k: _encode(v) for k, v in fields.items()})
            pipe.hset(keys.job(job_id), mapping=mapping)

        self.r.transaction(write, keys.job(job_id))

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self.r.hset(keys.job(job_id), "progress", json.dumps(progress))

    def count_attempt(self, job_id: str) -> int:
        return int(self.r.hincrby(keys.job(job_id), "attempts", 1))


def _encode(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def _fact(tenant: str, fact_id: str, raw: dict[bytes, bytes]) -> Fact:
    return Fact(
        id=fact_id,
        tenant=tenant,
        text=decode(raw[b"text"]),
        module=decode(raw[b"module"]),
        embedding=raw.get(b"embedding", b""),
    )
