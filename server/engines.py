"""The gateway's view of its vLLM engines: health, placement of module versions, spill-over.

A module version goes to the engines it is placed on (server/placement.py: rendezvous
hashing of its served name among the healthy engines, as many as its request rate asks
for), the least busy of them first, so it keeps going to the same engines and losing an
engine moves only the versions it held. When the chosen engine is much busier than the
next one, requests spill over to it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from server.placement import DemandMeter, ReplicaPolicy, placed, ranked

ONE_REPLICA = ReplicaPolicy(rate_per_replica=float("inf"), max_replicas=1)


class EnginePool:
    def __init__(
        self,
        urls: list[str],
        spill_in_flight: int,
        policy: ReplicaPolicy = ONE_REPLICA,
        demand: DemandMeter | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one engine URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.spill_in_flight = spill_in_flight
        self.policy = policy
        self.demand = demand or DemandMeter(half_life_s=60.0)
        self.in_flight: Counter[str] = Counter()  # per engine URL
        # Unknown until the reconciler's first check; an engine marked down is still tried
        # last, so a request never fails only because no check has run yet.
        self._healthy = dict.fromkeys(self.urls, False)
        self._lock = threading.Lock()

    def mark(self, url: str, healthy: bool) -> None:
        with self._lock:
            self._healthy[url] = healthy

    def healthy(self, url: str) -> bool:
        return self._healthy.get(url, False)

    def any_healthy(self) -> bool:
        return any(self._healthy.values())

    def placement(self, name: str, now: float | None = None) -> list[str]:
        """The healthy engines `name` belongs on now (none when no engine is healthy)."""
        healthy = [u for u in self.urls if self._healthy[u]]
        if not healthy:
            return []
        rate = self.demand.rate(name, time.monotonic() if now is None else now)
        return placed(name, healthy, self.policy.replicas(rate, len(healthy)))

    def candidates(self, name: str, now: float | None = None) -> list[str]:
        """Engines to try for `name`, best first: its placed engines (least busy first),
        then the other healthy ones by rank, then the rest. (`now`: a simulation's clock.)"""
        home = self.placement(name, now)
        rest = [u for u in ranked(name, self.urls) if u not in home]
        order = sorted(home, key=lambda url: self.in_flight[url])  # stable: rank breaks ties
        order += [u for u in rest if self._healthy[u]]
        if len(order) >= 2:
            first, second = order[0], order[1]
            if self.in_flight[first] - self.in_flight[second] >= self.spill_in_flight:
                order[0], order[1] = second, first  # spill over under load
        return order + [u for u in rest if not self._healthy[u]]
