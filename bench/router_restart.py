"""A router at a million facts: restart-to-ready from its snapshot, route latency, recall
of the exact top-k, memory per million facts, and index settings side by side.

    .venv/bin/python -m bench.router_restart                      # 50k facts, minutes
    .venv/bin/python -m bench.router_restart --facts 1000000 --real 5000   # the issue's size

How the vectors are made (embedding a million texts takes hours on 2 cores):
- `--real` generated fact texts ("<person> works as a <job> in <city> ..." over
  PhoneBook's names and fixed word lists) embedded with the real model, plus the
  router paraphrase set's three evaluated modules (evaluation/router_set.py);
- the rest are perturbations of those real embeddings: a real vector plus Gaussian noise
  of norm `--noise` (0.45: cosine ~0.9 to its source), renormalised.
The matrix is kept under `--cache` and read back by the next run of the same size.

Everything goes through the real registry (Redis `LORAMEM_REDIS_URL`, database
`--db`, flushed before and after): facts with their embeddings, 64 to a module, each
module published as version 1. Then, with the index the settings choose (set
`LORAMEM_ROUTER_*` to measure another):
1. cold: a router `load_all()` from Redis (what every start cost before snapshots),
   then `save_snapshots()`;
2. changes after the snapshot: `--changed` modules republished without one fact, as many
   new modules published, as many retired;
3. restart: a new router `load_all()` (snapshot + the changed modules from Redis), timed
   as restart-to-ready; route p50/p99 with the query embedding (paraphrase set), module
   and base accuracy, the query embedding alone, the index's bytes and the process's RSS
   growth per million facts. Routing reads nothing from Redis: embedding + search is all.
4. per `--variants`: an index of the live vectors built directly, and for each search
   setting its recall@k of the exact top-k (brute force over the float32 vectors) for
   the real question embeddings (the paraphrase set's, and 200 questions about the
   generated facts' people) and for fact-like queries, search p50/p99, route p50/p99
   through the router with it (embedding included; per round too, with the load
   average, since the machine may be shared), build time and bytes, as a table.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import redis

from bench.router_latency import _percentiles, _rss_bytes
from evaluation.router_set import EvalSet, eval_set
from loramem import datasets
from loramem.knobs import TrainingKnobs, VersionRecipe
from loramem.names import module_id, module_name
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router.embedder import SentenceEmbedder, query_embedder, to_bytes
from router.index import ExactIndex, FactIndex, HnswIndex, IvfIndex, PqIndex
from router.router import Router, _index_config
from server.app import freeze_collector

TENANT, MODULE_FACTS = "bench", 64
RECIPE = VersionRecipe(made_by="trained", base_model="bench", rank=8, training=TrainingKnobs())
_JOBS = ("nurse", "pilot", "baker", "lawyer", "chemist", "plumber", "teacher", "architect")
_CITIES = ("Lisbon", "Osaka", "Denver", "Lagos", "Tromso", "Quito", "Perth", "Bergen")
_PETS = ("a parrot", "two cats", "a tortoise", "a collie", "goldfish", "a ferret")


def _checksum(label: str) -> str:
    """A distinct sha256 per version: the bench stores no adapter files, and served names
    carry the checksum's digest (loramem/names.py)."""
    return hashlib.sha256(label.encode()).hexdigest()


def generated_texts(data_dir: Path, count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    names = _people(data_dir)  # not the ten people the evaluation set asks about
    shapes = (
        "{n} works as a {j} in {c}.",
        "{n} was born in {c} in {y}.",
        "{n} keeps {p} at home in {c}.",
        "The phone number of {n} is {d}.",
        "{n} moved to {c} to become a {j}.",
    )
    return [
        rng.choice(shapes).format(
            n=rng.choice(names),
            j=rng.choice(_JOBS),
            c=rng.choice(_CITIES),
            p=rng.choice(_PETS),
            y=rng.randint(1930, 2010),
            d=f"{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
        )
        for _ in range(count)
    ]


_QUESTIONS = (
    "What does {n} do for a living?",
    "Where was {n} born?",
    "Which pet does {n} keep?",
    "How can I call {n}?",
    "Which city did {n} move to?",
)


def generated_questions(data_dir: Path, count: int, seed: int = 5) -> list[str]:
    """Questions about the generated facts' people: real queries far from any one fact."""
    rng, names = random.Random(seed), _people(data_dir)
    return [rng.choice(_QUESTIONS).format(n=rng.choice(names)) for _ in range(count)]


def _people(data_dir: Path) -> list[str]:
    return [p.name for p in datasets.phonebook(data_dir, 2000, offset=10)]


def perturbed(real: np.ndarray, count: int, noise: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((count, real.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):  # in blocks: no second full-size temporary
        n = min(100_000, count - start)
        block = real[rng.integers(0, len(real), n)]
        block += rng.standard_normal(block.shape, dtype=np.float32) * (
            noise / np.sqrt(block.shape[1])
        )
        out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def store(registry: Registry, modules: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Facts into the registry (a module each), every module published as v1."""
    ids_of = {}
    for i, (module, vectors) in enumerate(modules.items()):
        texts = [f"{module} fact {j}" for j in range(len(vectors))]
        embeddings = [to_bytes(v) for v in vectors]
        _job, ids = registry.facts.add(TENANT, texts, [None] * len(texts), embeddings, module)
        registry.modules.publish(
            VersionInfo(module, 1, TENANT, ids, 1.0, _checksum(f"c{i}"), RECIPE), {}
        )
        ids_of[module] = ids
    return ids_of


def exact_top(matrix: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    scores = np.concatenate(
        [queries @ matrix[s : s + 200_000].T for s in range(0, len(matrix), 200_000)], axis=1
    )
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return [set(row.tolist()) for row in top]


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def build(args: argparse.Namespace, settings: Settings, embedder: SentenceEmbedder) -> Data:
    """The vectors: the evaluated modules, `--real` embedded texts, perturbed copies.
    With `--cache`, the matrix is saved there and read back by the next run of the same
    size (embedding the texts is the slow part)."""
    evalset = eval_set(settings.data_dir)
    held = sum(len(t) for t in evalset.modules.values())
    cached = (
        Path(args.cache) / f"vectors-{args.facts}-{args.real}-{args.noise}.npy"
        if args.cache
        else None
    )
    started = time.perf_counter()
    if cached is not None and cached.exists():
        matrix = np.load(cached)
        real = matrix[held : held + args.real]
    else:
        real = embedder.embed(generated_texts(settings.data_dir, args.real))
        evaluated = [embedder.embed(t) for t in evalset.modules.values()]
        rest = perturbed(real, args.facts - held - len(real), args.noise)
        matrix = np.concatenate([*evaluated, real, rest])
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, matrix)
    embed_s = time.perf_counter() - started
    modules, start = {}, 0  # by module id (the tenant's namespace)
    for name, texts in evalset.modules.items():
        modules[module_id(TENANT, name)] = matrix[start : start + len(texts)]
        start += len(texts)
    for start in range(held, len(matrix), MODULE_FACTS):
        modules[module_id(TENANT, f"m{start // MODULE_FACTS:06d}")] = matrix[
            start : start + MODULE_FACTS
        ]
    return Data(evalset, real, matrix, modules, embed_s)


@dataclass
class Data:
    evalset: EvalSet
    real: np.ndarray
    matrix: np.ndarray
    modules: dict[str, np.ndarray]
    embed_s: float


def change(registry: Registry, data: Data, ids_of: dict[str, list[str]], count: int) -> dict:
    """After the snapshot: `count` modules lose a fact (v2), as many are new, as many
    retire. Returns the facts the router should hold now (fact id -> vector)."""
    live = {f: v for m, vs in data.modules.items() for f, v in zip(ids_of[m], vs, strict=True)}
    names = [m for m in data.modules if module_name(m).startswith("m")]
    for i, module in enumerate(names[:count]):
        registry.facts.delete(TENANT, ids_of[module][0])
        live.pop(ids_of[module][0])
        info = VersionInfo(module, 2, TENANT, ids_of[module][1:], 1.0, _checksum(f"d{i}"), RECIPE)
        registry.modules.publish(info, {})
    extra = perturbed(data.real, count * MODULE_FACTS, 0.45, seed=2)
    fresh = {
        module_id(TENANT, f"new{i:03d}"): extra[i * MODULE_FACTS : (i + 1) * MODULE_FACTS]
        for i in range(count)
    }
    for module, ids in store(registry, fresh).items():
        live.update(zip(ids, fresh[module], strict=True))
    for module in names[count : 2 * count]:
        registry.modules.retire(module, TENANT)
        for fact_id in ids_of[module]:
            live.pop(fact_id)
    return live


def latency(router: Router, evalset: EvalSet, rounds: int) -> dict:
    """Route p50/p99 over all rounds, and per round (p50, p99, 1-minute load average after
    it): the machine is shared, so a round can be told apart from a busy one."""
    questions = [q for q, _ in evalset.questions]
    for q in questions[:10]:  # warm-up
        router.route(TENANT, "auto", q)
    samples, per_round = [], []
    for _ in range(rounds):
        times = [timed(partial(router.route, TENANT, "auto", q)) for q in questions]
        per_round.append((*_percentiles(times), os.getloadavg()[0]))
        samples += times
    p50, p99 = _percentiles(samples)
    decisions = [(router.route(TENANT, "auto", q).module, want) for q, want in evalset.questions]
    decisions = [(got and module_name(got), want) for got, want in decisions]
    return {
        "p50": p50,
        "p99": p99,
        "rounds": per_round,
        "to_module": float(np.mean([got == want for got, want in decisions if want])),
        "to_base": float(np.mean([got is None for got, want in decisions if want is None])),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--facts", type=int, default=50_000, help="1000000 for the issue's size")
    parser.add_argument("--real", type=int, default=1_000, help="texts embedded for real")
    parser.add_argument("--noise", type=float, default=0.45)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--db", type=int, default=9, help="Redis database (flushed)")
    parser.add_argument(
        "--variants",
        default="pq:2:32/64,ivf:fp16:64/256",
        help="indexes built from the same vectors, side by side: "
        "pq:<sub_dims>:<rerank>/..., ivf:<codes>:<probe>/..., hnsw:<M>:<ef_search>/..., exact",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cache", default="/tmp/loramem-router-bench", help="'' for none")
    args = parser.parse_args(argv)
    base = Settings()
    url = base.redis_url.rsplit("/", 1)[0] + f"/{args.db}"
    folder = Path(tempfile.mkdtemp(prefix="router-restart-"))
    settings = base.model_copy(
        update={"redis_url": url, "router_snapshot_dir": folder, "module_capacity_facts": 1024}
    )
    embedder = SentenceEmbedder(settings.embedding_model, threads=settings.router_embed_threads)
    data = build(args, settings, embedder)
    # Routing embeds queries as the gateway does (LORAMEM_ROUTER_EMBED_BACKEND: onnx by
    # default); the facts' vectors are the same to within 1e-6 either way.
    asker = query_embedder(settings)
    redis.Redis.from_url(url).flushdb(asynchronous=True)  # the bench's own database
    registry = Registry.from_settings(settings)
    ids_of: dict[str, list[str]] = {}
    store_s = timed(lambda: ids_of.update(store(registry, data.modules)))

    cold = Router.from_settings(registry, asker, settings)
    cold_s = timed(cold.load_all)
    save_s = timed(cold.save_snapshots)
    snap_mib = sum(p.stat().st_size for p in folder.glob("*.npz")) / 2**20
    del cold
    live = change(registry, data, ids_of, args.changed)

    rss_before = _rss_bytes()
    router = Router.from_settings(registry, asker, settings)
    ready_s = timed(router.load_all)
    rss = _rss_bytes() - rss_before
    # What a full garbage collection costs over what is loaded, before and after the
    # freeze that a gateway makes once started.
    collect_s = [timed(gc.collect)]
    freeze_collector()
    collect_s.append(timed(gc.collect))
    count, nbytes = router.index_stats(TENANT)
    assert count == len(live), (count, len(live))
    lat = latency(router, data.evalset, args.rounds)
    shutil.rmtree(folder)  # the snapshot: hundreds of MiB at a million facts

    # Recall of the exact top-k over what the router holds now: the paraphrase questions
    # that a module answers (real query embeddings; for unrelated ones the top k are
    # near-ties among distant facts, and they go to base whatever they are), and
    # fact-like queries (a held vector perturbed again). The truth is brute force over
    # the float32 vectors; recall = |index top-k & exact top-k| / k, averaged.
    k = settings.router_top_k
    asked = [q for q, want in data.evalset.questions if want]
    queries = {
        "questions": embedder.embed(asked),
        "generated questions": embedder.embed(generated_questions(settings.data_dir, 200)),
        "fact-like": perturbed(data.matrix, 200, args.noise, seed=3),
    }
    live_ids, live_matrix = list(live), np.stack(list(live.values()))
    del live
    row_of = {f: i for i, f in enumerate(live_ids)}
    truth = {name: exact_top(live_matrix, q, k) for name, q in queries.items()}
    mib = 2**20 * len(data.matrix) / 1e6
    print(
        f"facts={args.facts}: {len(data.real)} generated texts embedded ({data.embed_s:.0f} s, "
        f"or read from --cache) plus the evaluation set's facts; the rest perturbed copies "
        f"(noise {args.noise})"
    )
    print(f"store in Redis {store_s:.0f} s; cold load_all from Redis {cold_s:.1f} s")
    print(f"snapshot write {save_s:.1f} s, {snap_mib:.0f} MiB")
    print(
        f"restart-to-ready (snapshot + {3 * args.changed} changed modules from Redis): "
        f"{ready_s:.1f} s; cold / restart x{cold_s / ready_s:.1f}"
    )
    print(
        f"settings' index ({_index_config(settings)}): route p50 {lat['p50']:.2f} ms, "
        f"p99 {lat['p99']:.2f} ms (query embedding included); to module "
        f"{lat['to_module']:.1%}, unrelated to base {lat['to_base']:.1%}; index "
        f"{nbytes / mib:.0f} MiB per 1M facts; process RSS growth {rss / mib:.0f} MiB per 1M"
    )
    print(
        "route per round (p50 / p99 ms, load average after it): "
        + "; ".join(
            f"round {i + 1}: {r[0]:.2f} / {r[1]:.2f} (load {r[2]:.1f})"
            for i, r in enumerate(lat["rounds"])
        )
    )
    print(
        f"full garbage collection: {1000 * collect_s[0]:.1f} ms, after the gateway's freeze "
        f"{1000 * collect_s[1]:.1f} ms"
    )
    restored = router._indexes[TENANT]  # noqa: SLF001 - the router's own index
    recall = {n: _recall(restored, queries[n], truth[n], row_of, k) for n in queries}
    print(
        f"the router's restored index: recall@{k} "
        + ", ".join(f"{n} {r:.4f}" for n, r in recall.items())
    )
    embed = [timed(partial(asker.embed, [q])) for _ in range(args.rounds) for q in asked]
    p50, p99 = _percentiles(embed)
    print(f"query embedding alone: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(
        f"\n| index | params | recall@{k} questions | recall@{k} generated questions "
        f"| recall@{k} fact-like | search p50 / p99 ms | route p50 / p99 ms (embedding "
        "included), quietest round's p99 | build s | MiB per 1M facts |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec in [v for v in args.variants.split(",") if v]:
        index, searched = _variant(spec, embedder.dim, settings)
        build_s = timed(partial(_fill, index, live_ids, live_matrix, settings.router_ivf_train_at))
        for params, set_search in searched:
            set_search()
            recall = {n: _recall(index, queries[n], truth[n], row_of, k) for n in queries}
            questions = np.concatenate([queries["questions"], queries["generated questions"]])
            search = [
                timed(partial(index.search, q, k)) for _ in range(args.rounds) for q in questions
            ]
            s50, s99 = _percentiles(search)
            restored = router._indexes[TENANT]  # noqa: SLF001 - route through the variant
            router._indexes[TENANT] = _relabel(index, restored)  # noqa: SLF001
            route = latency(router, data.evalset, args.rounds)
            router._indexes[TENANT] = restored  # noqa: SLF001
            quiet = min(range(len(route["rounds"])), key=lambda i: route["rounds"][i][2])
            print(
                f"| {spec.split(':')[0]} | {params} | {recall['questions']:.4f} "
                f"| {recall['generated questions']:.4f} | {recall['fact-like']:.4f} "
                f"| {s50:.2f} / {s99:.2f} | {route['p50']:.2f} / {route['p99']:.2f}, "
                f"round {quiet + 1}: {route['rounds'][quiet][1]:.2f} "
                f"(load {route['rounds'][quiet][2]:.1f}) | {build_s:.0f} "
                f"| {index.nbytes / mib:.0f} |",
                flush=True,
            )
        del index
    redis.Redis.from_url(url).flushdb(asynchronous=True)  # 1M keys outlast the socket timeout


def _fill(index: FactIndex, ids: list[str], matrix: np.ndarray, train_at: int) -> None:
    """As the router fills it: ivf trains its lists on the first `train_at` facts."""
    index.upsert_many(ids[:train_at], ["m"] * len(ids[:train_at]), matrix[:train_at])
    index.upsert_many(ids[train_at:], ["m"] * len(ids[train_at:]), matrix[train_at:])


def _variant(
    spec: str, dim: int, settings: Settings
) -> tuple[FactIndex, list[tuple[str, Callable[[], None]]]]:
    """An empty index of the spec and, per search setting to measure, (label, setter):
    ivf:<codes>:<probe>/<probe>..., pq:<sub_dims>:<rerank>/..., hnsw:<M>:<ef_search>/...,
    exact."""
    kind, *params = spec.split(":")
    if kind == "pq":
        sub_dims, reranks = int(params[0]), params[1].split("/")
        pq = PqIndex(dim, sub_dims, 1, settings.router_pq_train_at)
        return pq, [
            (
                f"{dim // sub_dims} x 4-bit codes, rerank {r} x k",
                partial(setattr, pq, "rerank", int(r)),
            )
            for r in reranks
        ]
    if kind == "ivf":
        codes, probes = params
        lists, train_at = settings.router_ivf_lists, settings.router_ivf_train_at
        ivf = IvfIndex(dim, lists, 1, codes, train_at)  # type: ignore[arg-type]
        return ivf, [
            (f"{codes}, {lists} lists, probe {p}", partial(ivf.set_probe, int(p)))
            for p in probes.split("/")
        ]
    if kind == "hnsw":
        hnsw = HnswIndex(dim, m=int(params[0]))
        return hnsw, [
            (f"M {params[0]}, ef_search {ef}", partial(setattr, hnsw, "ef_search", int(ef)))
            for ef in params[1].split("/")
        ]
    return ExactIndex(dim), [("float32", lambda: None)]


def _relabel(index: FactIndex, like: FactIndex) -> FactIndex:
    """The variant with the live index's modules (it was built with one module "m"), so
    that routing through it decides as the router would."""
    for module in like.modules():
        for fact_id in like.facts_of(module):
            index._module_of[fact_id] = module  # noqa: SLF001 - bench only
    return index


def _recall(
    index: FactIndex, queries: np.ndarray, truth: list[set[int]], row_of: dict[str, int], k: int
) -> float:
    """Share of the exact top-k rows that the index's top-k found."""
    found = [{row_of[h.fact_id] for h in index.search(q, k)} for q in queries]
    return float(np.mean([len(f & t) / len(t) for f, t in zip(found, truth, strict=True)]))


if __name__ == "__main__":
    main()
