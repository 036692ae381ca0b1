"""Background loops of the gateway: follow registry events; keep the engine in step."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from loramem.adapter_store import AdapterStore
from loramem.engine import EngineClient
from loramem.registry import Registry, served_name
from router.router import Router
from server.metrics import GatewayMetrics

log = logging.getLogger("loramem.gateway")


class EventFollower(threading.Thread):
    """Applies publish events to the router's index as they happen (no full rebuild)."""

    def __init__(self, registry: Registry, router: Router, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="event-follower")
        self.registry, self.router, self.stop = registry, router, stop
        self.cursor = registry.last_event_id()
        router.load_all()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for entry_id, event in self.registry.events_after(self.cursor, block_ms=500):
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
    """Makes the engine hold exactly the active module versions.

    It loads what is missing (for example after the engine restarted empty) and unloads a
    replaced version once no request of this gateway runs on it and it has been stale for
    `retire_grace_s`, which covers requests that other gateway replicas still run on it.
    """

    def __init__(
        self,
        registry: Registry,
        router: Router,
        engine: EngineClient,
        store: AdapterStore,
        metrics: GatewayMetrics,
        stop: threading.Event,
        in_flight: Counter[str],
        retire_grace_s: float,
        interval_s: float = 5.0,
    ) -> None:
        super().__init__(daemon=True, name="reconciler")
        self.registry, self.router, self.engine, self.store = registry, router, engine, store
        self.metrics, self.stop, self.interval_s = metrics, stop, interval_s
        self.in_flight, self.retire_grace_s = in_flight, retire_grace_s
        self.stale_since: dict[str, float] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.reconcile_once()
            except Exception as exc:
                log.warning("reconcile failed: %s", exc)
            self.stop.wait(self.interval_s)

    def reconcile_once(self) -> int:
        active = self.router.all_active()
        self.metrics.modules_active.set(len(active))
        up = self.engine.healthy()
        self.metrics.engine_up.labels(self.engine.base_url).set(1 if up else 0)
        if not up:
            return 0
        loaded = self.engine.loaded_models()
        self.metrics.engine_adapters_loaded.labels(self.engine.base_url).set(len(loaded) - 1)
        missing = [(m, v) for m, v in active.items() if served_name(m, v) not in loaded]
        for module, version in missing:
            self.engine.load_adapter(self.store.materialize(module, version))
            log.info("reconciler loaded %s", served_name(module, version))
        self._retire_stale(loaded - {served_name(m, v) for m, v in active.items()})
        return len(missing)

    def _retire_stale(self, stale: set[str]) -> None:
        now = time.monotonic()
        self.stale_since = {n: self.stale_since.get(n, now) for n in stale if "@v" in n}
        for name, since in list(self.stale_since.items()):
            if self.in_flight[name] <= 0 and now - since >= self.retire_grace_s:
                self.engine.unload_adapter(name)
                del self.stale_since[name]
                log.info("reconciler retired %s", name)
