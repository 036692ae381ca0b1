"""A vLLM LoRA resolver: an engine asked for a module version it does not hold fetches the
version's files from Redis into its own folder, checks their sha256, and loads them.

vLLM's OpenAI server asks its registered resolvers for a model name it does not know when
runtime LoRA updating is on (`VLLM_ALLOW_RUNTIME_LORA_UPDATING`, set by
`loramem.engine.engine_env`). loramem registers this one through vLLM's
`vllm.general_plugins` entry point (pyproject.toml), so no volume needs to be shared with
the workers or gateways: every engine fills its own cache on demand, and one restarted
empty refills itself. Only the module's active version resolves, under its served name
with its checksum's digest (loramem/names.py); a replaced or retired one is never served
again (a 404, as from the gateway), nor a name whose digest is not the version's.

The engine reads loramem's settings from its environment (`engine_env` passes the Redis
URL, with its password, and the cache folder). Loads and their latency are exported on the
engine's own `/metrics` (vLLM serves prometheus_client's default registry there), which
the gateway's reconciler reads per engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from redis import RedisError
from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from loramem import vllm_lora_cache
from loramem.adapter_store import AdapterRef, AdapterStore
from loramem.engine import LOAD_SECONDS_METRIC, LOADS_METRIC
from loramem.errors import LoramemError, NotFound
from loramem.names import names_checksum, parse_served_name
from loramem.registry import Registry
from loramem.settings import Settings

log = logging.getLogger("loramem.vllm_resolver")

RESOLVER_NAME = "loramem"


class RedisAdapterResolver(LoRAResolver):
    def __init__(
        self,
        registry: Registry,
        cache_dir: Path,
        retire_grace_s: float,
        metrics: CollectorRegistry = REGISTRY,
    ) -> None:
        self.registry = registry
        self.store = AdapterStore(cache_dir, registry)
        self.retire_grace_s = retire_grace_s
        self.loads = Counter(
            LOADS_METRIC, "Module versions this engine fetched from Redis.", registry=metrics
        )
        self.load_seconds = Counter(
            LOAD_SECONDS_METRIC,
            "Time spent fetching module versions from Redis into the local cache.",
            registry=metrics,
        )
        self.refusals = Counter(
            "loramem_resolver_refusals",
            "Names asked for that are not an active module version, or failed to fetch.",
            registry=metrics,
        )

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        # Redis and the disk block: off the server's event loop.
        ref = await asyncio.to_thread(self.fetch, lora_name)
        if ref is None:
            return None
        # vLLM sets lora_int_id itself for a resolved adapter.
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(ref.path))

    def fetch(self, lora_name: str) -> AdapterRef | None:
        """The local folder of `lora_name` when it is an active module version; files
        fetched and checked when missing or changed. None for anything else."""
        parsed = parse_served_name(lora_name)
        if parsed is None:
            return None
        module, version, _digest = parsed
        started = time.monotonic()
        try:
            if self.registry.modules.get(module).active_version != version:
                log.info("not resolving %s: not the module's active version", lora_name)
                self.refusals.inc()
                return None
            # The number may have been handed out again by a Redis restored from an older
            # snapshot: a name whose digest is not this version's names other weights.
            if not names_checksum(parsed, self.registry.modules.version(module, version).checksum):
                log.info("not resolving %s: its digest is not the version's checksum", lora_name)
                self.refusals.inc()
                return None
            ref = self.store.materialize(module, version)  # checks the sha256
        except NotFound:
            self.refusals.inc()
            return None
        except (LoramemError, OSError, RedisError) as exc:  # corrupt blob, Redis away
            log.warning("could not resolve %s: %s", lora_name, exc)
            self.refusals.inc()
            return None
        self.loads.inc()
        self.load_seconds.inc(time.monotonic() - started)
        log.info("resolved %s from Redis in %.3f s", lora_name, time.monotonic() - started)
        self.sweep_replaced()
        return ref

    def sweep_replaced(self) -> int:
        """Delete this engine's folders of versions replaced or retired at least the grace
        ago. vLLM reads a folder when it loads the version, and the gateways unload a
        replaced version from the engines after the same grace. Runs after each fetch, so
        the folder holds little more than what was asked for since."""
        try:
            local = set(self.store.local_versions())
            before_s = time.time() - self.retire_grace_s
            gone = [mv for mv in self.registry.modules.retired_before(before_s) if mv in local]
        except RedisError as exc:
            log.warning("could not sweep replaced versions: %s", exc)
            return 0
        return sum(self.store.remove_local(module, version) for module, version in gone)


def register() -> None:
    """vLLM's plugin hook; it runs in every engine process, and the resolver only matters
    in the API server's. Nothing connects here: the Redis client connects on first use.
    The engine's LoRA cache counts are installed whether the resolver is on or not."""
    settings = Settings()
    assert settings.engine_adapter_cache_dir is not None
    vllm_lora_cache.install(settings.engine_adapter_cache_dir)
    if not settings.engine_resolver:
        return
    registry = Registry.from_settings(settings)
    resolver = RedisAdapterResolver(
        registry, settings.engine_adapter_cache_dir, settings.retire_grace_s
    )
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, resolver)
