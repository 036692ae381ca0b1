"""The registry: facts, modules and versions, merges and jobs in Redis, one store per
aggregate. Key names come from loramem.keys only. Every write that must not be seen
half-done is one MULTI/EXEC transaction (with WATCH where it reads first).

  registry.facts    storing, packing, editing, deleting, splitting    (facts.py)
  registry.modules  versions: publish, retire, the event stream       (modules.py)
  registry.merges   merged modules: policy and build requests         (merges.py)
  registry.jobs     the job lifecycle                                 (jobs.py)
  registry.queue    the trainers' job stream, and per-module locks    (loramem/queue.py)
  registry.api_keys who may call the gateway: tenant and role of a key (apikeys.py)
  registry.rate_limits  per-key request and token windows; quotas too   (limits.py)
"""

from __future__ import annotations

import redis

from loramem.queue import JobQueue, ModuleLock
from loramem.redis_client import connect
from loramem.registry.apikeys import ApiKeyStore
from loramem.registry.facts import FactStore
from loramem.registry.jobs import DEFAULT_FINISHED_TTL_S, JobStore
from loramem.registry.limits import RateLimiter
from loramem.registry.merges import MergeStore
from loramem.registry.modules import ModuleStore
from loramem.settings import Settings


class Registry:
    def __init__(
        self,
        client: redis.Redis,
        module_capacity_facts: int = 64,
        job_retention_s: float = DEFAULT_FINISHED_TTL_S,
        delta_adds: bool = False,
    ) -> None:
        self._redis = client
        self.jobs = JobStore(client, finished_ttl_s=job_retention_s)
        self.modules = ModuleStore(client, self.jobs)
        self.facts = FactStore(client, module_capacity_facts, delta_adds)
        self.merges = MergeStore(client, self.modules, self.jobs)
        self.queue = JobQueue(client)
        self.api_keys = ApiKeyStore(client)
        self.rate_limits = RateLimiter(client)

    @classmethod
    def from_url(
        cls,
        url: str,
        module_capacity_facts: int = 64,
        job_retention_s: float = DEFAULT_FINISHED_TTL_S,
        connect_timeout_s: float = 2.0,
        socket_timeout_s: float = 5.0,
        delta_adds: bool = False,
    ) -> Registry:
        """A single Redis, or a Redis Cluster for a `redis+cluster://` URL (redis_client.py)."""
        client = connect(url, connect_timeout_s, socket_timeout_s)
        return cls(client, module_capacity_facts, job_retention_s, delta_adds)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        return cls.from_url(
            settings.redis_url,
            settings.module_capacity_facts,
            settings.job_retention_s,
            settings.redis_connect_timeout_s,
            settings.redis_socket_timeout_s,
            settings.delta_adds,
        )

    def module_lock(self, module: str, ttl_ms: int) -> ModuleLock:
        return ModuleLock(self._redis, module, ttl_ms)

    def ping(self) -> None:
        self._redis.ping()
