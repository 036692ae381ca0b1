"""Placement of module versions on engines (server/placement.py, server/engines.py): spread,
stable under engine changes (only about 1/N of the versions move), replicas that follow
demand, and a reconciler that keeps fake engines to the placement."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

from loramem.adapter_store import AdapterStore
from loramem.names import served_name, version_name
from server.engines import EnginePool
from server.metrics import GatewayMetrics
from server.placement import DemandMeter, ReplicaPolicy, assign, placed
from server.reconcile import Reconciler

NAMES = [f"m{i}@v1" for i in range(10_000)]
ENGINES = [f"http://engine-{i}:8100" for i in range(16)]


def test_versions_spread_evenly_over_the_engines() -> None:
    homes = [placed(n, ENGINES, 1)[0] for n in NAMES]
    share = {e: homes.count(e) / len(NAMES) for e in ENGINES}
    assert all(0.8 / 16 < s < 1.2 / 16 for s in share.values()), share


def test_removing_an_engine_moves_only_its_own_versions() -> None:
    before = {n: placed(n, ENGINES, 1)[0] for n in NAMES}
    gone = ENGINES[3]
    after = {n: placed(n, [e for e in ENGINES if e != gone], 1)[0] for n in NAMES}
    moved = {n for n in NAMES if before[n] != after[n]}
    assert moved == {n for n in NAMES if before[n] == gone}


def test_adding_an_engine_moves_about_one_in_n() -> None:
    before = {n: placed(n, ENGINES, 2) for n in NAMES}
    grown = [*ENGINES, "http://engine-16:8100"]
    after = {n: placed(n, grown, 2) for n in NAMES}
    for name in NAMES:  # a version only ever moves onto the new engine
        assert set(after[name]) - set(before[name]) <= {grown[-1]}
    moved = sum(after[n] != before[n] for n in NAMES) / len(NAMES)
    assert 0.5 * 2 / 17 < moved < 1.5 * 2 / 17, moved  # about replicas/N of the versions


def test_a_version_is_placed_by_its_version_name_whatever_its_digest() -> None:
    engines = [f"http://e{i}" for i in range(8)]
    for i in range(50):
        mine, theirs = served_name(f"m{i}", 1, "ab" * 32), served_name(f"m{i}", 1, "cd" * 32)
        assert placed(mine, engines, 3) == placed(theirs, engines, 3)
        assert placed(mine, engines, 3) == placed(version_name(f"m{i}", 1), engines, 3)
    spread = {placed(served_name(f"m{i}", 1, "ab" * 32), engines, 1)[0] for i in range(50)}
    assert len(spread) > 1  # the module and version still spread them


def test_replicas_follow_the_rate_within_the_limits() -> None:
    policy = ReplicaPolicy(rate_per_replica=4.0, max_replicas=3)
    assert [policy.replicas(r, 16) for r in (0, 3.9, 4, 8.5, 100)] == [1, 1, 2, 3, 3]
    assert policy.replicas(100, 2) == 2  # never more than the engines
    assert ReplicaPolicy(4.0, 0).replicas(100, 16) == 16  # 0: up to every engine


def test_the_demand_meter_settles_at_the_rate_and_decays() -> None:
    meter = DemandMeter(half_life_s=10.0)
    for i in range(600):  # 10 requests/s for 60 s
        meter.record("m@v1", i / 10)
    assert 9.0 < meter.rate("m@v1", 60.0) < 11.0
    assert 4.5 < meter.rate("m@v1", 70.0) < 5.5  # one half-life later
    meter.forget_below(1.0, 200.0)
    assert meter.rate("m@v1", 200.0) == 0.0


def test_a_hot_version_gets_more_engines_and_the_least_busy_serves_first() -> None:
    pool = EnginePool(ENGINES[:4], 100, ReplicaPolicy(4.0, 0), DemandMeter(half_life_s=5.0))
    for url in pool.urls:
        pool.mark(url, True)
    assert len(pool.placement("hot@v1")) == 1
    started = time.monotonic() - 60
    for i in range(1200):  # 20 requests/s for the last minute
        pool.demand.record("hot@v1", started + i / 20)
    home = pool.placement("hot@v1")
    assert len(home) == 4  # 1 + floor(~20 / 4), capped at the 4 engines
    assert home[0] == placed("hot@v1", ENGINES[:4], 1)[0]  # its first engine stays first
    pool.in_flight[home[0]] = 5
    assert pool.candidates("hot@v1")[0] == home[1]  # the next replica, not the busy one


class FakeEngine:
    """An engine's adapter residency: what it holds, what was unloaded."""

    def __init__(self, names: set[str], resolver_loads: tuple[float, float] | None) -> None:
        self.names = set(names)
        self.unloaded: list[str] = []
        self.loads = resolver_loads

    def healthy(self) -> bool:
        return True

    def loaded_models(self) -> set[str]:
        return {"base", *self.names}

    def unload_adapter(self, name: str) -> None:
        self.names.discard(name)
        self.unloaded.append(name)

    def resolver_loads(self) -> tuple[float, float] | None:
        return self.loads


def test_the_reconciler_unloads_what_is_placed_elsewhere_once_idle(tmp_path: Path) -> None:
    active = {f"m{i}": 1 for i in range(40)}
    names = {served_name(f"m{i}", 1, "ab" * 32) for i in range(40)}
    engines = {"http://a": FakeEngine(names, (7, 1.4)), "http://b": FakeEngine(names, None)}
    pool = EnginePool(list(engines), spill_in_flight=4)
    router = SimpleNamespace(all_active=lambda: active, served_names=lambda: set(names))
    registry = SimpleNamespace(modules=SimpleNamespace(retired_before=lambda before_s: []))
    metrics = GatewayMetrics()
    loop = Reconciler(
        registry,  # type: ignore[arg-type]
        router,  # type: ignore[arg-type]
        pool,
        engines,  # type: ignore[arg-type]
        AdapterStore(tmp_path, registry),  # type: ignore[arg-type]
        metrics,
        threading.Event(),
        retire_grace_s=0,
        preload=False,
    )
    busy = next(n for n in sorted(names) if "http://a" not in placed(n, list(engines), 1))
    loop.in_flight[("http://a", busy)] = 1  # a request still runs on it there
    loop.run_once()
    for url, engine in engines.items():
        expected = {n for n in names if placed(n, list(engines), 1) == [url]}
        extra = {busy} if url == "http://a" else set()
        assert engine.names == expected | extra
        evictions = metrics.registry.get_sample_value(
            "loramem_engine_adapter_evictions_total", {"engine": url}
        )
        assert evictions == len(names - expected - extra)
        resident = metrics.registry.get_sample_value(
            "loramem_engine_adapters_loaded", {"engine": url}
        )
        assert resident == len(engine.names)
    loop.in_flight[("http://a", busy)] = 0
    loop.run_once()
    assert busy not in engines["http://a"].names
    assert (
        metrics.registry.get_sample_value("loramem_engine_resolver_loads", {"engine": "http://a"})
        == 7
    )
    refilled = sorted(engines["http://b"].names)[0]
    engines["http://b"].names.discard(refilled)  # the engine restarted without it
    loop.reconcile_engine("http://b")
    engines["http://b"].names.add(refilled)  # and fetched it again on a request
    loop.reconcile_engine("http://b")
    assert (
        metrics.registry.get_sample_value(
            "loramem_engine_adapter_loads_total", {"engine": "http://b"}
        )
        == 1
    )


def test_placement_sized_to_slots_fills_each_engine_hottest_first() -> None:
    engines = ENGINES[:2]
    names = [f"m{i}@v1" for i in range(40)]
    # m0 hottest, then m1, ...: one engine per version
    table = assign([(n, 1) for n in names], engines, slots=8)
    per_engine = {e: [n for n in names if table[n] == [e]] for e in engines}
    hot = names[:16]
    for engine in engines:  # the 16 hottest fill both engines' 8 slots exactly
        assert len([n for n in per_engine[engine] if n in hot]) == 8
    for name in names[16:]:  # the rest stay on their rendezvous engine, over the slots
        assert table[name] == placed(name, engines, 1)
    for name in hot:  # a hot version leaves its rendezvous engine only when it was full
        home = placed(name, engines, 1)[0]
        if table[name] != [home]:
            hotter = [n for n in names[: names.index(name)] if table[n] == [home]]
            assert len(hotter) == 8
    assert assign([(n, 1) for n in names], engines, slots=0) == {
        n: placed(n, engines, 1) for n in names
    }


def test_extra_replicas_only_take_free_slots() -> None:
    engines = ENGINES[:2]
    table = assign([("a@v1", 2), ("b@v1", 2), ("c@v1", 2)], engines, slots=2)
    assert sorted(table["a@v1"]) == sorted(engines) and sorted(table["b@v1"]) == sorted(engines)
    assert table["c@v1"] == placed("c@v1", engines, 1)  # no room left: its first engine only


def test_the_pool_keeps_a_slot_table_from_the_demand() -> None:
    pool = EnginePool(ENGINES[:2], 8, ReplicaPolicy(float("inf"), 1), DemandMeter(60.0), slots=2)
    for url in pool.urls:
        pool.mark(url, True)
    names = [f"m{i}@v1" for i in range(6)]
    for rank, name in enumerate(names):  # m0 asked for most
        for _ in range(len(names) - rank):
            pool.demand.record(name, 0.0)
    pool.rebalance(now=0.0)
    counts = {u: sum(pool.placement(n, 0.0) == [u] for n in names[:4]) for u in pool.urls}
    assert counts == dict.fromkeys(pool.urls, 2)  # the four hottest fill the four slots
    # A version first asked for between passes takes a free slot at once, if any: none here.
    pool.demand.record("new@v1", 0.0)
    assert pool.placement("new@v1", 0.0) == placed("new@v1", pool.urls, 1)
    # Never asked for (a resident adapter the reconciler checks): where it would go, not kept.
    assert pool.placement("other@v1", 0.0) == placed("other@v1", pool.urls, 1)
    assert "other@v1" not in pool._table
    pool.mark(pool.urls[1], False)  # an engine down: everything on the one left
    assert all(pool.placement(n, 0.0) == [pool.urls[0]] for n in names)


def test_versions_stay_where_they_are_while_they_fit() -> None:
    engines = ENGINES[:2]
    names = [f"m{i}@v1" for i in range(16)]
    first = assign([(n, 1) for n in names], engines, slots=8)
    # The demand order turned around: with the table kept, nobody moves.
    again = assign([(n, 1) for n in reversed(names)], engines, slots=8, current=first)
    assert again == first
    moved = assign([(n, 1) for n in reversed(names)], engines, slots=8)
    assert moved != first  # without it, the versions at the boundary trade places


def test_no_spill_into_an_engine_whose_slots_are_taken() -> None:
    pool = EnginePool(ENGINES[:2], 2, ReplicaPolicy(float("inf"), 1), DemandMeter(60.0), slots=1)
    for url in pool.urls:
        pool.mark(url, True)
    a, b = (
        "a@v1",
        next(
            f"b{i}@v1"
            for i in range(100)
            if placed(f"b{i}@v1", ENGINES[:2], 1) != placed("a@v1", ENGINES[:2], 1)
        ),
    )
    for name in (a, b):
        pool.demand.record(name, 0.0)
    pool.rebalance(0.0)
    home = pool.placement(a, 0.0)[0]
    pool.in_flight[home] = 5  # far busier than the other engine, whose one slot b holds
    assert pool.candidates(a, 0.0)[0] == home
    unsized = EnginePool(ENGINES[:2], 2, ReplicaPolicy(float("inf"), 1), DemandMeter(60.0))
    for url in unsized.urls:
        unsized.mark(url, True)
    unsized.in_flight[placed(a, unsized.urls, 1)[0]] = 5
    assert unsized.candidates(a, 0.0)[0] != placed(a, unsized.urls, 1)[0]  # spills
