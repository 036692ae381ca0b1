"""The gateway's view of its vLLM engines: health, adapter affinity and spill-over.

Affinity uses rendezvous (highest-random-weight) hashing of the engine model name, so a
module version keeps going to the same healthy engine, and losing an engine moves only
the modules it held. When the preferred engine is much busier than the next one, requests
spill over to it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter


def _weight(engine: str, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{engine}|{name}".encode(), digest_size=8).digest())


class EnginePool:
    def __init__(self, urls: list[str], spill_in_flight: int) -> None:
        if not urls:
            raise ValueError("at least one engine URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.spill_in_flight = spill_in_flight
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

    def candidates(self, name: str) -> list[str]:
        """Engines to try for `name`, best first: healthy ones by affinity, then the rest."""
        ranked = sorted(self.urls, key=lambda url: _weight(url, name), reverse=True)
        healthy = [u for u in ranked if self._healthy[u]]
        if len(healthy) >= 2:
            first, second = healthy[0], healthy[1]
            if self.in_flight[first] - self.in_flight[second] >= self.spill_in_flight:
                healthy[0], healthy[1] = second, first  # spill over under load
        return healthy + [u for u in ranked if not self._healthy[u]]
