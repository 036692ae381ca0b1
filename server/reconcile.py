"""Background loops of the gateway: follow registry events; keep the engine in step.

Both loops outlive any error: an iteration that fails is counted
(`loramem_loop_errors_total{loop}`), logged, and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from loramem.adapter_store import AdapterStore
from loramem.engine import EngineClient
from loramem.errors import ModelNotFound, NotFound
from loramem.names import parse_served_name, served_name
from loramem.registry import Registry
from router.router import Router
from server.engines import EnginePool
from server.metrics import GatewayMetrics

log = logging.getLogger("loramem.gateway")


class EventFollower(threading.Thread):
    """Applies publish events to the router's index as they happen (no full rebuild).

    An event is applied before the cursor moves past it, so an error retries the same
    event (with a growing pause, at most `max_backoff_s`) instead of skipping it. When the
    stream's cap has trimmed events the cursor had not reached, the router is rebuilt
    from the registry (a resync) and following resumes from the stream's end.
    """

    def __init__(
        self,
        registry: Registry,
        router: Router,
        stop: threading.Event,
        metrics: GatewayMetrics | None = None,
        max_backoff_s: float = 30.0,
        snapshot_interval_s: float = 0.0,
    ) -> None:
        super().__init__(daemon=True, name="event-follower")
        self.registry, self.router, self.stop = registry, router, stop
        self.metrics = metrics or GatewayMetrics()
        self.max_backoff_s = max_backoff_s
        # Index snapshots are written between events (router/snapshot.py); 0: never here.
        self.snapshot_interval_s = snapshot_interval_s
        self._snapshot_due = time.monotonic() + snapshot_interval_s
        self.cursor = registry.modules.last_event_id()  # first: no later event is missed
        router.load_all()

    def run(self) -> None:
        backoff_s = 0.0
        while not self.stop.is_set():
            try:
                self.step()
                self.maybe_snapshot()
                backoff_s = 0.0
            except Exception:
                self.metrics.loop_errors.labels("event_follower").inc()
                backoff_s = min(max(2 * backoff_s, 0.5), self.max_backoff_s)
                log.exception("event follower error; retrying in %.1f s", backoff_s)
                self.stop.wait(backoff_s)

    def maybe_snapshot(self) -> None:
        if self.snapshot_interval_s <= 0 or time.monotonic() < self._snapshot_due:
            return
        self._snapshot_due = time.monotonic() + self.snapshot_interval_s
        self.router.save_snapshots()

    def step(self, block_ms: int = 500) -> int:
        """Apply the events after the cursor, in order; returns how many were applied."""
        if self.registry.modules.events_lost_after(self.cursor):
            self.resync()
        applied = 0
        for entry_id, event in self.registry.modules.events_after(self.cursor, block_ms):
            self.apply(event)
            self.cursor = entry_id  # only once applied: an error retries this event
            applied += 1
        return applied

    def resync(self) -> None:
        """Rebuild routing state from the registry; events after the new cursor follow."""
        log.warning("event follower fell behind the trimmed stream at %s: resyncing", self.cursor)
        cursor = self.registry.modules.last_event_id()
        self.router.load_all()
        self.cursor = cursor
        self.metrics.follower_resyncs.inc()

    def apply(self, event: dict[str, str]) -> None:
        kind = event.get("type")
        if kind == "published":
            try:
                self.router.apply_published(event["tenant"], event["module"], int(event["version"]))
            except NotFound as exc:  # replaced and swept since: nothing left to serve
                log.info("skipping a publish that is gone: %s", exc.message)
        elif kind == "retired":
            self.router.apply_retired(event["module"])


class Reconciler(threading.Thread):
    """Makes every engine hold exactly the active module versions.

    It loads what an engine is missing (for example after it restarted empty) and unloads
    a replaced version once no request of this gateway runs on it and it has been stale
    for `retire_grace_s`, which covers requests other gateway replicas still run on it.
    After the same grace it deletes this host's folders of versions no longer active.
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
        # (engine URL or "local", served name) -> when it was first seen not active. The
        # on-demand load path runs on other threads, so every access holds the lock.
        self.stale_since: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            self.run_once()
            self.stop.wait(self.interval_s)

    def run_once(self) -> None:
        """One pass over every engine and the local folders; errors are counted, never
        raised, so the loop never stops."""
        steps = [(url, self.reconcile_engine) for url in self.engines]
        for name, step in [*steps, ("local folders", lambda _name: self.sweep_local())]:
            try:
                step(name)
            except Exception as exc:
                self.metrics.loop_errors.labels("reconciler").inc()
                log.warning("reconciling %s failed: %s", name, exc)
        try:
            self.metrics.modules_active.set(len(self.router.all_active()))
        except Exception:
            self.metrics.loop_errors.labels("reconciler").inc()
            log.exception("reconciler metrics failed")

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
            try:
                self.load_into(url, name)
            except ModelNotFound:  # retired while this router had not heard yet
                log.info("not loading %s: no longer active", name)
        self._retire_stale(url, {n for n in loaded - active if parse_served_name(n)})
        adapters = {n for n in loaded | missing if parse_served_name(n)}
        self.metrics.engine_adapters_loaded.labels(url).set(len(adapters))
        return len(missing)

    def load_into(self, url: str, name: str) -> bool:
        """Materialise a module version from the registry and load it into one engine.
        Only the active version is ever loaded: a retired one is not servable again."""
        parsed = parse_served_name(name)
        if parsed is None:
            return False
        module, version = parsed
        try:
            active = self.registry.modules.get(module).active_version
        except NotFound:
            active = 0
        if version != active:
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")
        self.engines[url].load_adapter(self.store.materialize(module, version))
        log.info("loaded %s into %s", name, url)
        return True

    def _stale_long_enough(self, scope: str, stale: set[str], now: float) -> set[str]:
        """Of `stale` (names in `scope` not active now), those stale for the grace;
        forgets names of `scope` that are active again or gone."""
        with self._lock:
            for key in [k for k in self.stale_since if k[0] == scope and k[1] not in stale]:
                del self.stale_since[key]
            return {
                name
                for name in stale
                if now - self.stale_since.setdefault((scope, name), now) >= self.retire_grace_s
            }

    def _forget(self, scope: str, name: str) -> None:
        with self._lock:
            self.stale_since.pop((scope, name), None)

    def _retire_stale(self, url: str, stale: set[str]) -> None:
        for name in self._stale_long_enough(url, stale, time.monotonic()):
            if self.in_flight[name] <= 0:
                self.engines[url].unload_adapter(name)
                self._forget(url, name)
                log.info("retired %s from %s", name, url)

    def sweep_local(self) -> int:
        """Delete this host's folders of versions replaced (or retired) at least the grace
        ago. An engine reads a folder when it loads the adapter, and a retired version is
        never loaded again, so nothing needs the folder afterwards. Versions newer than
        the active one are kept: a worker writes the folder before it publishes."""
        active = self.router.all_active()
        retired = set(self.registry.modules.retired_before(time.time() - self.retire_grace_s))
        local = self.store.local_versions()
        replaced = {served_name(m, v) for m, v in local if active.get(m, 0) > v}
        ready = self._stale_long_enough("local", replaced, time.monotonic())
        removed = 0
        for module, version in local:
            name = served_name(module, version)
            if (module, version) in retired or name in ready:
                removed += self.store.remove_local(module, version)
                self._forget("local", name)
        return removed
