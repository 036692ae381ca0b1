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

from server.placement import DemandMeter, ReplicaPolicy, assign, placed, ranked

ONE_REPLICA = ReplicaPolicy(rate_per_replica=float("inf"), max_replicas=1)


class EnginePool:
    def __init__(
        self,
        urls: list[str],
        spill_in_flight: int,
        policy: ReplicaPolicy = ONE_REPLICA,
        demand: DemandMeter | None = None,
        slots: int = 0,
    ) -> None:
        if not urls:
            raise ValueError("at least one engine URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.spill_in_flight = spill_in_flight
        self.policy = policy
        self.demand = demand or DemandMeter(half_life_s=60.0)
        self.in_flight: Counter[str] = Counter()  # per engine URL
        # Adapters placement puts on one engine (0: no limit). With a limit, placement is
        # a table kept by `rebalance` (the reconciler, every pass) from the demand, and a
        # version first asked for between passes takes a free slot at once.
        self.slots = slots
        self._table: dict[str, list[str]] = {}
        self._free: dict[str, int] = {}  # slots left per engine in the table
        self._table_over: tuple[str, ...] = ()  # the healthy engines it was made for
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
        now = time.monotonic() if now is None else now
        if self.slots <= 0:
            rate = self.demand.rate(name, now)
            return placed(name, healthy, self.policy.replicas(rate, len(healthy)))
        with self._lock:
            if self._table_over != tuple(healthy):
                self._rebalance(healthy, now)
            found = self._table.get(name)
            if found is not None:
                return list(found)
            # Not in the table: the first engine by rank with a free slot, else the first.
            ranking = ranked(name, healthy)
            chosen = [e for e in ranking if self._free[e] > 0][:1] or ranking[:1]
            if name in self.demand:  # asked for: it takes the slot until the next pass
                self._table[name] = chosen
                self._free[chosen[0]] -= 1
            return list(chosen)

    def _has_room(self, engine: str, home: list[str]) -> bool:
        """Whether a request may spill to `engine`: with placement sized to the slots,
        only where the version is placed or a slot is free, since spilling into a full
        cache evicts a version placed there, which is then loaded again."""
        if self.slots <= 0 or engine in home:
            return True
        with self._lock:
            return self._free.get(engine, 0) > 0

    def rebalance(self, now: float | None = None) -> None:
        """Size the placement to the slots again from the demand now (no I/O)."""
        if self.slots <= 0:
            return
        with self._lock:
            healthy = [u for u in self.urls if self._healthy[u]]
            self._rebalance(healthy, time.monotonic() if now is None else now)

    def _rebalance(self, healthy: list[str], now: float) -> None:
        rates = self.demand.rates(now)
        hottest = sorted(rates, key=lambda name: (-rates[name], name))
        demand = [(n, self.policy.replicas(rates[n], len(healthy))) for n in hottest]
        # The same engines: versions stay where they are while they fit. Others: placement
        # starts again from the rendezvous ranking (an engine that joins takes its share).
        current = self._table if self._table_over == tuple(healthy) else None
        self._table = assign(demand, healthy, self.slots, current) if healthy else {}
        self._free = dict.fromkeys(healthy, self.slots)
        for engines in self._table.values():
            for engine in engines:
                self._free[engine] -= 1
        self._table_over = tuple(healthy)

    def candidates(self, name: str, now: float | None = None) -> list[str]:
        """Engines to try for `name`, best first: its placed engines (least busy first),
        then the other healthy ones by rank, then the rest. (`now`: a simulation's clock.)"""
        home = self.placement(name, now)
        rest = [u for u in ranked(name, self.urls) if u not in home]
        order = sorted(home, key=lambda url: self.in_flight[url])  # stable: rank breaks ties
        order += [u for u in rest if self._healthy[u]]
        if len(order) >= 2:
            first, second = order[0], order[1]
            gap = self.in_flight[first] - self.in_flight[second]
            if gap >= self.spill_in_flight and self._has_room(second, home):
                order[0], order[1] = second, first  # spill over under load
        return order + [u for u in rest if not self._healthy[u]]
