"""Background loops of the gateway: follow registry events; keep the engines to the placement.

Both loops outlive any error: an iteration that fails is counted
(`loramem_loop_errors_total{loop}`), logged, and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from loramem.adapter_store import AdapterStore
from loramem.engine import EngineClient
from loramem.errors import ModelNotFound, NotFound
from loramem.names import (
    names_checksum,
    parse_served_name,
    public_served_name,
    version_name,
    version_of,
)
from loramem.registry import Registry
from loramem.registry.modules import advance
from router.pending import PendingFacts, decode_fact_ids
from router.router import Router
from server.engines import EnginePool
from server.metrics import GatewayMetrics

log = logging.getLogger("loramem.gateway")

FORGOTTEN_RATE_PER_S = 1e-4  # about one request in three hours: demand that places nothing
# How long GET /jobs/{id} holds a published job's reply until this gateway routes to its
# version: the follower applies a publish within one read (tens of ms, 0.1 s polls on a
# cluster), so this is only reached while it is retrying an error.
ROUTED_WAIT_S = 5.0


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
        pending: PendingFacts | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(daemon=True, name="event-follower")
        self.on_change = on_change  # called after events were applied (wakes the reconciler)
        self.registry, self.router, self.stop = registry, router, stop
        self.metrics = metrics or GatewayMetrics()
        self.max_backoff_s = max_backoff_s
        # Index snapshots are written between events (router/snapshot.py); 0: never here.
        self.snapshot_interval_s = snapshot_interval_s
        self._snapshot_due = time.monotonic() + snapshot_interval_s
        self.pending = pending  # facts changed since their module's version (read your writes)
        # The newest version of each module whose publish this gateway has applied (to its
        # router and its pending facts both), for wait_routed.
        self._applied: dict[str, int] = {}
        self._applied_changed = threading.Condition()
        self.cursor = registry.modules.last_event_id()  # first: no later event is missed
        self._load_all()

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
        """Apply the events after the cursor, in order; returns how many were applied.

        The stream is only trimmed when an event is added, so whether events were lost
        is asked only when some arrived (an idle step is one blocking read)."""
        events = self.registry.modules.events_after(self.cursor, block_ms)
        if not events:
            return 0
        if self.registry.modules.events_lost_after(self.cursor):
            self.resync()  # its state includes what was just read
            self._changed()
            return 0
        applied = 0
        try:
            for entry_id, event in events:
                self.apply(event)
                # Only once applied: an error retries this event.
                self.cursor = advance(self.cursor, event, entry_id)
                applied += 1
        finally:
            if applied:
                self._changed()
        return applied

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def resync(self) -> None:
        """Rebuild routing state from the registry; events after the new cursor follow."""
        log.warning("event follower fell behind the trimmed stream at %s: resyncing", self.cursor)
        cursor = self.registry.modules.last_event_id()
        self._load_all()
        self.cursor = cursor
        self.metrics.follower_resyncs.inc()

    def _load_all(self) -> None:
        self.router.load_all()
        if self.pending is not None:
            self.pending.load_all()
        active = self.router.all_active()
        with self._applied_changed:  # modules retired while the stream was lost
            for gone in set(self._applied) - set(active):
                del self._applied[gone]
        for module, version in active.items():
            self._mark_applied(module, version)

    def _mark_applied(self, module: str, version: int) -> None:
        with self._applied_changed:
            if version > self._applied.get(module, 0):
                self._applied[module] = version
                self._applied_changed.notify_all()

    def wait_routed(self, module: str, version: int, timeout_s: float = ROUTED_WAIT_S) -> bool:
        """Wait until this gateway routes with `module@v<version>` (or a newer version).

        A job is published in Redis a few milliseconds before this gateway's follower
        applies the event, so a client that saw "published" and asked at once could still
        be answered as before it. GET /jobs/{id} waits here, so a published job's version
        is what this gateway answers with. A version no longer active (replaced by a
        move or a split, or retired) is not waited for. False: not applied in time."""
        with self._applied_changed:
            if self._applied.get(module, 0) >= version:
                return True
        try:
            if self.registry.modules.get(module).active_version < version:
                return False  # never to be routed: the publish was superseded
        except NotFound:
            return False  # retired
        with self._applied_changed:
            return self._applied_changed.wait_for(
                lambda: self._applied.get(module, 0) >= version, timeout_s
            )

    def apply(self, event: dict[str, str]) -> None:
        kind = event.get("type")
        if kind == "published":
            tenant, module, version = event["tenant"], event["module"], int(event["version"])
            try:
                self.router.apply_published(tenant, module, version)
                # After the router: meanwhile a question is still answered as pending.
                if self.pending is not None:
                    self.pending.apply_published(tenant, module, version, event.get("job_id", ""))
            except NotFound as exc:  # replaced and swept since: nothing left to serve
                log.info("skipping a publish that is gone: %s", exc.message)
            self._mark_applied(module, version)
        elif kind == "retired":
            self.router.apply_retired(event["module"])
            if self.pending is not None:
                self.pending.apply_retired(event.get("tenant", ""), event["module"])
            # Forgotten, so that the map stays as large as the modules served (versions
            # only grow: a module that gets facts again is waited for as any other).
            with self._applied_changed:
                self._applied.pop(event["module"], None)
        elif kind == "facts_changed" and self.pending is not None:
            self.pending.apply_changed(
                event["tenant"],
                event["module"],
                event["job_id"],
                event["change"],
                decode_fact_ids(event["fact_ids"]),
            )


class Reconciler(threading.Thread):
    """Keeps every engine to the desired placement of module versions.

    A version belongs on the healthy engines its placement picks (server/placement.py);
    engines fill themselves on first request (their resolver fetches from Redis), so the
    reconciler only unloads what no longer belongs: a version replaced or retired, or one
    placed elsewhere now (an engine joined, or its demand fell). It unloads once the
    version has not belonged for `retire_grace_s` (which also covers requests other
    gateway replicas still run on it) and no request of this gateway runs on it there.
    Engines without the resolver (`preload`) get their placed versions loaded from this
    host's folder instead. After the same grace it deletes this host's folders of
    versions no longer active. It also keeps the pool's health marks current, so failed
    engines rejoin by themselves, and the per-engine residency metrics.

    It passes every `interval_s` while anything changes. While nothing does (every engine
    up, no adapter arriving or leaving, nothing waiting for its grace, no request, no
    event) the pause doubles up to `max_interval_s`, so an idle gateway does not poll its
    engines; an applied event (`wake`), a forwarded request or an engine marked down by
    a request brings it back to `interval_s` at once.
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
        preload: bool = True,
        max_interval_s: float = 30.0,
    ) -> None:
        super().__init__(daemon=True, name="reconciler")
        self.registry, self.router, self.pool, self.engines = registry, router, pool, engines
        self.store, self.metrics, self.stop, self.interval_s = store, metrics, stop, interval_s
        self.max_interval_s = max(interval_s, max_interval_s)
        self._wake = threading.Event()
        self._errors = 0  # steps failed so far: a failing pass is retried soon
        self.retire_grace_s, self.preload = retire_grace_s, preload
        # Requests in flight per (engine URL, served name); replaced by the forwarder's.
        self.in_flight: Counter[tuple[str, str]] = Counter()
        # (engine URL or "local", served name) -> when it was first seen not belonging. The
        # on-demand load path runs on other threads, so every access holds the lock.
        self.stale_since: dict[tuple[str, str], float] = {}
        self.resident: dict[str, set[str]] = {}  # engine URL -> adapters seen last pass
        self._forgot_at = 0.0
        self._lock = threading.Lock()

    def run(self) -> None:
        pause_s = self.interval_s
        while not self.stop.is_set():
            busy = self.run_once()
            # Nothing changed and nothing waits: look less often, up to the maximum.
            pause_s = self.interval_s if busy else min(2 * pause_s, self.max_interval_s)
            self.idle(pause_s)

    def wake(self) -> None:
        """Something changed (an event applied, the gateway stopping): pass now."""
        self._wake.set()

    def idle(self, pause_s: float) -> None:
        """Wait `pause_s`, or less: until woken, or until requests ran or an engine was
        marked down meanwhile (looked at every `interval_s`, in memory, no I/O)."""
        deadline = time.monotonic() + pause_s
        seen = self._activity()
        while not self.stop.is_set():
            left_s = deadline - time.monotonic()
            if left_s <= 0 or self._activity() != seen:
                return
            if self._wake.wait(min(self.interval_s, left_s)):
                self._wake.clear()
                return

    def _activity(self) -> tuple[int, tuple[bool, ...]]:
        """Changes every pass must follow: requests forwarded, engines' health marks."""
        return self.pool.demand.recorded, tuple(self.pool.healthy(u) for u in self.engines)

    def run_once(self) -> bool:
        """One pass over every engine and the local folders; errors are counted, never
        raised, so the loop never stops. True when the next pass is due soon: an engine
        is down or its health changed, adapters arrived or left, something waits for its
        grace to end, or a step failed."""
        before = self._activity()
        errors = self._errors
        # Health first, for every engine: placement is over the healthy ones.
        for url in self.engines:
            self._step(url, self.check_health)
        healthy = [u for u in self.engines if self.pool.healthy(u)]
        self.pool.rebalance()  # placement sized to the slots, from the demand now
        changed = self._activity()[1] != before[1] or len(healthy) < len(self.engines)
        for url in healthy:
            changed |= bool(self._step(url, self.reconcile_engine))
        self._step("local folders", lambda _name: self.sweep_local())
        # Forget, once a minute, the demand of versions nobody asked for in a long while.
        if time.monotonic() - self._forgot_at >= 60:
            self._forgot_at = time.monotonic()
            self.pool.demand.forget_below(FORGOTTEN_RATE_PER_S, self._forgot_at)
        try:
            self.metrics.modules_active.set(len(self.router.all_active()))
        except Exception:
            self._errors += 1
            self.metrics.loop_errors.labels("reconciler").inc()
            log.exception("reconciler metrics failed")
        with self._lock:
            waiting = bool(self.stale_since)
        return changed or waiting or self._errors != errors

    def _step(self, name: str, step: Callable[[str], object]) -> object:
        try:
            return step(name)
        except Exception as exc:
            self._errors += 1
            self.metrics.loop_errors.labels("reconciler").inc()
            log.warning("reconciling %s failed: %s", name, exc)
            return None

    def check_health(self, url: str) -> bool:
        up = self.engines[url].healthy()
        self.pool.mark(url, up)
        self.metrics.engine_up.labels(url).set(1 if up else 0)
        return up

    def reconcile_engine(self, url: str) -> bool:
        """Unload from one healthy engine what no longer belongs there (and, with
        `preload`, load what does); True when its adapters changed since the last pass."""
        engine = self.engines[url]
        # A name from before served names carried digests counts too: it is stale.
        adapters = {n for n in engine.loaded_models() if version_of(n)}
        active = self.router.served_names()
        if self.preload:  # every active version's placement: one host, few versions
            for name in sorted(n for n in active - adapters if url in self.pool.placement(n)):
                try:
                    self.load_into(url, name)
                    adapters.add(name)
                except ModelNotFound:  # retired while this router had not heard yet
                    log.info("not loading %s: no longer active", name)
        # Only what the engine holds is checked, so a pass costs the engine's slots, not
        # the number of modules.
        stale = {n for n in adapters if n not in active or url not in self.pool.placement(n)}
        unloaded = self._unload_stale(url, stale)
        previous = self.resident.get(url)
        if self._count_residency(url, adapters - unloaded):
            self._read_engine_loads(url, engine)
        return bool(unloaded) or previous != self.resident[url]

    def _count_residency(self, url: str, adapters: set[str]) -> bool:
        """Resident adapters per engine, and the ones that arrived since the last pass
        (loaded on demand by the engine's resolver, or by a gateway). True when some
        arrived, or on the first pass: only then can the engine's own counts change."""
        previous = self.resident.get(url)
        arrived = adapters - previous if previous is not None else adapters
        if previous is not None:
            self.metrics.engine_adapter_loads.labels(url).inc(len(arrived))
        self.resident[url] = adapters
        self.metrics.engine_adapters_loaded.labels(url).set(len(adapters))
        return previous is None or bool(arrived)

    def _read_engine_loads(self, url: str, engine: EngineClient) -> None:
        """Mirror the engine resolver's own counters (its /metrics) per engine."""
        loads = engine.resolver_loads()
        if loads is None:
            return
        count, seconds = loads
        self.metrics.engine_resolver_loads.labels(url).set(count)
        self.metrics.engine_resolver_load_seconds.labels(url).set(seconds)

    def load_into(self, url: str, name: str) -> bool:
        """Materialise a module version from the registry and load it into one engine.
        Only the active version is ever loaded, under its own served name: a retired one
        is not servable again, nor other weights given its number by a restored Redis."""
        parsed = parse_served_name(name)
        if parsed is None:
            return False
        module, version, _digest = parsed
        try:
            current = self.registry.modules.get(module).active_version == version
            current = current and names_checksum(
                parsed, self.registry.modules.version(module, version).checksum
            )
        except NotFound:
            current = False
        if not current:  # a client may see it: its public name
            shown = public_served_name(name)
            raise ModelNotFound(f"The model `{shown}` does not exist.", param="model")
        started = time.monotonic()
        self.engines[url].load_adapter(self.store.materialize(module, version))
        self.metrics.engine_push_load_seconds.labels(url).observe(time.monotonic() - started)
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

    def _unload_stale(self, url: str, stale: set[str]) -> set[str]:
        """Unload the names of `stale` that have not belonged on `url` for the grace and
        run no request there; returns those unloaded."""
        unloaded = set()
        for name in self._stale_long_enough(url, stale, time.monotonic()):
            if self.in_flight[(url, name)] <= 0:
                self.engines[url].unload_adapter(name)
                self._forget(url, name)
                self.metrics.engine_adapter_evictions.labels(url).inc()
                unloaded.add(name)
                log.info("unloaded %s from %s: it no longer belongs there", name, url)
        return unloaded

    def sweep_local(self) -> int:
        """Delete this host's folders of versions replaced (or retired) at least the grace
        ago. An engine reads a folder when it loads the adapter, and a retired version is
        never loaded again, so nothing needs the folder afterwards. Versions newer than
        the active one are kept: a worker writes the folder before it publishes."""
        active = self.router.all_active()
        retired = set(self.registry.modules.retired_before(time.time() - self.retire_grace_s))
        local = self.store.local_versions()
        replaced = {version_name(m, v) for m, v in local if active.get(m, 0) > v}
        ready = self._stale_long_enough("local", replaced, time.monotonic())
        removed = 0
        for module, version in local:
            name = version_name(module, version)
            if (module, version) in retired or name in ready:
                removed += self.store.remove_local(module, version)
                self._forget("local", name)
        return removed
