"""What the gateway does without Redis: chat goes on from the routing state in memory.

The chat path touches Redis for three things it can do without for a while: the rate
limiter (fails open: a request is let through uncounted), a merge request (skipped: the
best single module answers, and a later request asks again) and the fact texts of a
rag/hybrid answer (the answer goes without them). The span check reads the texts the
router keeps first (router/router.py `fact_texts`), so it needs Redis only for a fact
outside them. After one failed call these are skipped
for `skip_s`, so an outage costs one Redis timeout, not one per request. Routes that
write (facts, documents, merges) need Redis: server/errors.py answers them 503 with
Retry-After.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

log = logging.getLogger("loramem.gateway")

T = TypeVar("T")

# What Redis going away raises: refused or reset connections, and the client's timeouts.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


class RedisOutage:
    def __init__(self, skip_s: float = 5.0) -> None:
        self.skip_s = skip_s
        self._until = 0.0  # monotonic time until which Redis is not asked

    def down(self) -> bool:
        return time.monotonic() < self._until

    def optional(self, what: str, fn: Callable[[], T], default: T) -> T:
        """`fn()`, or `default` while Redis is away (it says so in the log, once per
        failed call)."""
        if self.down():
            return default
        try:
            return fn()
        except REDIS_DOWN as exc:
            self.note(what, exc)
            return default

    def note(self, what: str, exc: Exception) -> None:
        """Redis failed a call: the optional ones are skipped for `skip_s`."""
        self._until = time.monotonic() + self.skip_s
        log.warning("redis unavailable, %s skipped for %.0f s: %s", what, self.skip_s, exc)
