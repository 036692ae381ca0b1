"""Merged modules: the policy (naming, rank, staleness) as pure functions, and the
storage of merge specs and build requests beside it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from loramem import keys
from loramem.errors import Conflict, InvalidRequest, NotFound
from loramem.names import module_id, module_name, new_job_id, version_name
from loramem.registry.codec import decode
from loramem.registry.jobs import Job, JobStatus, JobStore, stage_job
from loramem.registry.modules import ModuleStore, stage_module

# ------------------------------------------------------------------------------ policy


def merge_recipe(sources: list[str], weights: list[float] | None) -> tuple[list[str], list[float]]:
    """Sources in name order with their weights (default: 1.0 each, a plain sum)."""
    pairs = sorted(zip(sources, map(float, weights or [1.0] * len(sources)), strict=True))
    return [m for m, _ in pairs], [w for _, w in pairs]


def merged_module_name(
    tenant: str, sources: list[str], combination: str, weights: list[float] | None = None
) -> str:
    """The same tenant, sources (module ids), combination and weights (in any order)
    always name the same merged module (the id is returned); its versions follow the
    sources' versions."""
    recipe = [tenant, combination, *merge_recipe(sources, weights)]
    return module_id(tenant, "mx-" + hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12])


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
    return ",".join(version_name(m, v) for m, v in sorted(versions.items()))


def merge_is_current(built_from: Mapping[str, int], active: Mapping[str, int]) -> bool:
    """A merged version is stale once any source published a new version or was retired."""
    return bool(built_from) and all(active.get(m) == v for m, v in built_from.items())


# ----------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class MergeSpec:
    """A merged module: PEFT's weighted combination of its sources' active versions."""

    name: str
    tenant: str
    sources: list[str]
    combination: str  # "ties", "linear" or "cat"
    weights: list[float]  # one per source
    active_version: int  # 0 until a build is published


class MergeStore:
    def __init__(self, client: redis.Redis, modules: ModuleStore, jobs: JobStore) -> None:
        self._redis = client
        self._modules = modules
        self._jobs = jobs

    def request(
        self, tenant: str, sources: list[str], combination: str, weights: list[float] | None
    ) -> tuple[Job, bool]:
        """Queue the build of a merged module from the sources' active versions, once.

        Returns (job, queued): a build of the same source versions that is queued, running
        or published is returned instead of queueing another (queued False).
        """
        sources, weights = merge_recipe(sources, weights)
        name = merged_module_name(tenant, sources, combination, weights)
        job = Job(id=new_job_id(tenant), tenant=tenant, module=name, kind="merge")
        existing: list[str] = []

        def write(pipe: redis.client.Pipeline) -> None:
            existing.clear()
            versions = _source_versions(pipe, tenant, sources)
            request_key = keys.merge_request(name, source_signature(versions))
            pipe.watch(request_key)
            earlier = pipe.get(request_key)
            if earlier is not None:
                status = pipe.hget(keys.job(decode(earlier)), "status")
                ended = (JobStatus.FAILED.value, JobStatus.CANCELLED.value)  # ask again
                if status is not None and decode(status) not in ended:
                    existing.append(decode(earlier))
                    return
            fresh = not pipe.exists(keys.module(name))
            pipe.multi()
            if fresh:
                stage_module(
                    pipe,
                    tenant,
                    name,
                    sources=json.dumps(sources),
                    combination=combination,
                    weights=json.dumps(weights),
                )
                pipe.sadd(keys.tenant_merges(tenant), name)
            pipe.set(request_key, job.id, ex=keys.MERGE_REQUEST_TTL_S)
            stage_job(pipe, job)

        self._redis.transaction(write, keys.module(name), *[keys.module(s) for s in sources])
        if existing:
            return self._jobs.get(existing[0]), False
        return job, True

    def source_versions(self, tenant: str, sources: list[str]) -> dict[str, int]:
        """The sources' active versions now (what a merge build starts from)."""
        return _source_versions(self._redis, tenant, sources)

    def get(self, name: str) -> MergeSpec:
        raw = self._redis.hgetall(keys.module(name))
        if not raw or b"sources" not in raw:
            raise NotFound(f"merged module not found: {module_name(name)}")
        return MergeSpec(
            name=name,
            tenant=decode(raw[b"tenant"]),
            sources=json.loads(raw[b"sources"]),
            combination=decode(raw[b"combination"]),
            weights=json.loads(raw[b"weights"]),
            active_version=int(raw.get(b"active_version", 0)),
        )

    def of_tenant(self, tenant: str) -> list[MergeSpec]:
        names = sorted(decode(n) for n in self._redis.smembers(keys.tenant_merges(tenant)))
        return [self.get(n) for n in names]

    def built_from(self, spec: MergeSpec) -> dict[str, int]:
        """The source versions of the published merged version ({} before the first)."""
        if not spec.active_version:
            return {}
        return self._modules.version(spec.name, spec.active_version).merged_from

    def is_current(self, spec: MergeSpec) -> bool:
        """Whether the published merged version was built from the sources' active versions."""
        active = {m.name: m.active_version for m in map(self._modules.get, spec.sources)}
        return merge_is_current(self.built_from(spec), active)


def _source_versions(
    client: redis.Redis | redis.client.Pipeline, tenant: str, sources: list[str]
) -> dict[str, int]:
    """Active versions of the sources; refuse foreign, unpublished or merged ones.
    `client` answers at once: the Redis client, or a pipeline while it WATCHes."""
    versions = {}
    for source in sources:
        raw = client.hgetall(keys.module(source))
        if not raw or decode(raw[b"tenant"]) != tenant:  # foreign looks like absent
            raise NotFound(f"module not found: {module_name(source)}", param="modules")
        if b"sources" in raw:
            raise InvalidRequest(f"module {module_name(source)} is itself a merge", param="modules")
        active = int(raw.get(b"active_version", 0))
        if not active:
            raise Conflict(
                f"module {module_name(source)} has no published version yet", param="modules"
            )
        versions[source] = active
    return versions
