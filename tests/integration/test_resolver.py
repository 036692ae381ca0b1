"""The engine-side resolver (loramem/vllm_resolver.py) against the real Redis: it fetches
an active version's files into its own folder with the checksum checked, refuses anything
else (a name whose digest is not the version's checksum too), and refills a folder that
went missing (an engine restarted on an empty disk)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry

from loramem import keys
from loramem.adapter_store import checksum
from loramem.names import served_name
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.vllm_resolver import RedisAdapterResolver
from tests.recipes import TRAINED


def adapter_files() -> dict[str, bytes]:
    config = {"peft_type": "LORA", "r": 8, "base_model_name_or_path": "base"}
    return {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": os.urandom(4096),
    }


def publish(registry: Registry, module: str) -> tuple[str, dict[str, bytes]]:
    """Publish new weights; their served name and files."""
    # The module record POST /facts would have made; publish fills in the rest.
    registry.modules._redis.hsetnx(keys.module(module), "tenant", "t")
    files = adapter_files()
    version = registry.modules.next_version(module)
    info = VersionInfo(module, version, "t", [], 1.0, checksum(files), TRAINED)
    registry.modules.publish(info, files)
    return info.served, files


def resolve(resolver: RedisAdapterResolver, name: str):  # type: ignore[no-untyped-def]
    return asyncio.run(resolver.resolve_lora("base", name))


def loads(metrics: CollectorRegistry) -> float:
    return metrics.get_sample_value("loramem_resolver_loads_total") or 0.0


def test_an_active_version_is_fetched_checked_and_refilled(
    registry: Registry, tmp_path: Path
) -> None:
    metrics = CollectorRegistry()
    resolver = RedisAdapterResolver(registry, tmp_path / "engine-cache", 0, metrics)
    name, files = publish(registry, "m")
    request = resolve(resolver, name)
    assert request is not None and request.lora_name == name
    folder = Path(request.lora_path)
    assert folder.is_relative_to(tmp_path / "engine-cache")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert loads(metrics) == 1
    for path in folder.iterdir():  # the engine restarted on an empty disk
        path.unlink()
    folder.rmdir()
    again = resolve(resolver, name)
    assert again is not None and {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert loads(metrics) == 2


def test_only_the_active_version_of_a_module_resolves(registry: Registry, tmp_path: Path) -> None:
    metrics = CollectorRegistry()
    resolver = RedisAdapterResolver(registry, tmp_path, 0, metrics)
    first, _files = publish(registry, "m")
    second, files = publish(registry, "m")  # v1 is replaced: never served again
    digest = checksum(files)
    assert resolve(resolver, first) is None
    assert resolve(resolver, served_name("m", 3, digest)) is None  # not published
    assert resolve(resolver, served_name("other", 1, digest)) is None  # no such module
    assert resolve(resolver, "base-model") is None  # not a module version at all
    assert resolve(resolver, "m@v2") is None  # no digest: not a served name
    # The active number with another digest: other weights (a Redis restored from an older
    # snapshot hands numbers out again), never served under it.
    assert resolve(resolver, served_name("m", 2, checksum(adapter_files()))) is None
    assert resolve(resolver, second) is not None
    assert metrics.get_sample_value("loramem_resolver_refusals_total") == 4


def test_corrupt_blobs_are_refused_and_nothing_is_written(
    registry: Registry, redis_client: redis.Redis, tmp_path: Path
) -> None:
    resolver = RedisAdapterResolver(registry, tmp_path, 0, CollectorRegistry())
    name, _files = publish(registry, "m")
    redis_client.hset(keys.version_files("m", 1), "adapter_model.safetensors", b"x")
    assert resolve(resolver, name) is None
    assert not (tmp_path / "m" / "v1").exists()


def test_redis_away_is_a_refusal_not_a_crash(tmp_path: Path) -> None:
    registry = Registry.from_url("redis://127.0.0.1:9/0", 8, 60, 0.2, 0.2)  # nothing listens
    resolver = RedisAdapterResolver(registry, tmp_path, 0, CollectorRegistry())
    assert resolve(resolver, served_name("m", 1, "ab" * 32)) is None


def test_a_fetch_sweeps_the_folders_of_replaced_versions(
    registry: Registry, tmp_path: Path
) -> None:
    resolver = RedisAdapterResolver(registry, tmp_path, 0, CollectorRegistry())
    first, _files = publish(registry, "m")
    other, _files = publish(registry, "other")
    assert resolve(resolver, first) is not None
    publish(registry, "m")  # m@v1 is replaced; its folder goes with the next fetch
    assert (tmp_path / "m" / "v1").exists()
    assert resolve(resolver, other) is not None
    assert sorted(resolver.store.local_versions()) == [("other", 1)]
