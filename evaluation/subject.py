"""`loramem eval subject`: the router's subject check (router/lexical.py) off and on, side
by side, on the paper's data. No gateway and no engine: the decision is the router's
alone, so each data set's facts are embedded once (the real embedding model), packed into
modules of a module's capacity as the system packs a stream of posts, and indexed in
routers that differ only in the check, as a publish would.

- CounterFact (counterfact_edit_4K.csv, every edit by default, one tenant): each edit's
  own prompt and its relation's question form (evaluation/counterfact_relations.py) must
  reach the module holding the edit; locality prompts (an edit's template filled with a
  subject no edit names) and the question forms of those subjects must go to base.
- PhoneBook (the first 1,000 rows): the stored question, five paraphrases
  (evaluation/router_set.py) and the surname alone where no one else has it must reach
  the person's module (top-1 accuracy), and the share sent to base is told.
- PaperQA: each paper's introduction split into facts as POST /documents splits it, one
  module per paper; its questions must reach that paper's module.

`--thresholds` adds arms with the check on at other route thresholds: the trade that
sets LORAMEM_ROUTE_THRESHOLD.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.counterfact_relations import locality_prompts, paraphrase, relation_of
from evaluation.routing import offline_router, questions_for
from evaluation.run import EvalRun, table
from loramem import datasets
from loramem.documents import split_document
from loramem.settings import Settings
from router.embedder import SentenceEmbedder
from router.router import NO_ADAPTER, RouteDecision, Router

TENANT = "subject"


@dataclass(frozen=True)
class DataSet:
    name: str
    facts: list[str]
    modules: list[str]  # each fact's module
    asked: list[tuple[str, str, str | None]]  # (kind, question, module it must reach; None: base)


def counterfact_set(settings: Settings, count: int, capacity: int) -> DataSet:
    edits = datasets.counterfact_edits(settings.data_dir, count, size="4K")
    every = datasets.counterfact_edits(settings.data_dir, 0, size=datasets.COUNTERFACT_SIZES[-1])
    edited = {e.subject for e in every}
    modules = _packed(len(edits), capacity, "cf")
    asked: list[tuple[str, str, str | None]] = []
    for edit, module in zip(edits, modules, strict=True):
        asked.append(("edit prompt", edit.prompt, module))
        question = paraphrase(edit)
        if question is not None:
            asked.append(("question form", question, module))
    asked += [("locality", p.prompt, None) for p in locality_prompts(edits, len(edits), edited)]
    relations = {r.name: r for r in (relation_of(e) for e in edits) if r is not None}
    asked += [
        ("locality question form", relation.question.format(s=subject), None)
        for relation in relations.values()
        for subject in relation.unedited
        if subject not in edited
    ]
    return DataSet("counterfact", [e.sentence for e in edits], modules, asked)


def phonebook_set(settings: Settings, count: int, capacity: int) -> DataSet:
    people = datasets.phonebook(settings.data_dir, count)
    modules = _packed(len(people), capacity, "pb")
    surnames = Counter(p.name.split()[-1] for p in people)
    asked: list[tuple[str, str, str | None]] = [
        (kind, question, module)
        for person, module in zip(people, modules, strict=True)
        for kind, question in questions_for(person, surnames[person.name.split()[-1]] == 1)
    ]
    return DataSet("phonebook", [p.fact for p in people], modules, asked)


def paperqa_set(settings: Settings, papers: int) -> DataSet:
    facts: list[str] = []
    modules: list[str] = []
    asked: list[tuple[str, str, str | None]] = []
    for number in range(papers):
        paper = datasets.paperqa(settings.data_dir, number)
        sentences = split_document(paper.introduction, settings.max_fact_chars)
        facts += sentences
        modules += [f"paper-{number}"] * len(sentences)
        asked += [("question", qa.question, f"paper-{number}") for qa in paper.qa]
    return DataSet("paperqa", facts, modules, asked)


def _packed(count: int, capacity: int, prefix: str) -> list[str]:
    return [f"{prefix}-{i // capacity:03d}" for i in range(count)]


def subject_eval(run: EvalRun) -> dict[str, Any]:
    flags, settings = run.flags, run.settings
    capacity = settings.module_capacity_facts
    sets = [
        counterfact_set(settings, flags["edits"], capacity),
        phonebook_set(settings, flags["people"], capacity),
    ]
    if flags["papers"]:
        sets.append(paperqa_set(settings, flags["papers"]))
    words = [int(w) for w in str(flags["max_words"]).split(",")]
    threshold = settings.route_threshold
    arms: list[tuple[str, bool, int, float]] = [
        ("off", False, settings.router_subject_max_words, threshold)
    ]
    arms += [(f"on, <= {w} words" if len(words) > 1 else "on", True, w, threshold) for w in words]
    # The route threshold's trade: what must reach a module against what must go to base.
    swept = [float(t) for t in str(flags.get("thresholds") or "").split(",") if t.strip()]
    default_words = settings.router_subject_max_words
    arms += [(f"on, threshold {t:.2f}", True, default_words, t) for t in swept]
    embedder = SentenceEmbedder(settings.embedding_model, threads=settings.router_embed_threads)
    rows: list[dict[str, Any]] = []
    examples: dict[str, list[dict[str, Any]]] = {}
    for data in sets:
        fact_vectors = embedder.embed(data.facts)
        query_vectors = embedder.embed([q for _k, q, _m in data.asked])
        for arm, check, max_words, threshold in arms:
            router = offline_router(
                settings,
                embedder,
                router_subject_check=check,
                router_subject_max_words=max_words,
                route_threshold=threshold,
            )
            _index(router, data, fact_vectors)
            decisions = [
                router.decide(TENANT, vector, query=question)
                for (_k, question, _m), vector in zip(data.asked, query_vectors, strict=True)
            ]
            rows += _rows(data, arm, decisions)
            examples[f"{data.name}, {arm}"] = _misses(data, decisions)
    results = {"rows": rows, "misses": examples, "arms": [a[0] for a in arms]}
    return {"results": results, "report": _report(rows), "figures": {"subject": _figure(rows)}}


def _index(router: Router, data: DataSet, vectors: np.ndarray) -> None:
    rows: dict[str, list[int]] = {}
    for i, module in enumerate(data.modules):
        rows.setdefault(module, []).append(i)
    for module, held in rows.items():
        router.index_module(
            TENANT,
            module,
            1,
            NO_ADAPTER,
            [f"f{i}" for i in held],
            vectors[held],
            texts=[data.facts[i] for i in held],
        )


def _rows(data: DataSet, arm: str, decisions: list[RouteDecision]) -> list[dict[str, Any]]:
    by_kind: dict[str, list[tuple[str | None, RouteDecision]]] = {}
    for (kind, _q, want), decision in zip(data.asked, decisions, strict=True):
        by_kind.setdefault(kind, []).append((want, decision))
    rows = []
    for kind, pairs in by_kind.items():
        wants_base = all(want is None for want, _d in pairs)
        rows.append(
            {
                "data": data.name,
                "kind": kind,
                "arm": arm,
                "questions": len(pairs),
                "wanted": "base" if wants_base else "its module",
                "right": float(np.mean([d.module == want for want, d in pairs])),
                "to_base": float(np.mean([d.module is None for _w, d in pairs])),
                "outcomes": dict(Counter(d.outcome for _w, d in pairs)),
            }
        )
    return rows


def _misses(data: DataSet, decisions: list[RouteDecision]) -> list[dict[str, Any]]:
    """Up to ten questions routed where they must not go, with the fact that drew them (the
    routed module's best, or the nearest one when sent to base)."""
    texts = {f"f{i}": text for i, text in enumerate(data.facts)}
    missed = []
    for (kind, question, want), decision in zip(data.asked, decisions, strict=True):
        if decision.module == want:
            continue
        drew = [h for h in decision.candidates if h.module == decision.module]
        shown = drew or decision.candidates
        nearest = shown[0] if shown else None
        missed.append(
            {
                "kind": kind,
                "question": question,
                "wanted": want or "base",
                "routed": decision.module or "base",
                "outcome": decision.outcome,
                "nearest_fact": texts.get(nearest.fact_id) if nearest else None,
                "score": round(nearest.score, 3) if nearest else None,
            }
        )
    return missed[:10]


def _report(rows: list[dict[str, Any]]) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    groups = list(dict.fromkeys((r["data"], r["kind"]) for r in rows))
    by = {(r["data"], r["kind"], r["arm"]): r for r in rows}
    header = ["data", "asked", "questions", "must reach"]
    for arm in arms:
        header += [f"right, check {arm}", f"to base, check {arm}"]
    body = []
    for data, kind in groups:
        first = by[(data, kind, arms[0])]
        line: list[Any] = [data, kind, first["questions"], first["wanted"]]
        for arm in arms:
            line += [by[(data, kind, arm)]["right"], by[(data, kind, arm)]["to_base"]]
        body.append(line)
    return (
        "Share of questions routed where they must go (the module holding their fact, or "
        "base), and share sent to base, with the subject check off and on.\n\n"
        + table(header, body)
    )


def _figure(rows: list[dict[str, Any]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    groups = list(dict.fromkeys((r["data"], r["kind"]) for r in rows))
    by = {(r["data"], r["kind"], r["arm"]): r["right"] for r in rows}
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(groups) + 1))
    height = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        axis.barh(
            [g + i * height for g in range(len(groups))],
            [by[(d, k, arm)] for d, k in groups],
            height,
            label=f"check {arm}",
        )
    axis.set_yticks([g + height * (len(arms) - 1) / 2 for g in range(len(groups))])
    axis.set_yticklabels([f"{d}: {k}" for d, k in groups])
    axis.invert_yaxis()
    axis.set_xlim(0, 1.02)
    axis.set_xlabel("routed where it must go (its module, or base)")
    axis.legend(fontsize="small")
    return figure
