"""Where a module version lives: the engines rendezvous hashing picks, as many as its demand.

Pure code, no I/O: the forwarder asks it where to send a request, the reconciler where a
version belongs, and `bench/placement_sim.py` drives the same functions at scale.

Rendezvous (highest-random-weight) hashing ranks the engines for each served name, by its
version name (the digest left out, loramem/names.py: where a version lives does not
depend on its weights, so it can be told from the name alone, before training); a
version is placed on the first `replicas` of them. Adding or removing one of N engines
moves only the versions whose ranking it enters or leaves, about 1/N of them, so the
engines' adapter caches stay warm across changes. The replica count follows the version's
request rate: one engine per `rate_per_replica` requests per second, measured by a
decayed counter (`DemandMeter`). Sized to the engines' adapter slots (`assign`), the
most requested versions take their rendezvous engines first and a version that would
overfill an engine's cache goes to the next engine with room.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from loramem.names import without_digest


def weight(engine: str, name: str) -> int:
    """The rendezvous weight of one engine for one served name."""
    return int.from_bytes(hashlib.blake2b(f"{engine}|{name}".encode(), digest_size=8).digest())


def ranked(name: str, engines: Iterable[str]) -> list[str]:
    """Engines best first for `name`; the order of `engines` does not matter."""
    return list(_ranked(without_digest(name), tuple(engines)))


@lru_cache(maxsize=1 << 16)
def _ranked(name: str, engines: tuple[str, ...]) -> tuple[str, ...]:
    # Cached: every request asks, and hashing every engine each time is most of the cost.
    return tuple(sorted(engines, key=lambda engine: weight(engine, name), reverse=True))


def placed(name: str, engines: Iterable[str], replicas: int) -> list[str]:
    """The engines `name` lives on: the first `replicas` of its ranking (at least one)."""
    return ranked(name, engines)[: max(1, replicas)]


@dataclass(frozen=True)
class ReplicaPolicy:
    rate_per_replica: float  # requests/s one engine takes for a version before a second joins
    max_replicas: int  # 0: up to every engine

    def replicas(self, rate_per_s: float, engines: int) -> int:
        """1 engine per started `rate_per_replica` requests/s, within [1, max, engines]."""
        wanted = 1 + math.floor(rate_per_s / self.rate_per_replica)
        limit = engines if self.max_replicas <= 0 else min(engines, self.max_replicas)
        return max(1, min(wanted, limit))


class DemandMeter:
    """Request rate per served name, an exponentially decayed count (requests/s).

    A burst counts at once; a version left alone decays to half its rate every
    `half_life_s`, so its extra replicas go after a few half-lives. Thread-safe: the
    forwarder records on the event loop, the reconciler reads from its thread.
    """

    def __init__(self, half_life_s: float) -> None:
        self.decay_per_s = math.log(2) / half_life_s
        self._state: dict[str, tuple[float, float]] = {}  # name -> (rate, at time)
        self.recorded = 0  # requests recorded so far: the reconciler's sign of activity
        self._lock = threading.Lock()

    def record(self, name: str, now: float) -> None:
        with self._lock:
            rate = self._decayed(name, now)
            # An event adds decay_per_s to the rate: a steady r/s settles at r/s.
            self._state[name] = (rate + self.decay_per_s, now)
            self.recorded += 1

    def rate(self, name: str, now: float) -> float:
        with self._lock:
            return self._decayed(name, now)

    def rates(self, now: float) -> dict[str, float]:
        """Every name's rate now."""
        with self._lock:
            return {name: self._decayed(name, now) for name in self._state}

    def __contains__(self, name: object) -> bool:
        return name in self._state

    def forget_below(self, rate_per_s: float, now: float) -> None:
        """Drop names whose rate decayed below `rate_per_s`, so the map stays bounded."""
        with self._lock:
            for name in [n for n in self._state if self._decayed(n, now) < rate_per_s]:
                del self._state[name]

    def _decayed(self, name: str, now: float) -> float:
        rate, at = self._state.get(name, (0.0, now))
        return rate * math.exp(-self.decay_per_s * max(0.0, now - at))


def assign(
    demand: list[tuple[str, int]],
    engines: list[str],
    slots: int,
    current: dict[str, list[str]] | None = None,
) -> dict[str, list[str]]:
    """Placement sized to the engines' adapter slots.

    `demand` lists (served name, replicas wanted), the most requested first. Each name
    takes engines with a free slot, up to its replicas: those `current` already places it
    on first, then the others in its rendezvous order; when every engine is full, its first
    replica stays where it is, or goes to its top-ranked engine (over its slots: there it
    is loaded on demand and competes for the cache). So the hottest versions keep their
    engines, and a version that would overfill an engine goes to the next one with room
    instead of the engine's cache reloading adapters on every turn. Keeping `current`
    first is what stops versions of nearly equal demand from trading places (and being
    loaded again) each time their order changes. `slots` 0: no limit."""
    free = dict.fromkeys(engines, slots if slots > 0 else len(demand) + 1)
    current = current or {}
    placement: dict[str, list[str]] = {}
    for name, replicas in demand:
        ranking = ranked(name, engines)
        kept = [e for e in current.get(name, []) if e in free]
        order = kept + [e for e in ranking if e not in kept]
        chosen = [e for e in order if free[e] > 0][: max(1, replicas)] or order[:1]
        for engine in chosen:
            free[engine] -= 1
        placement[name] = chosen
    return placement
