"""The real routing path: the packaged embedding model, the real registry, real data.

Three modules on different topics (PhoneBook people, CounterFact edits, one PaperQA paper)
are published as the trainer publishes them; questions are paraphrases the facts never
contained (evaluation/router_set.py holds the set; bench/router_latency.py measures on it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from evaluation.router_set import (
    COUNTERFACT,
    PAPERQA,
    PHONEBOOK,
    EvalSet,
    distractor_texts,
    eval_set,
)
from loramem.datasets import WHERE_TO_GET, counterfact_edits
from loramem.names import module_id, module_name
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router.embedder import OnnxEmbedder, ProcessEmbedder, SentenceEmbedder, from_bytes, to_bytes
from router.index import ExactIndex, PqIndex
from router.router import Router
from tests.recipes import NO_FILES, TRAINED


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceEmbedder]:
    import torch

    threads = torch.get_num_threads()  # the embedder sets it process-wide: put it back after
    yield SentenceEmbedder(threads=Settings().router_embed_threads)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def onnx_embedder(tmp_path_factory: pytest.TempPathFactory) -> OnnxEmbedder:
    """The gateway's query embedder (LORAMEM_ROUTER_EMBED_BACKEND=onnx, the default)."""
    return OnnxEmbedder(tmp_path_factory.mktemp("embedder"), threads=1)


@pytest.fixture(scope="module")
def evalset() -> EvalSet:
    data_dir = Settings().data_dir
    if not (data_dir / "phonebook" / "phonebook.csv").exists():
        # The paraphrase set and the 0.55 threshold were calibrated on the paper's names;
        # invented stand-in names score differently, so this check needs the real data.
        pytest.skip(f"needs the paper's PhoneBook under {data_dir} ({WHERE_TO_GET})")
    return eval_set(data_dir)


def publish(registry: Registry, router: Router, tenant: str, name: str, texts: list[str]) -> None:
    module = module_id(tenant, name)
    vectors = router.embed(texts)
    _job, ids = registry.facts.add(
        tenant, texts, [None] * len(texts), [to_bytes(v) for v in vectors], module
    )
    registry.modules.publish(VersionInfo(module, 1, tenant, ids, 1.0, NO_FILES, TRAINED), {})
    router.apply_published(tenant, module, 1)


@pytest.fixture(params=["exact", "hnsw"])
def router(
    request: pytest.FixtureRequest, registry: Registry, embedder: SentenceEmbedder, settings
) -> Router:
    config = settings.model_copy(update={"router_index_backend": request.param})
    return Router.from_settings(registry, embedder, config)


def test_paraphrases_reach_their_module_and_unrelated_questions_base(
    registry: Registry, router: Router, evalset: EvalSet
) -> None:
    jeffrey = "How can I reach Jeffrey Buck by phone?"
    assert router.route("t", "auto", jeffrey).module is None  # nothing published yet
    publish(registry, router, "t", PHONEBOOK, evalset.modules[PHONEBOOK])
    decision = router.route("t", "auto", jeffrey)  # routed the moment it is published
    assert (decision.header, decision.outcome) == (f"{PHONEBOOK}@v1", "module")
    for module in (COUNTERFACT, PAPERQA):
        publish(registry, router, "t", module, evalset.modules[module])

    misses = []
    for question, want in evalset.questions:
        decision = router.route("t", "auto", question)
        if (decision.module and module_name(decision.module)) != want:
            misses.append((question, want, decision.module, decision.candidates_header))
    asked = [want for _q, want in evalset.questions]
    in_domain = sum(1 for w in asked if w is not None)
    missed_in = [m for m in misses if m[1] is not None]
    missed_out = [m for m in misses if m[1] is None]
    assert in_domain >= 50 and len(asked) - in_domain >= 20
    assert len(missed_in) <= 0.05 * in_domain, missed_in
    assert len(missed_out) <= 0.05 * (len(asked) - in_domain), missed_out


def test_another_tenant_never_reaches_these_modules(
    registry: Registry, router: Router, evalset: EvalSet
) -> None:
    publish(registry, router, "a", PHONEBOOK, evalset.modules[PHONEBOOK])
    publish(registry, router, "b", "b-notes", ["Grass looks green in spring."])
    for fact in evalset.modules[PHONEBOOK][:3]:  # the very sentences tenant a holds
        decision = router.route("b", "auto", fact)
        assert decision.module is None
        assert PHONEBOOK not in decision.candidates_header
        assert all(h.module == module_id("b", "b-notes") for h in decision.candidates)


def test_the_ingest_embedder_child_embeds_alike_at_low_priority(
    embedder: SentenceEmbedder,
) -> None:
    """Facts embedded at ingest in the niced child process (server/limits.py IngestPool)
    get the vectors the router compares queries with."""
    texts = ["The phone number of Jeffrey Buck is 603-556-7631.", "Grass looks green."]
    child = ProcessEmbedder(nice=19)
    try:
        assert child.dim == embedder.dim
        assert np.allclose(child.embed(texts), embedder.embed(texts), atol=1e-5)
        assert child._pool.submit(os.nice, 0).result() == 19  # the child's own niceness
    finally:
        child.close()
    # Gone once close returns: a gateway app closed in a process that goes on (the chaos
    # tests' in-process gateways) left it finishing its exit, a second or more, behind it.
    assert not _running(child._child_pid)


def test_a_closed_ingest_embedder_kills_a_child_that_does_not_leave() -> None:
    """A child busy past close's timeout (here: asleep in a task) is killed: a gateway's
    shutdown does not wait on it, nor leave it behind."""
    child = ProcessEmbedder(nice=19)
    child._pool.submit(time.sleep, 600)
    child.close(timeout_s=1)
    assert not _running(child._child_pid)


def test_the_onnx_ingest_child_embeds_as_sentence_transformers_without_torch(
    embedder: SentenceEmbedder,
    onnx_embedder: OnnxEmbedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The gateway's ingest child on LORAMEM_ROUTER_EMBED_BACKEND=onnx (the default) loads
    the graph its query embedder exported, imports no torch (a quarter of the memory,
    docs/RESULTS.md), and stores the vectors sentence-transformers would have."""
    cache_dir = tmp_path_factory.mktemp("cache")
    (cache_dir / "embedder").symlink_to(tmp_path_factory.getbasetemp() / "embedder0")
    texts = [
        "The phone number of Jeffrey Buck is 603-556-7631.",
        "Grass looks green.",
        "Lenta.ru is written in Italian, and its editors " + "write at length " * 120,
    ]
    child = ProcessEmbedder(nice=19, backend="onnx", cache_dir=cache_dir)
    try:
        assert child.kind == "OnnxEmbedder"
        # What the child imported, asked in the child (a builtin pickles by name).
        imported = (
            "[m for m in ('torch', 'sentence_transformers') if m in __import__('sys').modules]"
        )
        assert child._pool.submit(eval, imported).result() == []
        assert child.dim == embedder.dim
        vectors = child.embed(texts)
        assert np.allclose(vectors, embedder.embed(texts), atol=1e-5)
        assert np.allclose(vectors, onnx_embedder.embed(texts), atol=1e-6)
        assert child._pool.submit(os.nice, 0).result() == 19
    finally:
        child.close()
    assert not _running(child._child_pid)


def test_an_onnx_ingest_child_needs_a_cache_dir() -> None:
    with pytest.raises(ValueError, match="cache_dir"):
        ProcessEmbedder(backend="onnx")


CHILD_OF_A_GATEWAY = """
import os, time
from router.embedder import ProcessEmbedder
embedder = ProcessEmbedder(nice=19)
print(embedder._pool.submit(os.getpid).result(), flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (this container's init may not reap what it adopts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_ingest_embedder_child_leaves_when_its_gateway_is_killed() -> None:
    """A SIGKILLed gateway runs no shutdown: its embedding child (a model in memory) must
    not live on under init. The chaos suite's leak guard found them after killed stacks."""
    gateway = subprocess.Popen(
        [sys.executable, "-c", CHILD_OF_A_GATEWAY],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
    )
    assert gateway.stdout is not None
    try:
        child = int(gateway.stdout.readline())
        assert _running(child)
    finally:
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
    deadline = time.monotonic() + 60
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _running(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the embedding child outlived its SIGKILLed gateway"


def test_the_onnx_query_embedder_gives_the_vectors_facts_were_stored_with(
    embedder: SentenceEmbedder, onnx_embedder: OnnxEmbedder
) -> None:
    """Queries embedded by ONNX Runtime and facts stored by sentence-transformers (a
    gateway on "torch", or before the ingest child ran ONNX) must agree: alone, in a
    padded batch, and past the model's 256 tokens."""
    texts = [
        "What is the phone number of Orla Quenby?",
        "Grass looks green.",
        "Lenta.ru is written in Italian, and its editors " + "write at length " * 120,
    ]
    assert onnx_embedder.dim == embedder.dim
    assert np.allclose(onnx_embedder.embed(texts), embedder.embed(texts), atol=1e-5)
    for text in texts:
        assert np.allclose(onnx_embedder.embed([text]), embedder.embed([text]), atol=1e-5)


def test_the_onnx_graph_is_exported_once_per_model(
    onnx_embedder: OnnxEmbedder, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.getbasetemp() / "embedder0"
    (graph,) = folder.glob("*.onnx")
    written = graph.stat().st_mtime_ns
    again = OnnxEmbedder(folder, threads=1)  # a second gateway of the host, or a restart
    # The graph and its shape, no partial file left.
    assert sorted(p.name for p in folder.iterdir()) == [graph.stem + ".json", graph.name]
    assert graph.stat().st_mtime_ns == written
    question = ["How can I reach Tamsin Varga by phone?"]
    assert np.array_equal(again.embed(question), onnx_embedder.embed(question))


def test_a_gateway_embeds_queries_from_the_exported_graph_without_torch(
    onnx_embedder: OnnxEmbedder, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Once the graph is exported, the query embedder of a fresh process (a gateway's
    start) neither imports torch nor loads the torch model, and embeds the same."""
    folder = tmp_path_factory.getbasetemp() / "embedder0"
    question = "How can I reach Tamsin Varga by phone?"
    probe = (
        "import sys, json; from pathlib import Path; from router.embedder import OnnxEmbedder; "
        f"v = OnnxEmbedder(Path({str(folder)!r}), threads=1).embed([{question!r}]); "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'vector': v[0].tolist()}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[2],  # the checkout, for `router`
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["torch"] is False
    assert np.allclose(seen["vector"], onnx_embedder.embed([question])[0], atol=1e-6)


def test_routing_with_the_onnx_embedder_decides_as_with_torch(
    registry: Registry,
    embedder: SentenceEmbedder,
    onnx_embedder: OnnxEmbedder,
    evalset: EvalSet,
    settings: Settings,
) -> None:
    """The same facts (embedded by torch, as ingest stores them), every question of the
    paraphrase set: the same module and the same score either way."""
    by_torch = Router.from_settings(registry, embedder, settings)
    by_onnx = Router.from_settings(registry, onnx_embedder, settings)
    for module in (PHONEBOOK, COUNTERFACT, PAPERQA):
        publish(registry, by_torch, "t", module, evalset.modules[module])
        by_onnx.apply_published("t", module_id("t", module), 1)
    for question, _want in evalset.questions:
        a, b = by_torch.route("t", "auto", question), by_onnx.route("t", "auto", question)
        assert (a.target, a.outcome) == (b.target, b.outcome), question
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_the_pq_index_trained_restored_and_changed_keeps_the_exact_top_k(
    registry: Registry, embedder: SentenceEmbedder, evalset: EvalSet, settings: Settings
) -> None:
    """The default index ("pq") past its training size, with real embeddings: its top-8
    agrees with brute force, routing is right, and after a snapshot, a republished module
    (two facts deleted) and a retired one, a restarted router holds exactly the current
    facts and still agrees with brute force."""
    config = settings.model_copy(
        update={"router_index_backend": "pq", "router_pq_train_at": 256, "router_pq_rerank": 8}
    )
    router = Router.from_settings(registry, embedder, config)
    for module, texts in evalset.modules.items():
        publish(registry, router, "t", module, texts)
    others = distractor_texts(config.data_dir)[::7][:400]
    for part in range(4):  # real facts of other topics, PhoneBook look-alikes among them
        publish(registry, router, "t", f"other{part}", others[part * 100 : (part + 1) * 100])
    index = router._indexes["t"]
    assert isinstance(index, PqIndex) and index.trained and len(index) > 256

    def agreement(router: Router) -> float:
        facts = [
            fact
            for module, version in router.active_modules("t").items()
            for fact in registry.facts.by_id(
                "t", registry.modules.version(module, version).fact_ids
            )
        ]
        exact = ExactIndex(embedder.dim)
        exact.upsert_many(
            [f.id for f in facts],
            ["m"] * len(facts),
            np.stack([from_bytes(f.embedding) for f in facts]),
        )
        queries = embedder.embed([q for q, _ in evalset.questions])
        found = [{h.fact_id for h in router._indexes["t"].search(q, 8)} for q in queries]
        truth = [{h.fact_id for h in exact.search(q, 8)} for q in queries]
        return float(np.mean([len(f & t) / 8 for f, t in zip(found, truth, strict=True)]))

    assert agreement(router) >= 0.97
    for question, want in evalset.questions:
        if want is not None:
            assert module_name(router.route("t", "auto", question).module or "") == want
    assert router.save_snapshots() == 1

    phones = module_id("t", PHONEBOOK)
    ids = registry.modules.version(phones, 1).fact_ids
    for fact_id in ids[:2]:
        registry.facts.delete("t", fact_id)
    registry.modules.publish(VersionInfo(phones, 2, "t", ids[2:], 1.0, "c2", TRAINED), {})
    retired = set(registry.modules.version(module_id("t", "other0"), 1).fact_ids)
    registry.modules.retire(module_id("t", "other0"), "t")
    restarted = Router.from_settings(registry, embedder, config)
    restarted.load_all()
    assert {module_name(m): v for m, v in restarted.active_modules("t").items()} == {
        PHONEBOOK: 2,
        COUNTERFACT: 1,
        PAPERQA: 1,
        "other1": 1,
        "other2": 1,
        "other3": 1,
    }
    assert restarted.index_stats("t")[0] == len(router._indexes["t"]) - 2 - 100
    assert agreement(restarted) >= 0.97
    held = restarted._indexes["t"]
    for text in evalset.modules[PHONEBOOK][:2] + others[:3]:  # deleted, retired
        hits = {h.fact_id for h in held.search(embedder.embed([text])[0], 8)}
        assert not hits & (set(ids[:2]) | retired)


def test_a_fact_template_about_another_subject_goes_to_base(
    registry: Registry, embedder: SentenceEmbedder, settings: Settings
) -> None:
    """The 64 first CounterFact edits in one module, real embeddings: a prompt that
    differs from an edit only in its subject clears the route threshold, and the subject
    check (on by default) sends it to base; questions naming an edit's subject still
    reach the module, and the PhoneBook paraphrase set still routes as before."""
    if not (settings.data_dir / "counterfact" / "counterfact_edit_4K.csv").exists():
        pytest.skip(f"needs the paper's CounterFact under {settings.data_dir} ({WHERE_TO_GET})")
    edits = [e.sentence for e in counterfact_edits(settings.data_dir, 64, size="4K")]
    assert "Chico Buarque has a citizenship from Canada" in edits
    unchecked = settings.model_copy(update={"router_subject_check": False})
    routers = {
        "off": Router.from_settings(registry, embedder, unchecked),
        "on": Router.from_settings(registry, embedder, settings),
    }
    publish(registry, routers["on"], "t", "edits", edits)
    routers["off"].apply_published("t", module_id("t", "edits"), 1)
    other = "Justin Trudeau has a citizenship from"
    before, after = (routers[arm].route("t", "auto", other) for arm in ("off", "on"))
    assert before.outcome == "module" and before.score is not None
    assert before.score >= settings.route_threshold
    assert (after.header, after.outcome, after.score) == ("base", "unnamed_subject", before.score)
    for named in ("Which country is Chico Buarque a citizen of?", "Chico Buarque has a"):
        assert routers["on"].route("t", "auto", named).outcome == "module", named
