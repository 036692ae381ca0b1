"""The trainer job queue: a Redis Stream read through one consumer group.

Delivery is at least once. A worker heartbeats the entry it holds (XCLAIM to itself resets
the idle time), so only entries of dead workers grow idle enough to be reclaimed. Reading
and reclaiming count a delivery (heartbeats do not: JUSTID), so `deliveries` tells how
many workers an entry has already been handed to. An acknowledged entry is deleted: the
stream holds only what is waiting or running.
"""

from __future__ import annotations

import secrets

import redis

from loramem import keys
from loramem.registry.codec import decode


class JobQueue:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(keys.JOBS_STREAM, keys.TRAINER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, consumer: str, block_ms: int) -> list[tuple[str, str]]:
        """New entries for this consumer: (entry id, job id)."""
        reply = self._redis.xreadgroup(
            keys.TRAINER_GROUP, consumer, {keys.JOBS_STREAM: ">"}, count=1, block=block_ms
        )
        return [
            (decode(entry_id), decode(data[b"job_id"]))
            for _stream, entries in reply or []
            for entry_id, data in entries
        ]

    def reclaim(self, consumer: str, min_idle_ms: int) -> list[tuple[str, str]]:
        """Entries whose worker stopped heartbeating, taken over by this consumer."""
        _next, entries, _deleted = self._redis.xautoclaim(
            keys.JOBS_STREAM, keys.TRAINER_GROUP, consumer, min_idle_ms, count=1
        )
        return [(decode(entry_id), decode(data[b"job_id"])) for entry_id, data in entries if data]

    def heartbeat(self, consumer: str, entry_id: str) -> None:
        self._redis.xclaim(
            keys.JOBS_STREAM, keys.TRAINER_GROUP, consumer, 0, [entry_id], justid=True
        )

    def ack(self, entry_id: str) -> None:
        """Done with for good: acknowledged and deleted in one step. One consumer group
        reads the stream, so once acknowledged no consumer holds the entry any more."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(keys.JOBS_STREAM, keys.TRAINER_GROUP, entry_id)
        pipe.xdel(keys.JOBS_STREAM, entry_id)
        pipe.execute()

    def deliveries(self, entry_id: str) -> int:
        """How many times the group has delivered this pending entry (0: not pending)."""
        rows = self._redis.xpending_range(
            keys.JOBS_STREAM, keys.TRAINER_GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(rows[0]["times_delivered"]) if rows else 0

    def pending_count(self) -> int:
        try:
            info = self._redis.xpending(keys.JOBS_STREAM, keys.TRAINER_GROUP)
        except redis.ResponseError:
            return 0
        return int(info["pending"])

    def backlog(self) -> tuple[int, int | None]:
        """(jobs waiting or running, creation time in ms of the oldest of them)."""
        if not self._redis.exists(keys.JOBS_STREAM):
            return 0, None
        groups = {decode(g["name"]): g for g in self._redis.xinfo_groups(keys.JOBS_STREAM)}
        group = groups.get(keys.TRAINER_GROUP)
        if group is None:  # no worker has started yet: everything waits
            first = self._redis.xrange(keys.JOBS_STREAM, count=1)
            return int(self._redis.xlen(keys.JOBS_STREAM)), _entry_ms(
                first[0][0]
            ) if first else None
        summary = self._redis.xpending(keys.JOBS_STREAM, keys.TRAINER_GROUP)
        lag = int(group.get("lag") or 0)
        oldest = [_entry_ms(summary["min"])] if summary["pending"] else []
        if lag:
            after = "(" + decode(group["last-delivered-id"])
            first = self._redis.xrange(keys.JOBS_STREAM, min=after, count=1)
            oldest += [_entry_ms(first[0][0])] if first else []
        return int(summary["pending"]) + lag, min(oldest) if oldest else None


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
