"""Routing among many look-alike modules: top-1 module accuracy when 16, 64 or 256
PhoneBook modules all hold facts of one shape ("The phone number of X is N").

The router sees only facts, so no module is trained: each size packs the first PhoneBook
entries into that many modules (at most 64 facts each; 2,000 // modules when fewer fit)
and indexes their real embeddings in a router of its own, as a publish would. Asked per
sampled person: the stored question form ("What is the phone number of X?") and five
paraphrases not used in training (evaluation/router_set.py's templates, some without
the title). Each question is routed with every `--weights` lexical weight in the same
run (0 = the dense embedding alone; router/lexical.py), so the columns compare side by
side on identical indexes and questions.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from evaluation.router_set import PHONE_TEMPLATES, plain_name
from evaluation.run import EvalRun, table
from loramem import datasets
from loramem.registry import Registry
from loramem.settings import Settings
from router.embedder import SentenceEmbedder
from router.router import NO_ADAPTER, Router

TENANT = "routing"


def questions_for(entry: datasets.PhoneEntry, unique_surname: bool) -> list[tuple[str, str]]:
    """(kind, question): the stored form, the paraphrases, and (when no one else indexed
    has it) the surname alone, as people ask ("What's Wyatt's number?")."""
    asked = [("stored", entry.question)]
    for i, template in enumerate(PHONE_TEMPLATES):
        name = entry.name if i % 2 == 0 else plain_name(entry.name)
        asked.append(("paraphrase", template.format(name=name)))
    if unique_surname:
        asked.append(("surname", f"What's {entry.name.split()[-1]}'s number?"))
    return asked


def routing_eval(run: EvalRun) -> dict[str, Any]:
    flags, settings = run.flags, run.settings
    sizes = [int(s) for s in str(flags["sizes"]).split(",")]
    weights = [float(w) for w in str(flags["weights"]).split(",")]
    needed = max(min(64, 2000 // size) * size for size in sizes)
    people = datasets.phonebook(settings.data_dir, needed, offset=flags.get("offset", 0))
    embedder = SentenceEmbedder(settings.embedding_model, threads=settings.router_embed_threads)
    vectors = embedder.embed([p.fact for p in people])
    rows: list[dict[str, Any]] = []
    for size in sizes:
        per = min(64, 2000 // size)
        module_of = {i: f"pb-{i // per:03d}" for i in range(size * per)}
        step = max(1, len(module_of) // flags["people"])
        sample = list(range(0, len(module_of), step))[: flags["people"]]
        surnames = Counter(people[i].name.split()[-1] for i in module_of)
        asked = [
            (i, kind, q)
            for i in sample
            for kind, q in questions_for(people[i], surnames[people[i].name.split()[-1]] == 1)
        ]
        query_vectors = embedder.embed([q for _i, _k, q in asked])
        for weight in weights:
            router = offline_router(run.settings, embedder, router_lexical_weight=weight)
            for m in range(size):
                rows_of = range(m * per, (m + 1) * per)
                router.index_module(
                    TENANT,
                    f"pb-{m:03d}",
                    1,
                    NO_ADAPTER,
                    [f"f{i}" for i in rows_of],
                    vectors[m * per : (m + 1) * per],
                    texts=[people[i].fact for i in rows_of],
                )
            hits: dict[str, list[bool]] = {"stored": [], "paraphrase": [], "surname": []}
            for (i, kind, q), vector in zip(asked, query_vectors, strict=True):
                hits[kind].append(router.decide(TENANT, vector, query=q).module == module_of[i])
            rows.append(
                {
                    "modules": size,
                    "facts": size * per,
                    "lexical_weight": weight,
                    "questions": len(asked),
                    "stored": float(np.mean(hits["stored"])),
                    "paraphrase": float(np.mean(hits["paraphrase"])),
                    "surname": float(np.mean(hits["surname"])) if hits["surname"] else None,
                }
            )
    return {"results": {"rows": rows}, "report": _report(rows), "figures": _figures(rows)}


def offline_router(settings: Settings, embedder: SentenceEmbedder, **overrides: Any) -> Router:
    """A router of `settings` with `overrides`, no snapshots, whose registry is never
    contacted: an eval installs modules directly, as a publish would."""
    config = settings.model_copy(update={**overrides, "router_snapshot_interval_s": 0})
    return Router.from_settings(Registry.from_url(config.redis_url), embedder, config)


def _report(rows: list[dict[str, Any]]) -> str:
    header = ["modules", "facts", "lexical weight", "questions", "stored form", "paraphrases"]
    header.append("surname only")
    keys = ("modules", "facts", "lexical_weight", "questions", "stored", "paraphrase", "surname")
    body = [[r[k] for k in keys] for r in rows]
    return "Top-1 module accuracy (the module holding the person's fact).\n\n" + table(header, body)


def _figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for weight in sorted({r["lexical_weight"] for r in rows}):
        mine = [r for r in rows if r["lexical_weight"] == weight]
        label = "dense" if weight == 0 else f"dense + {weight} lexical"
        for kind, style in (("paraphrase", "o-"), ("surname", "s--")):
            points = [(r["modules"], r[kind]) for r in mine if r[kind] is not None]
            axis.plot(*zip(*points, strict=True), style, label=f"{label}, {kind}")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("look-alike modules")
    axis.set_ylabel("top-1 module accuracy")
    axis.set_ylim(0, 1.02)
    axis.legend()
    return {"routing": figure}
