"""The fact-index backends behave the same; the module policy ranks as documented."""

from collections.abc import Callable

import numpy as np
import pytest

from router.index import ExactIndex, FactIndex, Hit, HnswIndex, IvfIndex, PqIndex, index_factory
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
    # trains its codes after 256 facts; re-scoring every fact keeps it exact for the tests
    "pq": lambda dim: PqIndex(dim, sub_dims=2, rerank=1000, train_at=256),
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
    pq = index_factory("pq", pq_sub_dims=4, pq_rerank=16)(DIM)
    assert isinstance(pq, PqIndex) and (pq.sub_dims, pq.rerank) == (4, 16)
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


# ------------------------------------------------------------------- pq
def clustered_rows(count: int, seed: int) -> np.ndarray:
    """Unit vectors in tight clusters, like many facts about the same few things."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    rows = centres[rng.integers(0, 40, count)] + 0.3 * rng.standard_normal((count, DIM)).astype(
        np.float32
    )
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_pq_finds_the_exact_top_k_of_far_queries() -> None:
    """Queries far from every fact (random directions, like questions) have near-tie
    top-8s; the 4-bit scan alone misses some, the float16 re-score recovers them."""
    vectors, queries = clustered_rows(4000, seed=20), unit_rows(60, seed=21)
    ids, modules = [f"f{i}" for i in range(4000)], [f"m{i % 20}" for i in range(4000)]
    exact = ExactIndex(DIM)
    exact.upsert_many(ids, modules, vectors)
    recall = {}
    for rerank in (1, 64):
        pq = PqIndex(DIM, sub_dims=2, rerank=rerank, train_at=1000)
        pq.upsert_many(ids, modules, vectors)
        assert pq.trained
        found = [pq.search(q, 8) for q in queries]
        truth = [exact.search(q, 8) for q in queries]
        recall[rerank] = np.mean(
            [
                len({h.fact_id for h in f} & {h.fact_id for h in t}) / 8
                for f, t in zip(found, truth, strict=True)
            ]
        )
    assert recall[64] >= 0.99 > recall[1]
    for got, want in zip(found, truth, strict=True):
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=2e-3)
        assert got[0].module == want[0].module
    assert pq.nbytes < exact.nbytes  # 16 bytes of codes + 64 of float16 + ids, against 128


def test_pq_removals_then_adds_keep_every_code() -> None:
    """faiss 1.15 corrupts codes added after a removal into a partly filled block
    (PqIndex._remove_codes works around it): the scan's own scores of every live fact
    must equal those of a scan built afresh from the same training facts."""
    import faiss

    vectors = clustered_rows(3000, seed=22)
    index = PqIndex(DIM, sub_dims=2, rerank=4, train_at=1000)
    index.upsert_many([f"f{i}" for i in range(1000)], ["m"] * 1000, vectors[:1000])
    live, rng = set(range(1000)), np.random.default_rng(23)
    for step in range(10):  # unaligned batches: 50 out, 37 in
        gone = rng.choice(sorted(live), 50, replace=False).tolist()
        index.remove_many([f"f{i}" for i in gone])
        new = list(range(1000 + 37 * step, 1000 + 37 * (step + 1)))
        index.upsert_many([f"f{i}" for i in new], ["m"] * len(new), vectors[new])
        live = (live - set(gone)) | set(new)
    fresh = faiss.index_factory(DIM, "IVF1,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    fresh.by_residual = False
    fresh.train(vectors[:1000])
    rows = np.array(sorted(live))
    fresh.add_with_ids(vectors[rows], np.array([index._label_of[f"f{i}"] for i in rows]))
    queries = unit_rows(10, seed=24)
    got, want = index._scan.search(queries, len(rows)), fresh.search(queries, len(rows))
    for q in range(len(queries)):
        ours = dict(zip(got[1][q].tolist(), got[0][q].tolist(), strict=True))
        theirs = dict(zip(want[1][q].tolist(), want[0][q].tolist(), strict=True))
        assert ours.keys() == theirs.keys()
        off = [label for label in ours if abs(ours[label] - theirs[label]) > 1e-4]
        assert len(off) <= 0.01 * len(rows), off  # a re-added code may round apart
    assert len(index) == len(live) == index._scan.ntotal == index._half.count


def test_pq_state_round_trip_keeps_codes_and_float16_rows() -> None:
    vectors = clustered_rows(700, seed=25)
    ids = [f"f{i}" for i in range(700)]
    index = PqIndex(DIM, sub_dims=4, rerank=8, train_at=500)
    index.upsert_many(ids, [f"m{i % 5}" for i in range(700)], vectors)
    index.remove_many(ids[:30])
    index.upsert_many(ids[100:110], ["moved"] * 10, vectors[:10])  # known facts, new vectors
    copy = PqIndex(DIM, sub_dims=4, rerank=8, train_at=500)
    copy.load_state(index.state())
    assert len(copy) == 670 and copy.facts_of("moved") == set(ids[100:110])
    for q in unit_rows(20, seed=26):
        assert copy.search(q, 8) == index.search(q, 8)
    assert copy.search(vectors[3], 1)[0].fact_id == "f103"  # f103 now holds vector 3
    copy.remove_many(ids[200:264])  # the restored index keeps taking changes
    copy.upsert_many(["new"], ["m9"], vectors[1:2])
    assert copy.search(vectors[1], 1)[0].fact_id in {"new", "f101"}
    assert "f200" not in {h.fact_id for h in copy.search(vectors[200], 50)}
    with pytest.raises(ValueError):
        PqIndex(DIM, sub_dims=2, train_at=500).load_state(index.state())  # other codes
    with pytest.raises(ValueError):
        PqIndex(DIM, sub_dims=5)  # 5 does not divide 32
