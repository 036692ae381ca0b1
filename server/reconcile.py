"""Background loops of the gateway: follow registry events; keep the engine in step."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from loramem.adapter_store import AdapterStore
from loramem.engine import EngineClient
from loramem.names import parse_served_name, served_name
from loramem.registry import Registry
from router.router import Router
from server.engines import EnginePool
from server.metrics import GatewayMetrics

log = logging.getLogger("loramem.gateway")


class EventFollower(threading.Thread):
    """Applies publish events to the router's index as they happen (no full rebuild)."""

    def __init__(self, registry: Registry, router: Router, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="event-follower")
        self.registry, self.router, self.stop = registry, router, stop
        self.cursor = registry.modules.last_event_id()
        router.load_all()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for entry_id, event in self.registry.modules.events_after(
                    self.cursor, block_ms=500
                ):
                    self.cursor = entry_id
                    if event.get("type") == "published":
                        self.router.apply_published(
                            event["tenant"], event["module"], int(event["version"])
                        )
                    elif event.get("type") == "retired":
                        self.router.apply_retired(event["module"])
            except Exception:
                log.exception("event follower error; retrying")
                self.stop.wait(1.0)


class Reconciler(threading.Thread):
    """Makes every engine hold exactly the active module versions.

    It loads what an engine is missing (for example after it restarted empty) and unloads
    a replaced version once no request of this gateway runs on it and it has been stale
    for `retire_grace_s`, which covers requests other gateway replicas still run on it.
    It also keeps the pool's health marks current, so failed engines rejoin by themselves.
    """

    def __init__(
        self,
        registry: Registry,
        router: Router,
        pool: EnginePool,
        engines: dict[str, EngineClient],
        store: AdapterStore,
        metrics: GatewayMetrics,
        stop: threading.Event,
        retire_grace_s: float,
        interval_s: float = 2.0,
    ) -> None:
        super().__init__(daemon=True, name="reconciler")
        self.registry, self.router, self.pool, self.engines = registry, router, pool, engines
        self.store, self.metrics, self.stop, self.interval_s = store, metrics, stop, interval_s
        self.retire_grace_s = retire_grace_s
        self.in_flight: Counter[str] = Counter()  # replaced by the forwarder's counter
        self.stale_since: dict[tuple[str, str], float] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            for url in self.engines:
                try:
                    self.reconcile_engine(url)
                except Exception as exc:
                    log.warning("reconciling %s failed: %s", url, exc)
            self.metrics.modules_active.set(len(self.router.all_active()))
            self.stop.wait(self.interval_s)

    def reconcile_engine(self, url: str) -> int:
        engine = self.engines[url]
        up = engine.healthy()
        self.pool.mark(url, up)
        self.metrics.engine_up.labels(url).set(1 if up else 0)
        if not up:
            return 0
        loaded = engine.loaded_models()
        active = {served_name(m, v) for m, v in self.router.all_active().items()}
        missing = active - loaded
        for name in sorted(missing):
            self.load_into(url, name)
        self._retire_stale(url, {n for n in loaded - active if parse_served_name(n)})
        adapters = {n for n in loaded | missing if parse_served_name(n)}
        self.metrics.engine_adapters_loaded.labels(url).set(len(adapters))
        return len(missing)

    def load_into(self, url: str, name: str) -> bool:
        """Materialise a module version from the registry and load it into one engine."""
        parsed = parse_served_name(name)
        if parsed is None:
            return False
        self.engines[url].load_adapter(self.store.materialize(*parsed))
        log.info("loaded %s into %s", name, url)
        return True

    def _retire_stale(self, url: str, stale: set[str]) -> None:
        now = time.monotonic()
        for key in [k for k in self.stale_since if k[0] == url and k[1] not in stale]:
            del self.stale_since[key]
        for name in stale:
            since = self.stale_since.setdefault((url, name), now)
            if self.in_flight[name] <= 0 and now - since >= self.retire_grace_s:
                self.engines[url].unload_adapter(name)
                del self.stale_since[(url, name)]
                log.info("retired %s from %s", name, url)
