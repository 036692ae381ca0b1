"""`loramem migrate-keys` on a real Redis holding keys in the layout before hash tags: after
it, the registry finds every fact, module, version, job, queued job and API key, and the
old names are gone."""

from __future__ import annotations

import redis

from loramem import keys
from loramem.key_migration import migrate
from loramem.registry import Registry
from loramem.registry.jobs import JobStatus
from tests.recipes import TRAINED


def _old_layout(client: redis.Redis) -> None:
    """One tenant with one fact in a published module, a queued job, a retired version and
    an API key, spelt as loramem wrote them before hash tags."""
    module = "t~notes"
    client.hset("loramem:fact:t:f1", mapping={"text": "x", "module": module, "created_at_s": 1})
    client.sadd("loramem:tenant:t:facts", "f1")
    client.sadd("loramem:tenant:t:modules", module)
    client.set("loramem:tenant:t:open_module", module)
    client.hset(f"loramem:module:{module}", mapping={"tenant": "t", "active_version": 2})
    client.sadd(f"loramem:module:{module}:facts", "f1")
    client.hset(
        f"loramem:version:{module}:2",
        mapping={"tenant": "t", "fact_ids": '["f1"]', "recall": 1.0, "checksum": "c",
                 "recipe": TRAINED.to_json()},
    )  # fmt: skip
    client.hset(f"loramem:version:{module}:2:files", "adapter_config.json", b"{}")
    client.zadd("loramem:versions:retired", {f"{module}@v1": 5.0})
    client.hset(
        "loramem:job:0123456789abcdef",
        mapping={"tenant": "t", "module": module, "kind": "add", "status": "queued"},
    )
    client.sadd("loramem:tenant:t:open_jobs", "0123456789abcdef")
    client.xadd("loramem:stream:jobs:t", {"job_id": "0123456789abcdef"})
    client.zadd("loramem:jobs:ready", {"t": 1.0})
    client.sadd("loramem:jobs:streams", "t")
    client.sadd("loramem:tenants", "t")
    client.xadd("loramem:stream:events", {"type": "published"})
    client.hset("loramem:apikey:00000000000000aa", mapping={"tenant": "t", "role": "reader"})
    client.sadd("loramem:apikeys", "00000000000000aa")


def test_old_keys_are_moved_to_the_hash_tagged_layout(
    registry: Registry, redis_client: redis.Redis
) -> None:
    _old_layout(redis_client)
    moved = migrate(redis_client)
    assert moved["events dropped"] == 1 and "unknown, left" not in moved
    assert all(decode_key(k).startswith("loramem:{") for k in redis_client.keys("*"))
    assert [f.text for f in registry.facts.of_tenant("t")] == ["x"]
    assert registry.modules.get("t~notes").active_version == 2
    assert registry.modules.version("t~notes", 2).fact_ids == ["f1"]
    assert registry.modules.version_files("t~notes", 2) == {"adapter_config.json": b"{}"}
    assert registry.modules.retired_before(10.0) == [("t~notes", 1)]
    assert registry.modules.tenants() == ["t"] and registry.queue.tenants() == ["t"]
    assert registry.jobs.get("0123456789abcdef").status is JobStatus.QUEUED
    claim = registry.queue.claim("w", block_ms=10)
    assert claim is not None and claim.job_id == "0123456789abcdef"
    assert redis_client.sismember(keys.api_keys(), "00000000000000aa")
    assert redis_client.hget(keys.api_key("00000000000000aa"), "tenant") == b"t"
    assert migrate(redis_client) == {}  # a second run finds nothing to move


def decode_key(key: bytes) -> str:
    return key.decode()
