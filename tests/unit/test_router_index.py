"""The fact-index backends behave the same; the module policy ranks as documented."""

from collections.abc import Callable

import numpy as np
import pytest

from router.index import ExactIndex, FactIndex, Hit, HnswIndex, IvfIndex, index_factory
from router.policy import ModuleScore, aggregate, choose
from router.router import RouteDecision

DIM = 32


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


BACKENDS: dict[str, Callable[[int], FactIndex]] = {
    "exact": lambda dim: ExactIndex(dim, initial_capacity=4),
    "hnsw": lambda dim: HnswIndex(dim, initial_capacity=4),  # forces several resizes
    # trains its clusters after 20 facts; probing every list keeps it exact for the tests
    "ivf": lambda dim: IvfIndex(dim, lists=4, probe=4, codes="fp32", train_at=20),
}


@pytest.fixture(params=sorted(BACKENDS))
def index(request: pytest.FixtureRequest) -> FactIndex:
    return BACKENDS[request.param](DIM)


def test_search_finds_each_stored_vector_first(index: FactIndex) -> None:
    vectors = unit_rows(50, seed=1)
    index.upsert_many([f"f{i}" for i in range(50)], [f"m{i % 3}" for i in range(50)], vectors)
    for i in range(50):
        best = index.search(vectors[i], 3)[0]
        assert (best.fact_id, best.module) == (f"f{i}", f"m{i % 3}")
        assert best.score == pytest.approx(1.0, abs=1e-5)
    hits = index.search(vectors[0], 5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_upsert_of_a_known_fact_moves_its_vector_and_module(index: FactIndex) -> None:
    vectors = unit_rows(3, seed=2)
    for i in range(3):
        index.upsert(f"f{i}", "old", vectors[i])
    index.upsert("f0", "new", vectors[2])
    assert len(index) == 3
    assert index.facts_of("old") == {"f1", "f2"} and index.facts_of("new") == {"f0"}
    assert {h.fact_id for h in index.search(vectors[2], 2)} == {"f0", "f2"}
    assert index.search(vectors[0], 1)[0].score < 0.99  # the old vector is gone


def test_remove_keeps_the_other_rows(index: FactIndex) -> None:
    vectors = unit_rows(3, seed=3)
    for i, name in enumerate(["a", "b", "c"]):
        index.upsert(name, "m", vectors[i])
    index.remove("a")
    index.remove("a")  # unknown ids are ignored
    assert len(index) == 2 and "a" not in index
    assert index.facts_of("m") == {"b", "c"}
    assert index.search(vectors[2], 1)[0].fact_id == "c"
    assert {h.fact_id for h in index.search(vectors[0], 10)} == {"b", "c"}
    index.remove("b")
    index.remove("c")
    assert index.search(vectors[0], 3) == [] and index.facts_of("m") == set()


def test_churn_keeps_results_exact_and_the_index_small(index: FactIndex) -> None:
    first, second = unit_rows(300, seed=4), unit_rows(200, seed=5)
    index.upsert_many([f"a{i}" for i in range(300)], ["m"] * 300, first)
    for i in range(200):
        index.remove(f"a{i}")
    index.upsert_many([f"b{i}" for i in range(200)], ["n"] * 200, second)
    assert len(index) == 300
    for i in range(200, 300, 7):
        assert index.search(first[i], 1)[0].fact_id == f"a{i}"
    for i in range(0, 200, 7):
        assert index.search(second[i], 1)[0].fact_id == f"b{i}"
    assert all(h.fact_id[0] != "a" or int(h.fact_id[1:]) >= 200 for h in index.search(first[0], 50))
    if isinstance(index, HnswIndex):  # removed slots were recycled, not appended
        assert index._graph.get_current_count() == 300


def test_hnsw_agrees_with_exact() -> None:
    vectors, queries = unit_rows(1000, seed=6), unit_rows(40, seed=7)
    ids, modules = [f"f{i}" for i in range(1000)], [f"m{i % 10}" for i in range(1000)]
    exact, hnsw = ExactIndex(DIM), HnswIndex(DIM)
    exact.upsert_many(ids, modules, vectors)
    hnsw.upsert_many(ids, modules, vectors)
    overlap = []
    for q in queries:
        want, got = exact.search(q, 8), hnsw.search(q, 8)
        assert (got[0].fact_id, got[0].module) == (want[0].fact_id, want[0].module)
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=0.05)
        overlap.append(len({h.fact_id for h in want} & {h.fact_id for h in got}) / 8)
    assert np.mean(overlap) >= 0.95


def test_memory_is_reported_and_factory_picks_the_backend() -> None:
    assert isinstance(index_factory("exact")(DIM), ExactIndex)
    hnsw = index_factory("hnsw", hnsw_m=8)(DIM)
    assert isinstance(hnsw, HnswIndex) and hnsw.m == 8
    before = hnsw.nbytes
    hnsw.upsert_many([f"f{i}" for i in range(2000)], ["m"] * 2000, unit_rows(2000, seed=8))
    assert hnsw.nbytes > before >= 0
    with pytest.raises(ValueError):
        index_factory("faiss")(DIM)  # type: ignore[arg-type]


# ------------------------------------------------------------------- policy
def hits(*rows: tuple[str, float]) -> list[Hit]:
    return [Hit(f"f{i}", module, score) for i, (module, score) in enumerate(rows)]


def test_the_best_fact_outranks_many_near_misses() -> None:
    ranked = aggregate(hits(("a", 0.80), *[("b", 0.70)] * 7), support_weight=0.02)
    assert [m.module for m in ranked] == ["a", "b"]
    assert ranked[1].score == pytest.approx(0.70 + 0.02 * 6 * 0.70)
    assert ranked[1].best == pytest.approx(0.70)


def test_support_breaks_a_near_tie() -> None:
    ranked = aggregate(hits(("a", 0.80), ("b", 0.79), ("b", 0.60), ("b", 0.60)), 0.02)
    assert ranked[0] == ModuleScore("b", pytest.approx(0.79 + 0.02 * 1.2), 0.79)
    assert aggregate(hits(("a", 0.80), ("b", 0.79), ("b", 0.60)), 0.0)[0].module == "a"


def test_only_modules_with_a_fact_above_the_threshold_can_win() -> None:
    ranked = aggregate(hits(("b", 0.49), ("a", 0.50), *[("b", 0.48)] * 5), 0.02)
    assert ranked[0].module == "b"  # support lifts it above a...
    chosen = choose(ranked, threshold=0.5)
    assert chosen is not None and chosen.module == "a"  # ...but its best fact is below 0.5
    assert choose(ranked, threshold=0.51) is None
    assert choose([], threshold=0.0) is None


def test_candidates_header_is_compact() -> None:
    decision = RouteDecision(
        "m1@v2",
        "m1",
        "module",
        0.83,
        [],
        [ModuleScore("m1", 0.834, 0.8), ModuleScore("m2", 0.41, 0.4)],
    )
    assert decision.candidates_header == "m1:0.83,m2:0.41"
    assert RouteDecision("base", None, "base").candidates_header == ""


@pytest.mark.parametrize("backend", ["exact", "ivf"])
@pytest.mark.parametrize("count", [10, 60])  # ivf: before and after its clusters are trained
def test_state_round_trip_restores_every_fact_and_module(backend: str, count: int) -> None:
    index = BACKENDS[backend](DIM)
    vectors = unit_rows(count, seed=3)
    index.upsert_many([f"f{i}" for i in range(count)], [f"m{i % 4}" for i in range(count)], vectors)
    index.remove("f1")
    copy = BACKENDS[backend](DIM)
    copy.load_state(index.state())
    assert len(copy) == count - 1 and "f1" not in copy
    assert copy.facts_of("m2") == index.facts_of("m2")
    for i in (0, 2, count - 1):
        assert copy.search(vectors[i], 3) == index.search(vectors[i], 3)
    copy.upsert_many(["new"], ["m9"], vectors[1:2])  # the restored index keeps taking changes
    assert copy.search(vectors[1], 1)[0].fact_id == "new"


def test_ivf_codes_keep_the_nearest_fact_first() -> None:
    vectors = unit_rows(200, seed=4)
    for codes in ("fp16", "int8"):
        index = IvfIndex(DIM, lists=8, probe=8, codes=codes, train_at=100)
        index.upsert_many([f"f{i}" for i in range(200)], ["m"] * 200, vectors)
        assert index.trained
        assert all(index.search(vectors[i], 1)[0].fact_id == f"f{i}" for i in range(200))
        assert index.nbytes < ExactIndex(DIM).nbytes + 200 * DIM * 4


def test_hnsw_state_round_trip_keeps_deleted_slots_recyclable() -> None:
    vectors = unit_rows(300, seed=15)
    index = HnswIndex(DIM)
    index.upsert_many([f"f{i}" for i in range(300)], [f"m{i % 3}" for i in range(300)], vectors)
    for i in range(20):
        index.remove(f"f{i}")
    copy = HnswIndex(DIM)
    copy.load_state(index.state())
    assert len(copy) == 280 and copy.facts_of("m1") == index.facts_of("m1")
    for i in range(20, 300, 13):
        assert copy.search(vectors[i], 3) == index.search(vectors[i], 3)
    copy.upsert_many([f"n{i}" for i in range(20)], ["m9"] * 20, unit_rows(20, seed=16))
    assert copy._graph.get_current_count() == 300  # the deleted slots were reused
    with pytest.raises(ValueError):
        HnswIndex(DIM, m=8).load_state(index.state())  # another graph degree


def test_remove_many_forgets_a_batch_and_ignores_unknown_ids(index: FactIndex) -> None:
    vectors = unit_rows(60, seed=17)
    index.upsert_many([f"f{i}" for i in range(60)], [f"m{i % 2}" for i in range(60)], vectors)
    index.remove_many([f"f{i}" for i in range(0, 60, 2)] + ["nope", "f0"])
    assert len(index) == 30 and index.facts_of("m0") == set()
    assert all(index.search(vectors[i], 1)[0].fact_id == f"f{i}" for i in range(1, 60, 2))
