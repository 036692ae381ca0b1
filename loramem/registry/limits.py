"""Per-tenant quotas, checked inside the transaction that stores facts, and per-key rate
limits in fixed windows that every gateway shares through Redis."""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from loramem import keys
from loramem.errors import QuotaExceeded, RateLimited


@dataclass(frozen=True)
class TenantQuotas:
    """What one tenant may hold; 0 means no limit."""

    facts: int = 0
    modules: int = 0
    open_jobs: int = 0  # jobs queued or running: not yet published or failed
    adapter_bytes: int = 0  # its stored version blobs, retired ones until swept

    def watched(self, tenant: str) -> list[str]:
        """Keys whose change must retry the storing transaction."""
        return [
            keys.tenant_facts(tenant),
            keys.tenant_modules(tenant),
            keys.tenant_open_jobs(tenant),
            keys.tenant_adapter_bytes(tenant),
        ]

    def check(
        self, pipe: redis.client.Pipeline, tenant: str, new_facts: int, new_module: bool
    ) -> None:
        """Raise QuotaExceeded if storing `new_facts` (and a module) would pass a quota.
        Runs on a WATCHing pipeline, before MULTI."""
        over = [
            (self.facts, pipe.scard(keys.tenant_facts(tenant)) + new_facts, "facts"),
            (self.modules, pipe.scard(keys.tenant_modules(tenant)) + int(new_module), "modules"),
            (self.open_jobs, pipe.scard(keys.tenant_open_jobs(tenant)) + 1, "open jobs"),
            (
                self.adapter_bytes,
                int(pipe.get(keys.tenant_adapter_bytes(tenant)) or 0),
                "adapter bytes",
            ),
        ]
        for quota, wanted, what in over:
            if quota and wanted > quota:
                raise QuotaExceeded(
                    f"tenant {tenant} would hold {wanted} {what}, over its quota of {quota}"
                )


def window_of(now_s: float, window_s: int) -> tuple[int, int]:
    """The fixed window `now_s` falls in, and whole seconds until the next one starts."""
    index = math.floor(now_s / window_s)
    retry_after_s = max(1, math.ceil((index + 1) * window_s - now_s))
    return index, retry_after_s


class RateLimiter:
    """Counts per subject (a key id, or a tenant with auth off) in fixed windows: INCR and
    EXPIRE in one round trip; a window's key dies shortly after the window ends."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def hit(self, subject: str, limit: int, window_s: int, now_s: float) -> None:
        """Count one request; raise RateLimited past `limit` in this window."""
        if not limit:
            return
        index, retry_after_s = window_of(now_s, window_s)
        if self._add("requests", subject, index, 1, window_s) > limit:
            raise RateLimited(f"over {limit} requests per {window_s} s for this key", retry_after_s)

    def check_tokens(self, subject: str, limit: int, window_s: int, now_s: float) -> None:
        """Raise RateLimited when this window's completion tokens already reach `limit`."""
        if not limit:
            return
        index, retry_after_s = window_of(now_s, window_s)
        used = int(self._redis.get(keys.rate_window("tokens", subject, index)) or 0)
        if used >= limit:
            raise RateLimited(
                f"over {limit} completion tokens per {window_s} s for this key", retry_after_s
            )

    def add_tokens(self, subject: str, tokens: int, window_s: int, now_s: float) -> None:
        """Count tokens an answer used (known after the fact, from the engine's usage)."""
        if tokens > 0:
            self._add("tokens", subject, window_of(now_s, window_s)[0], tokens, window_s)

    def _add(self, kind: str, subject: str, index: int, amount: int, window_s: int) -> int:
        key = keys.rate_window(kind, subject, index)
        pipe = self._redis.pipeline(transaction=True)
        pipe.incrby(key, amount)
        pipe.expire(key, window_s + 5)
        count, _ = pipe.execute()
        return int(count)
