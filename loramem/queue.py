"""The trainer job queue: one Redis Stream per tenant, read through one consumer group
each, and a round-robin over the tenants that have work.

Fair service. A tenant with work is in `jobs:ready` (a sorted set) with its turn: the
time, on Redis's clock, it joined the rotation or was last served. A worker pops the
tenant with the lowest turn (BZPOPMIN, which also blocks while nobody has work), reads one
entry of that tenant's stream, and puts the tenant back with the time now if more are
waiting. So a tenant that posts fifty jobs gets one job served per round, and another
tenant's single job is next but one at worst; a tenant that paces its jobs one at a time
joins behind those already waiting, so it cannot starve them either. Queuing a job adds
its tenant unless it is there already (ZADD NX, in the job's transaction), so no job
waits without its tenant in the rotation, except for the moment between a pop and the
put-back; `tidy` repairs that after a worker died there.

Crash safety. Delivery is at least once. A worker heartbeats the entry it holds (XCLAIM to
itself resets the idle time), so only entries of dead workers grow idle enough to be
reclaimed (XAUTOCLAIM, over every tenant's stream). Reading and reclaiming count a
delivery (heartbeats do not: JUSTID), so `deliveries` tells how many workers an entry has
already been handed to. An acknowledged entry is deleted: a stream holds only what is
waiting or running, and an empty one is dropped by `tidy` (the next job makes it again).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

from loramem import keys
from loramem.redis_client import is_cluster
from loramem.registry.codec import decode

# Every bucket's rotation (loramem/keys.py): a worker serves the lowest turn over them all.
_READY_KEYS = [keys.jobs_ready(b) for b in keys.BUCKET_IDS]
# How often an idle worker on a Redis Cluster looks at the rotations again (a single Redis
# blocks in one BZPOPMIN over them all instead).
CLUSTER_POLL_S = 0.25

# Back in the rotation behind every tenant now waiting (GT: a turn only moves later).
_NEXT_TURN = (
    "local t = redis.call('time') "
    "return redis.call('zadd', KEYS[1], 'GT', t[1] * 1000000 + t[2], ARGV[1])"
)


@dataclass(frozen=True)
class Claim:
    """One stream entry handed to this worker: which tenant's stream, and the job."""

    tenant: str
    entry_id: str
    job_id: str

    @property
    def stream(self) -> str:
        return keys.job_stream(self.tenant)


class JobQueue:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def claim(self, consumer: str, block_ms: int) -> Claim | None:
        """The next job in the round-robin over tenants, waiting up to `block_ms` for one."""
        deadline = time.monotonic() + block_ms / 1000
        tenant = self._pop_turn()
        while True:
            while tenant is not None:
                claim = self._read_one(tenant, consumer)
                if claim is not None:
                    return claim
                # That tenant had nothing undelivered (another worker took its last job):
                # the next one, without waiting.
                tenant = self._pop_turn()
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return None
            if is_cluster(self._redis):  # no blocking pop over keys of several slots
                time.sleep(min(CLUSTER_POLL_S, left_s))
                tenant = self._pop_turn()
            else:  # nobody has work: wait in one blocking pop over every rotation
                popped = self._redis.bzpopmin(_READY_KEYS, timeout=max(left_s, 0.001))
                tenant = decode(popped[1]) if popped else None

    def _pop_turn(self) -> str | None:
        """The tenant whose turn is lowest over every bucket's rotation, taken out of it."""
        pipe = self._redis.pipeline(transaction=False)
        for key in _READY_KEYS:
            pipe.zrange(key, 0, 0, withscores=True)
        rows = zip(_READY_KEYS, pipe.execute(), strict=True)
        heads = [(row[0][1], key) for key, row in rows if row]
        for _turn, key in sorted(heads):
            popped = self._redis.zpopmin(key)  # another worker may have taken it meanwhile
            if popped:
                return decode(popped[0][0])
        return None

    def _read_one(self, tenant: str, consumer: str) -> Claim | None:
        stream = keys.job_stream(tenant)
        try:
            reply = self._xreadgroup(stream, consumer)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._ensure_group(stream)  # a new stream (the first job, or after `tidy`)
            reply = self._xreadgroup(stream, consumer)
        entries = [(decode(i), data) for _s, got in reply or [] for i, data in got]
        if not entries:
            return None
        entry_id, data = entries[0]
        if self._redis.xrange(stream, min="(" + entry_id, count=1):  # more are waiting
            self._redis.eval(_NEXT_TURN, 1, keys.jobs_ready(keys.bucket(tenant)), tenant)
        return Claim(tenant, entry_id, decode(data[b"job_id"]))

    def _xreadgroup(self, stream: str, consumer: str) -> Any:
        return self._redis.xreadgroup(keys.TRAINER_GROUP, consumer, {stream: ">"}, count=1)

    def _ensure_group(self, stream: str) -> None:
        try:  # from the start: acknowledged entries are deleted, so all left are work
            self._redis.xgroup_create(stream, keys.TRAINER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def tenants(self) -> list[str]:
        """Tenants that have a job stream, over every bucket."""
        pipe = self._redis.pipeline(transaction=False)
        for bucket in keys.BUCKET_IDS:
            pipe.smembers(keys.job_streams(bucket))
        return sorted(decode(t) for members in pipe.execute() for t in members)

    def reclaim(self, consumer: str, min_idle_ms: int) -> Claim | None:
        """An entry whose worker stopped heartbeating, taken over by this consumer."""
        for tenant in self.tenants():
            stream = keys.job_stream(tenant)
            try:
                # Redis 7 answers [next, entries, deleted ids]; 6.2 (the server `loramem run`
                # brings from PyPI where none is installed) [next, entries], a deleted one nil.
                entries = self._redis.xautoclaim(
                    stream, keys.TRAINER_GROUP, consumer, min_idle_ms, count=1
                )[1]
            except redis.ResponseError as exc:  # no stream or group yet: nothing pending
                if "NOGROUP" not in str(exc):
                    raise
                continue
            for entry_id, data in entries:
                if data:
                    return Claim(tenant, decode(entry_id), decode(data[b"job_id"]))
        return None

    def tidy(self) -> None:
        """Put back in the rotation a tenant with undelivered jobs that is missing from it
        (its worker died between pop and put-back), and drop empty streams. Both check
        under WATCH of the stream, so a job queued meanwhile is never left out."""
        for tenant in self.tenants():
            stream, bucket = keys.job_stream(tenant), keys.bucket(tenant)
            with self._redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(stream)
                    if not pipe.xlen(stream):
                        pipe.multi()
                        pipe.delete(stream)
                        pipe.srem(keys.job_streams(bucket), tenant)
                        pipe.execute()
                    elif self._undelivered(pipe, stream):
                        pipe.multi()
                        pipe.zadd(keys.jobs_ready(bucket), {tenant: 0}, nx=True)  # first in line
                        pipe.execute()
                except redis.WatchError:
                    continue  # a job was queued or read meanwhile; the next tidy looks again

    def waiting_kinds(self, per_tenant: int = 20) -> set[str]:
        """Kinds of the jobs queued and not yet handed to a worker, over every tenant in
        the rotation (the first `per_tenant` of each); "add" for an entry queued before
        entries named their kind."""
        pipe = self._redis.pipeline(transaction=False)
        for key in _READY_KEYS:
            pipe.zrange(key, 0, -1)
        tenants = {decode(t) for members in pipe.execute() for t in members}
        kinds: set[str] = set()
        for tenant in sorted(tenants):
            try:
                entries = self._undelivered(self._redis, keys.job_stream(tenant), per_tenant)
            except redis.ResponseError:  # the stream went away (tidy): nothing waits there
                continue
            kinds.update(decode(data.get(b"kind", b"add")) for _id, data in entries)
        return kinds

    @staticmethod
    def _undelivered(
        client: redis.Redis | redis.client.Pipeline, stream: str, count: int = 1
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The first `count` entries of `stream` no worker has read yet."""
        groups = {decode(g["name"]): g for g in client.xinfo_groups(stream)}
        group = groups.get(keys.TRAINER_GROUP)
        after = "-" if group is None else "(" + decode(group["last-delivered-id"])
        return client.xrange(stream, min=after, count=count)

    def heartbeat(self, consumer: str, claim: Claim) -> None:
        self._redis.xclaim(
            claim.stream, keys.TRAINER_GROUP, consumer, 0, [claim.entry_id], justid=True
        )

    def ack(self, claim: Claim) -> None:
        """Done with for good: acknowledged and deleted in one step. One consumer group
        reads the stream, so once acknowledged no consumer holds the entry any more."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(claim.stream, keys.TRAINER_GROUP, claim.entry_id)
        pipe.xdel(claim.stream, claim.entry_id)
        pipe.execute()

    def deliveries(self, claim: Claim) -> int:
        """How many times the group has delivered this pending entry (0: not pending)."""
        rows = self._redis.xpending_range(
            claim.stream, keys.TRAINER_GROUP, min=claim.entry_id, max=claim.entry_id, count=1
        )
        return int(rows[0]["times_delivered"]) if rows else 0

    def pending_count(self) -> int:
        """Jobs handed to a worker and not yet acknowledged, over every tenant."""
        total = 0
        for tenant in self.tenants():
            try:
                total += int(
                    self._redis.xpending(keys.job_stream(tenant), keys.TRAINER_GROUP)["pending"]
                )
            except redis.ResponseError:  # no group yet: nothing handed out
                continue
        return total

    def backlog(self) -> tuple[int, int | None]:
        """(jobs waiting or running, creation time in ms of the oldest of them). An
        acknowledged entry is deleted, so every entry left is one of them."""
        pipe = self._redis.pipeline(transaction=False)
        for tenant in self.tenants():
            pipe.xlen(keys.job_stream(tenant))
            pipe.xrange(keys.job_stream(tenant), count=1)
        replies = pipe.execute()
        count = sum(int(n) for n in replies[0::2])
        oldest = [_entry_ms(first[0][0]) for first in replies[1::2] if first]
        return count, min(oldest) if oldest else None


def _entry_ms(entry_id: bytes | str) -> int:
    """A stream entry id starts with its creation time in milliseconds."""
    return int(decode(entry_id).split("-")[0])


class ModuleLock:
    """One trainer per module at a time, so versions of a module never interleave."""

    # Only the holder may release or extend: compare the token and act in one script.
    _RELEASE = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end "
        "return 0"
    )
    _RENEW = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
    )

    def __init__(self, client: redis.Redis, module: str, ttl_ms: int) -> None:
        self._redis = client
        self.key = keys.module_lock(module)
        self.ttl_ms = ttl_ms
        self.token = secrets.token_hex(8)

    @property
    def fence(self) -> tuple[str, str]:
        """What a publish checks in its transaction: this lock is still this holder's."""
        return self.key, self.token

    def acquire(self) -> bool:
        return bool(self._redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self._redis.eval(self._RENEW, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        self._redis.eval(self._RELEASE, 1, self.key, self.token)
