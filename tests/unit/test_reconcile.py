"""The gateway's background loops with fakes: an event is applied before the cursor moves
past it, a trimmed stream triggers a resync, and no error stops a loop; a retired version
is never routed to or loaded again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from loramem.adapter_store import AdapterStore, checksum
from loramem.errors import ModelNotFound, NotFound
from loramem.names import served_name
from router.router import Router
from server.engines import EnginePool
from server.metrics import GatewayMetrics
from server.reconcile import EventFollower, Reconciler
from tests.conftest import FakeEmbedder

FILES = {"a": b"1"}  # every version's files in these tests
CHECKSUM = checksum(FILES)


class FakeModules:
    def __init__(self, events: list[tuple[str, dict[str, str]]], active: dict[str, int]) -> None:
        self.events = events
        self.active = active
        self.lost_after: str | None = None  # events after this id were trimmed

    # One bucket's stream (loramem/keys.py): the cursor is per bucket.
    def last_event_id(self) -> dict[str, str]:
        return {"00": self.events[-1][0] if self.events else "0-0"}

    def events_after(
        self, cursor: dict[str, str], block_ms: int
    ) -> list[tuple[str, dict[str, str]]]:
        after = _id(cursor.get("00", "0-0"))
        return [(i, {**e, "bucket": "00"}) for i, e in self.events if _id(i) > after]

    def events_lost_after(self, cursor: dict[str, str]) -> bool:
        at = _id(cursor.get("00", "0-0"))
        return self.lost_after is not None and _id(self.lost_after) >= at

    def get(self, module: str) -> SimpleNamespace:
        if module not in self.active:
            raise NotFound(f"module not found: {module}")
        return SimpleNamespace(active_version=self.active[module])

    def version(self, module: str, version: int) -> SimpleNamespace:
        return SimpleNamespace(version=version, checksum=CHECKSUM)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


class FlakyRouter:
    """Fails the first `failures` applies, like a Redis blip while reading a version."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.applied: list[tuple[str, int]] = []
        self.loads = 0

    def load_all(self) -> None:
        self.loads += 1

    def apply_published(self, tenant: str, module: str, version: int) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis went away")
        self.applied.append((module, version))

    def apply_retired(self, module: str) -> None:
        self.applied.append((module, 0))

    def all_active(self) -> dict[str, int]:
        return {}


def published(module: str, version: int) -> dict[str, str]:
    return {"type": "published", "tenant": "t", "module": module, "version": str(version)}


def follower(modules: FakeModules, router: Any, metrics: GatewayMetrics) -> EventFollower:
    registry = SimpleNamespace(modules=modules)
    return EventFollower(registry, router, threading.Event(), metrics, max_backoff_s=0.01)  # type: ignore[arg-type]


def errors(metrics: GatewayMetrics, loop: str) -> float:
    return metrics.registry.get_sample_value("loramem_loop_errors_total", {"loop": loop}) or 0.0


def test_an_event_that_fails_is_retried_not_skipped() -> None:
    modules = FakeModules([("1-0", published("m", 1))], {})
    router, metrics = FlakyRouter(failures=1), GatewayMetrics()
    follow = follower(modules, router, metrics)
    modules.events.append(("2-0", published("m", 2)))
    with pytest.raises(ConnectionError):
        follow.step()
    assert follow.cursor == {"00": "1-0"} and router.applied == []  # the cursor stayed before it
    modules.events.append(("3-0", {"type": "retired", "tenant": "t", "module": "m"}))
    assert follow.step() == 2
    assert follow.cursor == {"00": "3-0"} and router.applied == [("m", 2), ("m", 0)]


def test_a_version_is_told_as_routed_only_once_its_publish_was_applied() -> None:
    modules = FakeModules([], {"m": 2})
    follow = follower(modules, FlakyRouter(failures=1), GatewayMetrics())
    modules.events.append(("1-0", published("m", 2)))
    with pytest.raises(ConnectionError):
        follow.step()
    assert not follow.wait_routed("m", 2, timeout_s=0)
    follow.step()
    assert follow.wait_routed("m", 2, timeout_s=0) and follow.wait_routed("m", 1, timeout_s=0)
    # A retired module is answered at once, not after the wait: checked from a thread that
    # would still be waiting long after the join gives up.
    told: list[bool] = []
    asker = threading.Thread(
        target=lambda: told.append(follow.wait_routed("gone", 1, 600)), daemon=True
    )
    asker.start()
    asker.join(timeout=30)
    assert not asker.is_alive() and told == [False]


def test_the_follower_loop_survives_errors_and_counts_them() -> None:
    modules = FakeModules([], {})
    router, metrics = FlakyRouter(failures=3), GatewayMetrics()
    follow = follower(modules, router, metrics)
    modules.events.append(("1-0", published("m", 1)))
    follow.start()
    deadline = time.monotonic() + 10
    while not router.applied and time.monotonic() < deadline:
        time.sleep(0.01)
    follow.stop.set()
    follow.join(timeout=5)
    assert router.applied == [("m", 1)]
    assert errors(metrics, "event_follower") == 3


def test_a_follower_behind_the_trimmed_stream_resyncs_from_the_registry() -> None:
    modules = FakeModules([("1-0", published("m", 1))], {})
    router, metrics = FlakyRouter(failures=0), GatewayMetrics()
    follow = follower(modules, router, metrics)
    assert router.loads == 1
    # Events 2..5 were added and trimmed away before this gateway read them.
    modules.events = [("5-0", published("m", 5))]
    modules.lost_after = "4-0"
    assert follow.step() == 0
    assert router.loads == 2 and follow.cursor == {"00": "5-0"}
    assert metrics.registry.get_sample_value("loramem_event_follower_resyncs_total") == 1


def test_the_wait_for_routing_forgets_modules_retired_or_gone_at_a_resync() -> None:
    """The versions applied are kept for the modules served only: a retired one, or one
    a resync no longer finds active, is dropped (and asked for, is read from Redis)."""
    modules = FakeModules([], {"m": 1, "k": 1})
    follow = follower(modules, FlakyRouter(failures=0), GatewayMetrics())
    modules.events += [("1-0", published("m", 1)), ("2-0", published("k", 1))]
    assert follow.step() == 2
    assert follow.wait_routed("m", 1, timeout_s=0) and follow.wait_routed("k", 1, timeout_s=0)
    modules.events.append(("3-0", {"type": "retired", "tenant": "t", "module": "m"}))
    assert follow.step() == 1
    assert not follow.wait_routed("m", 1, timeout_s=0)
    assert follow.wait_routed("k", 1, timeout_s=0)
    modules.events = [("9-0", published("x", 1))]
    modules.lost_after = "4-0"  # the router's resync finds no module active (FlakyRouter)
    assert follow.step() == 0
    assert not follow.wait_routed("k", 1, timeout_s=0)


class BrokenEngine:
    def healthy(self) -> bool:
        raise RuntimeError("engine client bug")


def reconciler(tmp_path: Path, modules: FakeModules, engines: dict[str, Any]) -> Reconciler:
    registry = SimpleNamespace(modules=modules)
    router = SimpleNamespace(
        all_active=lambda: {m: v for m, v in modules.active.items() if v},
        served_names=lambda: {served_name(m, v, CHECKSUM) for m, v in modules.active.items() if v},
    )
    pool = EnginePool(list(engines), spill_in_flight=4)
    return Reconciler(
        registry,  # type: ignore[arg-type]
        router,  # type: ignore[arg-type]
        pool,  # type: ignore[arg-type]
        engines,
        AdapterStore(tmp_path, registry),  # type: ignore[arg-type]
        GatewayMetrics(),
        threading.Event(),
        retire_grace_s=0,
    )


def test_the_reconciler_counts_an_error_and_goes_on(tmp_path: Path) -> None:
    modules = FakeModules([], {"m": 2})
    modules.retired_before = lambda before_s: (_ for _ in ()).throw(ConnectionError("down"))  # type: ignore[attr-defined]
    loop = reconciler(tmp_path, modules, {"http://e": BrokenEngine()})
    loop.run_once()  # neither the engine nor the folder sweep raises out of it
    loop.run_once()
    assert errors(loop.metrics, "reconciler") == 4
    assert loop.metrics.registry.get_sample_value("loramem_modules_active") == 1


def test_a_retired_version_is_never_loaded_again_and_its_folder_goes(tmp_path: Path) -> None:
    modules = FakeModules([], {"m": 2, "gone": 0})
    modules.retired_before = lambda before_s: [("gone", 1)]  # type: ignore[attr-defined]
    loaded: list[str] = []
    engine = SimpleNamespace(load_adapter=lambda ref: loaded.append(ref.name))
    loop = reconciler(tmp_path, modules, {"http://e": engine})
    loop.store.materialize = lambda m, v: loop.store.write_local(m, v, FILES)  # type: ignore[method-assign]
    with pytest.raises(ModelNotFound):
        loop.load_into("http://e", served_name("m", 1, CHECKSUM))
    with pytest.raises(ModelNotFound):
        loop.load_into("http://e", served_name("gone", 1, CHECKSUM))
    # The active number under another digest: other weights (a Redis restored from an
    # older snapshot handed the number out again).
    with pytest.raises(ModelNotFound, match="`m@v2`"):
        loop.load_into("http://e", served_name("m", 2, checksum({"a": b"other"})))
    assert not loop.load_into("http://e", "m@v2")  # no digest: not a served name
    name = served_name("m", 2, CHECKSUM)
    assert loop.load_into("http://e", name) and loaded == [name]
    for module, version in [("m", 1), ("m", 3), ("gone", 1)]:
        loop.store.write_local(module, version, FILES)
    assert loop.sweep_local() == 2  # replaced m@v1 and retired gone@v1; m@v3 is not out yet
    assert sorted(loop.store.local_versions()) == [("m", 2), ("m", 3)]


def test_an_explicit_old_version_is_not_found() -> None:
    modules = FakeModules([], {"t~m": 2})
    router = Router(SimpleNamespace(modules=modules), FakeEmbedder(), "base", 0.5)  # type: ignore[arg-type]
    router.index_module("t", "t~m", 2, CHECKSUM, [], None)
    decision = router.route("t", "m@v2", "q")
    served = served_name("t~m", 2, CHECKSUM)
    assert (decision.target, decision.header) == (served, "m@v2")
    assert router.route("t", "m", "q").target == served
    with pytest.raises(ModelNotFound):
        router.route("t", "m@v1", "q")
    modules.active["t~m"] = 3  # published, but this router has not heard yet
    assert router.route("t", "m@v3", "q").target == served_name("t~m", 3, CHECKSUM)
    # Clients name versions by their public names only, never by served names.
    engine_names = [("t", served.removeprefix("t~")), ("t", served)]
    for tenant, model in [
        ("other-tenant", "m@v2"),
        ("t", "t~m@v2"),
        ("other-tenant", "t~m"),
        *engine_names,
    ]:
        with pytest.raises(ModelNotFound):  # in the caller's namespace only, by name only
            router.route(tenant, model, "q")


class CountingModules(FakeModules):
    """Counts the reads a follower makes: an idle step is one blocking read."""

    def __init__(self, events: list[tuple[str, dict[str, str]]]) -> None:
        super().__init__(events, {})
        self.reads = self.lost_checks = 0

    def events_after(self, cursor: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        self.reads += 1
        return super().events_after(cursor, block_ms)

    def events_lost_after(self, cursor: str) -> bool:
        self.lost_checks += 1
        return super().events_lost_after(cursor)


def test_an_idle_follower_step_is_one_read_and_applied_events_wake_the_reconciler() -> None:
    modules = CountingModules([("1-0", published("m", 1))])
    woken: list[int] = []
    follow = EventFollower(
        SimpleNamespace(modules=modules),  # type: ignore[arg-type]
        FlakyRouter(failures=0),
        threading.Event(),
        GatewayMetrics(),
        on_change=lambda: woken.append(1),
    )
    assert [follow.step() for _ in range(3)] == [0, 0, 0]
    assert (modules.reads, modules.lost_checks, woken) == (3, 0, [])
    modules.events.append(("2-0", published("m", 2)))
    assert follow.step() == 1
    assert (modules.lost_checks, woken) == (1, [1])
    modules.events = [("9-0", published("m", 9))]  # 3..8 trimmed before this gateway read them
    modules.lost_after = "8-0"
    assert follow.step() == 0 and follow.cursor == {"00": "9-0"}  # resynced, and woken
    assert woken == [1, 1]


class SteadyEngine:
    """An engine that answers its health check as told and holds a fixed set of adapters."""

    def __init__(self, names: set[str]) -> None:
        self.up, self.names, self.checks = True, names, 0

    def healthy(self) -> bool:
        self.checks += 1
        return self.up

    def loaded_models(self) -> set[str]:
        if not self.up:
            raise ConnectionError("engine down")
        return {"base", *self.names}

    def resolver_loads(self) -> tuple[float, float] | None:
        return None


def test_the_reconciler_backs_off_while_nothing_changes(tmp_path: Path) -> None:
    modules = FakeModules([], {"m": 1})
    modules.retired_before = lambda before_s: []  # type: ignore[attr-defined]
    engine = SteadyEngine({served_name("m", 1, CHECKSUM)})
    loop = reconciler(tmp_path, modules, {"http://e": engine})
    pauses: list[float] = []

    def idle(pause_s: float) -> None:
        pauses.append(pause_s)
        if len(pauses) == 7:
            loop.stop.set()

    loop.idle = idle  # type: ignore[method-assign]
    loop.run()
    # The first pass finds the engine up and its adapter (a change); then nothing changes.
    assert pauses == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_the_reconciler_passes_often_while_an_engine_is_down_or_a_version_waits(
    tmp_path: Path,
) -> None:
    modules = FakeModules([], {"m": 2})
    modules.retired_before = lambda before_s: []  # type: ignore[attr-defined]
    engine = SteadyEngine({served_name("m", 2, CHECKSUM)})
    loop = reconciler(tmp_path, modules, {"http://e": engine})
    assert loop.run_once()  # first pass: the engine came up, its adapters were seen
    assert not loop.run_once()  # nothing changed
    engine.up = False
    assert loop.run_once() and loop.run_once()  # down: looked at every interval_s
    engine.up = True
    assert loop.run_once()  # back
    assert not loop.run_once()
    loop.retire_grace_s = 3600.0
    modules.active["m"] = 3  # m@v2 replaced: it waits for its grace on the engine
    assert loop.run_once() and loop.run_once()
    assert engine.names == {served_name("m", 2, CHECKSUM)}


def test_the_reconcilers_pause_ends_when_woken_or_on_requests_or_a_failed_engine(
    tmp_path: Path,
) -> None:
    loop = reconciler(tmp_path, FakeModules([], {}), {"http://e": SteadyEngine(set())})
    loop.interval_s = 0.01  # how often a pause looks at requests and health marks

    def ends(change: Callable[[], object]) -> bool:
        """Whether a pause of an hour ends once `change` happens."""
        waiter = threading.Thread(target=loop.idle, args=(3600.0,), daemon=True)
        waiter.start()
        change()
        waiter.join(timeout=30)
        return not waiter.is_alive()

    assert ends(loop.wake)
    assert ends(lambda: loop.pool.demand.record("m@v1", time.monotonic()))
    loop.pool.mark("http://e", True)
    assert ends(lambda: loop.pool.mark("http://e", False))
    assert ends(loop.stop.set)
