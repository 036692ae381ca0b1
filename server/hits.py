"""Adapter hits over the last hour, per tenant and module, kept in the gateway's memory.

Prometheus has the same counts (`loramem_requests_total`), but only where someone runs
Prometheus, and without a tenant label. This ring is what the console charts: a fixed
number of buckets per (tenant, module), this gateway's requests since it started. Several
gateways each count their own share.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

BASE = "base"  # the series of requests the base model answered


@dataclass(frozen=True)
class HitSeries:
    module: str
    counts: list[int]  # one per bucket, oldest first; the last is the current bucket

    @property
    def total(self) -> int:
        return sum(self.counts)


class HitCounter:
    """Counts per bucket of `bucket_s` seconds over `window_s`, per tenant and module.
    A series with no hit in the window is dropped, so memory follows recent traffic."""

    def __init__(
        self, window_s: int, bucket_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        if window_s % bucket_s:
            raise ValueError("the window must be a whole number of buckets")
        self.bucket_s = bucket_s
        self.buckets = window_s // bucket_s
        self._clock = clock
        # (tenant, module) -> {bucket number since the epoch: count}
        self._series: dict[tuple[str, str], dict[int, int]] = {}
        self._lock = threading.Lock()  # recorded on the event loop, read from a thread

    def record(self, tenant: str, module: str | None) -> None:
        now = self._bucket()
        key = (tenant, module or BASE)
        with self._lock:
            if key not in self._series:  # a new series: first drop the idle ones
                self._sweep(now)
            series = self._series.setdefault(key, {})
            series[now] = series.get(now, 0) + 1
            if len(series) > self.buckets:
                self._trim(series, now)

    def of_tenant(self, tenant: str) -> list[HitSeries]:
        """The tenant's series with a hit in the window, busiest first."""
        now = self._bucket()
        first = now - self.buckets + 1
        with self._lock:
            self._sweep(now)
            out = [
                HitSeries(module, [series.get(b, 0) for b in range(first, now + 1)])
                for (owner, module), series in self._series.items()
                if owner == tenant
            ]
        return sorted(out, key=lambda s: (-s.total, s.module))

    def _sweep(self, now: int) -> None:
        for key, series in list(self._series.items()):
            self._trim(series, now)
            if not series:
                del self._series[key]

    def _bucket(self) -> int:
        return int(self._clock() // self.bucket_s)

    def _trim(self, series: dict[int, int], now: int) -> None:
        for bucket in [b for b in series if b <= now - self.buckets]:
            del series[bucket]
