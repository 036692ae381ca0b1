"""`loramem migrate-keys`: moves a single Redis's keys from the layout before hash tags
(`loramem:fact:<tenant>:<id>`, one global `loramem:jobs:ready`, ...) to loramem/keys.py's,
where every key carries its tenant's bucket. Run it once, with every gateway and worker
stopped, on the single Redis; then that Redis can serve as it is, or its keys can be
imported into a Redis Cluster (docs/ARCHITECTURE.md, "Redis Cluster").

This is the only code that spells the old names, and only to read them. A renamed key
keeps its value and its TTL (RENAME); a job stream keeps its consumer group and pending
entries. The shared sets and sorted sets are split into their members' buckets. The old
events stream is dropped: a gateway started afterwards loads its routing state from the
registry. Keys already in the new layout, and the rate windows (whose names did not
change), are left alone, so running it twice does no harm.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import redis

from loramem import keys
from loramem.names import parse_version_name
from loramem.registry.codec import decode

OLD = "loramem:"
_TENANT_KEYS: dict[str, Callable[[str], str]] = {
    "facts": keys.tenant_facts,
    "modules": keys.tenant_modules,
    "open_module": keys.tenant_open_module,
    "merges": keys.tenant_merges,
    "open_jobs": keys.tenant_open_jobs,
    "adapter_bytes": keys.tenant_adapter_bytes,
}


def _fact(body: str) -> str:
    tenant, _, fact_id = body.partition(":")
    return keys.fact(tenant, fact_id)


def _tenant(body: str) -> str | None:
    tenant, _, what = body.partition(":")
    return _TENANT_KEYS[what](tenant) if what in _TENANT_KEYS else None


def _module(body: str) -> str:
    return keys.module_facts(body[:-6]) if body.endswith(":facts") else keys.module(body)


def _version(body: str) -> str:
    name, _, number = body.removesuffix(":files").rpartition(":")
    return (keys.version_files if body.endswith(":files") else keys.version)(name, int(number))


def _merge(body: str) -> str:
    name, _, sources = body.partition(":")
    return keys.merge_request(name, sources)


def _prefixed(prefix: str, to: Callable[[str], str]) -> Callable[[str], str | None]:
    return lambda body: to(body.removeprefix(prefix)) if body.startswith(prefix) else None


# The first part of an old name -> the new name from the rest.
_RENAMES: dict[str, Callable[[str], str | None]] = {
    "fact": _fact,
    "tenant": _tenant,
    "module": _module,
    "version": _version,
    "merge": _merge,
    "job": keys.job,
    "lock": _prefixed("module:", keys.module_lock),
    "stream": _prefixed("jobs:", keys.job_stream),
    "apikey": keys.api_key,
}


def new_name(old: str) -> str | None:
    """The new name of one old key that is renamed as it is; None for any other key."""
    rest = old.removeprefix(OLD)
    if rest == "apikeys":
        return keys.api_keys()
    kind, sep, body = rest.partition(":")
    return _RENAMES[kind](body) if sep and kind in _RENAMES else None


def migrate(client: redis.Redis) -> Counter[str]:
    """Move every old key; returns how many keys of each kind were moved or dropped."""
    done: Counter[str] = Counter()
    for raw in list(client.scan_iter(match=OLD + "*", count=1000)):
        old = decode(raw)
        rest = old.removeprefix(OLD)
        if rest.startswith("{") or rest.startswith("rate:"):
            continue  # already in the new layout; rate window names did not change
        target = new_name(old)
        if target is not None:
            client.rename(old, target)
            done[rest.partition(":")[0]] += 1
        elif rest in ("jobs:ready", "jobs:streams", "tenants", "versions:retired"):
            _split(client, old, rest)
            done[rest] += 1
        elif rest == "stream:events":
            client.delete(old)
            done["events dropped"] += 1
        else:
            done["unknown, left"] += 1
    return done


def _split(client: redis.Redis, old: str, rest: str) -> None:
    """One shared set or sorted set into its members' buckets, in one transaction."""
    pipe = client.pipeline(transaction=True)
    if rest in ("jobs:streams", "tenants"):
        to = keys.job_streams if rest == "jobs:streams" else keys.tenants
        for member in client.smembers(old):
            pipe.sadd(to(keys.bucket(decode(member))), member)
    else:
        for member, score in client.zrange(old, 0, -1, withscores=True):
            name = decode(member)
            if rest == "jobs:ready":
                pipe.zadd(keys.jobs_ready(keys.bucket(name)), {member: score})
            elif (parsed := parse_version_name(name)) is not None:
                pipe.zadd(keys.retired_versions(keys.module_bucket(parsed[0])), {member: score})
    pipe.delete(old)
    pipe.execute()
