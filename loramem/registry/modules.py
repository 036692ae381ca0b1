"""Modules and their versions: create, publish, retire, and the event stream that
tells every gateway about a publish or a retire.

A version stops being servable the moment another one replaces it or its module retires;
the same transaction records when (`versions:retired`), and `sweep_retired` deletes the
record and the adapter files once they are older than the retention.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from loramem import keys
from loramem.errors import LockLost, NotFound
from loramem.knobs import VersionRecipe
from loramem.names import (
    module_name,
    parse_version_name,
    public_served_name,
    served_name,
    version_name,
)
from loramem.redis_client import is_cluster
from loramem.registry.codec import decode
from loramem.registry.jobs import AlsoWrite, JobStore

# The next version number: one above the last handed out, and at least ARGV[1].
_NEXT_VERSION = (
    "local n = math.max(tonumber(redis.call('hget', KEYS[1], 'version_seq') or '0') + 1, "
    "tonumber(ARGV[1])) redis.call('hset', KEYS[1], 'version_seq', n) return n"
)

# Per bucket, the id of the last event a follower read from that bucket's stream.
Cursor = dict[str, str]
# How often a follower on a Redis Cluster reads every bucket's stream while none has news
# (a single Redis blocks in one read over them all instead).
CLUSTER_POLL_S = 0.1

# A module lock's key and the token of the worker holding it (loramem/queue.py ModuleLock).
Fence = tuple[str, str]


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    tenant: str
    active_version: int  # 0 while no version is published
    fact_count: int

    @property
    def active_name(self) -> str | None:
        return version_name(self.name, self.active_version) if self.active_version else None


@dataclass(frozen=True)
class VersionInfo:
    module: str
    version: int
    tenant: str
    fact_ids: list[str]
    recall: float
    checksum: str
    recipe: VersionRecipe  # how it was made (also its recipe.json)
    # A merged module's version: the source module versions it was built from.
    merged_from: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return version_name(self.module, self.version)

    @property
    def served(self) -> str:
        """The name engines serve it under (loramem/names.py)."""
        return served_name(self.module, self.version, self.checksum)


def stage_module(pipe: redis.client.Pipeline, tenant: str, name: str, **extra: str | float) -> None:
    """Create module `name` of `tenant` inside the caller's transaction (`extra`: a merged
    module's recipe)."""
    pipe.hset(
        keys.module(name),
        mapping={"tenant": tenant, "active_version": 0, "created_at_s": time.time(), **extra},
    )
    pipe.sadd(keys.tenant_modules(tenant), name)


class ModuleStore:
    def __init__(self, client: redis.Redis, jobs: JobStore) -> None:
        self._redis = client
        self._jobs = jobs

    def get(self, name: str) -> ModuleInfo:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.module(name))
        pipe.scard(keys.module_facts(name))
        raw, count = pipe.execute()
        if not raw:
            raise NotFound(f"module not found: {module_name(name)}")
        return ModuleInfo(
            name=name,
            tenant=decode(raw[b"tenant"]),
            active_version=int(raw.get(b"active_version", 0)),
            fact_count=int(count),
        )

    def of_tenant(self, tenant: str) -> list[ModuleInfo]:
        names = sorted(decode(n) for n in self._redis.smembers(keys.tenant_modules(tenant)))
        return [self.get(n) for n in names]

    def tenants(self) -> list[str]:
        """Every tenant that stored a fact, over every bucket."""
        pipe = self._redis.pipeline(transaction=False)
        for bucket in keys.BUCKET_IDS:
            pipe.smembers(keys.tenants(bucket))
        return sorted(decode(t) for members in pipe.execute() for t in members)

    def next_version(self, module: str, at_least: int = 1) -> int:
        """Versions only ever grow, even when a publish fails after taking a number.
        `at_least`: the lowest number not seen outside Redis (trainer/publisher.py), so
        that a Redis restored from an older snapshot never hands out a name again."""
        return int(self._redis.eval(_NEXT_VERSION, 1, keys.module(module), at_least))

    def publish(
        self,
        info: VersionInfo,
        files: dict[str, bytes],
        job_id: str | None = None,
        fence: Fence | None = None,
        fold: Fold | None = None,
    ) -> None:
        """Record a version, switch the active pointer, announce it and finish its job, in
        one transaction; the version it replaces is recorded as retired. With `fence` (the
        module lock's key and the worker's token) the transaction also checks, under WATCH,
        that the worker still holds the lock, and raises LockLost if not. With `fold` (a
        consolidation) the same transaction moves the deltas' facts into the module and
        retires the deltas, or raises FoldChanged when they changed since training."""
        previous = _ActiveVersion(info.module, fence, fold, job_id)
        size_bytes = sum(len(blob) for blob in files.values())

        def write(pipe: redis.client.Pipeline) -> None:
            pipe.hset(
                keys.version(info.module, info.version),
                mapping={
                    "tenant": info.tenant,
                    "fact_ids": json.dumps(info.fact_ids),
                    "recall": info.recall,
                    "checksum": info.checksum,
                    "recipe": info.recipe.to_json(),
                    "merged_from": json.dumps(info.merged_from),
                    "created_at_s": time.time(),
                    "size_bytes": size_bytes,
                },
            )
            if files:
                pipe.hset(keys.version_files(info.module, info.version), mapping=files)
                pipe.incrby(keys.tenant_adapter_bytes(info.tenant), size_bytes)  # quota
            pipe.hset(keys.module(info.module), "active_version", info.version)
            previous.record_retired(pipe, unless=info.version)
            announce(
                pipe,
                "published",
                module=info.module,
                version=info.version,
                tenant=info.tenant,
                job_id=job_id or "",
            )
            previous.write_fold(pipe)  # after the publish: routers never lack the facts

        self._in_transaction(write, previous, job_id, info.version)

    def retire(
        self, module: str, tenant: str, job_id: str | None = None, fence: Fence | None = None
    ) -> None:
        """A module left with no facts serves nothing: clear its active version (`fence`:
        as for publish)."""
        previous = _ActiveVersion(module, fence)

        def write(pipe: redis.client.Pipeline) -> None:
            pipe.hset(keys.module(module), "active_version", 0)
            previous.record_retired(pipe)
            announce(pipe, "retired", module=module, tenant=tenant)
            if previous.parent:  # an empty delta: nothing left to consolidate
                pipe.srem(keys.module_deltas(previous.parent), module)
                pipe.zrem(keys.deltas(keys.bucket(tenant)), module)

        self._in_transaction(write, previous, job_id, None)

    def _in_transaction(
        self, write: AlsoWrite, previous: _ActiveVersion, job_id: str | None, version: int | None
    ) -> None:
        """Run `write` atomically, after reading the version it replaces: with the job's
        finish when a job asked for it."""
        watch = (keys.module(previous.module),) + ((previous.fence[0],) if previous.fence else ())
        watch += previous.fold_watched()
        if job_id is not None:
            self._jobs.finish(job_id, version, also=write, read=previous.read, watch=watch)
            return

        def run(pipe: redis.client.Pipeline) -> None:
            previous.read(pipe)
            pipe.multi()
            write(pipe)

        self._redis.transaction(run, *watch)

    def retired_before(self, before_s: float) -> list[tuple[str, int]]:
        """Versions that stopped being active before this time (epoch seconds)."""
        pipe = self._redis.pipeline(transaction=False)
        for bucket in keys.BUCKET_IDS:
            pipe.zrangebyscore(keys.retired_versions(bucket), "-inf", before_s)
        members = [m for reply in pipe.execute() for m in reply]
        return [parsed for m in members if (parsed := parse_version_name(decode(m)))]

    def sweep_retired(self, retention_s: float, limit: int = 100) -> list[tuple[str, int]]:
        """Delete the record and the adapter files of versions retired longer than
        `retention_s` ago; returns the versions swept. Safe to run from many workers."""
        swept = []
        for module, version in self.retired_before(time.time() - retention_s)[:limit]:
            if self._sweep(module, version):
                swept.append((module, version))
        return swept

    def tenant_adapter_bytes(self, tenant: str) -> int:
        """Bytes of the tenant's stored version blobs, retired ones until swept."""
        return int(self._redis.get(keys.tenant_adapter_bytes(tenant)) or 0)

    def _sweep(self, module: str, version: int) -> bool:
        """Delete one version and take its blobs off its tenant's adapter bytes; WATCH
        keeps two sweepers from both subtracting."""
        record = keys.version(module, version)
        pipe = self._redis.pipeline(transaction=True)
        try:
            pipe.watch(record)
            tenant, size_bytes = pipe.hmget(record, "tenant", "size_bytes")
            pipe.multi()
            retired = keys.retired_versions(keys.module_bucket(module))
            pipe.zrem(retired, version_name(module, version))
            pipe.delete(record, keys.version_files(module, version))
            if tenant is not None and size_bytes:
                pipe.decrby(keys.tenant_adapter_bytes(decode(tenant)), int(size_bytes))
            removed = pipe.execute()[0]
        except redis.WatchError:
            return False  # another sweeper took it
        finally:
            pipe.reset()
        return bool(removed)

    def version(self, module: str, version: int) -> VersionInfo:
        raw = self._redis.hgetall(keys.version(module, version))
        if not raw:
            raise NotFound(
                f"version not found: {public_served_name(version_name(module, version))}"
            )
        return _version_info(module, version, raw)

    def active_versions(self, tenant: str) -> list[VersionInfo]:
        """Every active version of the tenant's modules, in three round trips whatever
        their number (a router starting over thousands of modules)."""
        names = sorted(decode(n) for n in self._redis.smembers(keys.tenant_modules(tenant)))
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hget(keys.module(name), "active_version")
        active = [(n, int(v)) for n, v in zip(names, pipe.execute(), strict=True) if v and int(v)]
        for name, number in active:
            pipe.hgetall(keys.version(name, number))
        return [
            _version_info(name, number, raw)
            for (name, number), raw in zip(active, pipe.execute(), strict=True)
            if raw  # swept between the two reads
        ]

    def version_files(self, module: str, version: int) -> dict[str, bytes]:
        raw = self._redis.hgetall(keys.version_files(module, version))
        return {decode(k): v for k, v in raw.items()}

    def events_after(self, cursor: Cursor | str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        """The events after `cursor` over every bucket's stream, oldest first, waiting up to
        `block_ms` for one; each carries its `bucket`, for the cursor (`advance`). A cursor
        "0-0" reads every stream from its start."""
        streams = {
            keys.events_stream(b): cursor if isinstance(cursor, str) else cursor.get(b, "0-0")
            for b in keys.BUCKET_IDS
        }
        if is_cluster(self._redis):
            replies = self._poll(streams, block_ms)
        else:  # one blocking read over every stream
            replies = self._redis.xread(streams, block=block_ms, count=1000) or []
        events: list[tuple[str, dict[str, str]]] = []
        for stream, entries in replies:
            bucket = decode(stream).split("{b:")[1][:2]
            for entry_id, data in entries:
                event = {decode(k): decode(v) for k, v in data.items()}
                events.append((decode(entry_id), {**event, "bucket": bucket}))
        return sorted(events, key=lambda e: _entry_id(e[0]))

    def _poll(self, streams: dict[str, str], block_ms: int) -> list[Any]:
        """A cluster refuses a read over keys of several slots: one read per stream, in
        one round trip per node, again every CLUSTER_POLL_S until one has events."""
        deadline = time.monotonic() + block_ms / 1000
        while True:
            pipe = self._redis.pipeline(transaction=False)
            for stream, after in streams.items():
                pipe.xread({stream: after}, count=1000)
            replies = [r for reply in pipe.execute() for r in reply or []]
            left_s = deadline - time.monotonic()
            if replies or left_s <= 0:
                return replies
            time.sleep(min(CLUSTER_POLL_S, left_s))

    def _stream_infos(self) -> dict[str, dict[str, Any]]:
        """XINFO STREAM of every bucket's events stream that exists."""
        pipe = self._redis.pipeline(transaction=False)
        for bucket in keys.BUCKET_IDS:
            pipe.xinfo_stream(keys.events_stream(bucket))
        replies = pipe.execute(raise_on_error=False)
        return {
            b: info
            for b, info in zip(keys.BUCKET_IDS, replies, strict=True)
            if not isinstance(info, Exception)  # no stream yet
        }

    def last_event_id(self) -> Cursor:
        """Per bucket, the id of the newest event ever added (even if trimmed since)."""
        return {b: decode(i["last-generated-id"]) for b, i in self._stream_infos().items()}

    def events_lost_after(self, cursor: Cursor | str) -> bool:
        """True when a stream's cap may have trimmed events newer than `cursor`: a
        follower at `cursor` can no longer replay them and must rebuild from the registry.
        Events are only ever trimmed from the old end (never deleted one by one), so that
        is when the oldest event left is newer than the cursor. (A follower exactly one
        event short of the oldest gets a harmless extra rebuild: XTRIM leaves no record of
        what it removed.)"""
        for bucket, info in self._stream_infos().items():
            at = cursor if isinstance(cursor, str) else cursor.get(bucket, "0-0")
            if at == "0-0":  # nothing read yet: lost if anything was ever trimmed
                if int(info.get("entries-added") or 0) > int(info["length"]):
                    return True
                continue
            first = info.get("first-entry")  # none left: compare with the newest ever added
            oldest = decode(first[0]) if first else decode(info["last-generated-id"])
            if _entry_id(oldest) > _entry_id(at):
                return True
        return False


def advance(cursor: Cursor, event: dict[str, str], entry_id: str) -> Cursor:
    """The cursor once `event` (from events_after) is applied."""
    return {**cursor, event["bucket"]: entry_id}


def _version_info(module: str, version: int, raw: dict[bytes, bytes]) -> VersionInfo:
    return VersionInfo(
        module=module,
        version=version,
        tenant=decode(raw[b"tenant"]),
        fact_ids=json.loads(raw[b"fact_ids"]),
        recall=float(raw[b"recall"]),
        checksum=decode(raw[b"checksum"]),
        recipe=VersionRecipe.model_validate_json(raw[b"recipe"]),
        merged_from=json.loads(raw.get(b"merged_from", b"{}")),
    )


def _entry_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Fold:
    """What a consolidation trained its module on besides the module's own facts: per
    delta module, its facts' ids and the texts trained."""

    tenant: str
    deltas: dict[str, dict[str, str]]


class FoldChanged(Exception):
    """A delta changed (a fact edited, deleted, or a job queued on it) while its module's
    consolidation trained: nothing is published; a later consolidation folds it."""


class _ActiveVersion:
    """The version a publish or retire replaces, read inside its transaction; and the
    writer's fence, checked there too; and a consolidation's deltas, checked unchanged."""

    def __init__(
        self,
        module: str,
        fence: Fence | None = None,
        fold: Fold | None = None,
        job_id: str | None = None,
    ) -> None:
        self.module = module
        self.fence = fence
        self.version = 0
        self.parent: str | None = None  # the module's parent, when it is a delta
        self.fold, self.job_id = fold, job_id
        self.fold_versions: dict[str, int] = {}  # each folded delta's active version

    def read(self, pipe: redis.client.Pipeline) -> None:
        if self.fence is not None:
            lock_key, token = self.fence
            holder = pipe.get(lock_key)
            if holder is None or decode(holder) != token:
                raise LockLost(f"the lock of {self.module} is not this worker's any more")
        active, parent = pipe.hmget(keys.module(self.module), "active_version", "parent")
        self.version = int(active or 0)
        self.parent = decode(parent) if parent is not None else None
        if self.fold is not None:
            self._check_fold(pipe, self.fold)

    def fold_watched(self) -> tuple[str, ...]:
        if self.fold is None:
            return ()
        watched = [keys.tenant_open_jobs(self.fold.tenant), keys.module_deltas(self.module)]
        for delta, texts in self.fold.deltas.items():
            watched += [keys.module(delta), keys.module_facts(delta)]
            watched += [keys.fact(self.fold.tenant, f) for f in texts]
        return tuple(watched)

    def _check_fold(self, pipe: redis.client.Pipeline, fold: Fold) -> None:
        """Every delta still holds exactly the facts trained, with the texts trained, and
        no other job is queued or running on it (it would publish it again)."""
        open_jobs = [decode(j) for j in pipe.smembers(keys.tenant_open_jobs(fold.tenant))]
        busy = {
            decode(m)
            for j in open_jobs
            if j != self.job_id and (m := pipe.hget(keys.job(j), "module"))
        }
        for delta, texts in fold.deltas.items():
            if delta in busy:
                raise FoldChanged(f"a job is queued on {delta}")
            if {decode(f) for f in pipe.smembers(keys.module_facts(delta))} != set(texts):
                raise FoldChanged(f"the facts of {delta} changed")
            for fact_id, text in texts.items():
                held = pipe.hmget(keys.fact(fold.tenant, fact_id), "module", "text")
                if held != [delta.encode(), text.encode()]:
                    raise FoldChanged(f"fact {fact_id} changed")
            self.fold_versions[delta] = int(pipe.hget(keys.module(delta), "active_version") or 0)

    def write_fold(self, pipe: redis.client.Pipeline) -> None:
        """Move the deltas' facts into the module and retire the deltas."""
        if self.fold is None:
            return
        tenant = self.fold.tenant
        for delta, texts in self.fold.deltas.items():
            if texts:
                pipe.srem(keys.module_facts(delta), *texts)
                pipe.sadd(keys.module_facts(self.module), *texts)
            for fact_id in texts:
                pipe.hset(keys.fact(tenant, fact_id), "module", self.module)
            if self.fold_versions.get(delta):
                name = version_name(delta, self.fold_versions[delta])
                pipe.zadd(keys.retired_versions(keys.module_bucket(delta)), {name: time.time()})
            pipe.delete(keys.module(delta), keys.module_facts(delta))
            pipe.srem(keys.tenant_modules(tenant), delta)
            pipe.srem(keys.module_deltas(self.module), delta)
            pipe.zrem(keys.deltas(keys.bucket(tenant)), delta)
            announce(pipe, "retired", module=delta, tenant=tenant)

    def record_retired(self, pipe: redis.client.Pipeline, unless: int = 0) -> None:
        if self.version and self.version != unless:
            name = version_name(self.module, self.version)
            pipe.zadd(keys.retired_versions(keys.module_bucket(self.module)), {name: time.time()})


def announce(pipe: redis.client.Pipeline, kind: str, tenant: str, **fields: str | int) -> None:
    """An event for every gateway's router, inside the caller's transaction: in the
    tenant's bucket's stream, the same hash slot as the tenant's keys."""
    pipe.xadd(
        keys.events_stream(keys.bucket(tenant)),
        {"type": kind, "tenant": tenant, **fields},
        maxlen=keys.EVENTS_STREAM_MAXLEN,
        approximate=True,
    )
