"""Routing policy: from the top-k nearest facts to a ranking of modules.

A module's score is its best fact's score plus a small weight times the scores of its
other facts among the top k:

    score(m) = max_{i in m} s_i + support_weight * sum_{i in m, i != argmax} s_i

Why this and not a softmax-weighted vote: a question almost always asks for one fact, and
the module that holds that fact is the right answer even when a neighbouring module holds
many loosely similar facts (PhoneBook split over many modules: every entry looks alike to
the embedder, but only one names the person asked about). A vote over the top k lets
several near-misses outvote the one exact hit; max-plus-support keeps the best hit in
charge and uses the other hits only to break near-ties, which is where they carry real
signal (a question about a document whose facts sit in one module hits several of them).
With the default weight (0.02) and k = 8, the support is worth at most about 0.1, below
the gap between an exact and a near-miss hit on the paraphrase set (bench/router_latency.py).

Only modules whose best fact clears the threshold may win, so the extra support can reorder
eligible modules but never lift a module that holds no sufficiently close fact. With the
subject check (router/lexical.py), only modules holding a fact over the threshold whose
subject the question names may win; a question that clears the threshold only on facts
about other subjects goes to base (outcome `unnamed_subject`).
"""

from __future__ import annotations

from dataclasses import dataclass

from router.index import Hit


@dataclass(frozen=True)
class ModuleScore:
    module: str
    score: float  # aggregated score (ranking key)
    best: float  # the module's best fact score (eligibility against the threshold)


def aggregate(hits: list[Hit], support_weight: float) -> list[ModuleScore]:
    """Modules ranked by max-plus-support over the given hits, best first."""
    best: dict[str, float] = {}
    total: dict[str, float] = {}
    for hit in hits:
        best[hit.module] = max(best.get(hit.module, hit.score), hit.score)
        total[hit.module] = total.get(hit.module, 0.0) + hit.score
    ranked = [
        ModuleScore(m, best[m] + support_weight * (total[m] - best[m]), best[m]) for m in best
    ]
    ranked.sort(key=lambda s: (-s.score, -s.best, s.module))
    return ranked


def choose(ranked: list[ModuleScore], threshold: float) -> ModuleScore | None:
    """The best-ranked module whose best fact clears the threshold, or None (base)."""
    for candidate in ranked:
        if candidate.best >= threshold:
            return candidate
    return None


def merge_group(
    ranked: list[ModuleScore],
    chosen: ModuleScore,
    threshold: float,
    margin: float,
    max_modules: int,
) -> list[str]:
    """The modules a merged adapter should combine for this query, best first: the chosen
    one and every other whose best fact clears the threshold and whose score is within
    `margin` of the chosen's. Fewer than two: [] (the chosen module serves alone)."""
    group = [m.module for m in ranked if m.best >= threshold and chosen.score - m.score <= margin][
        :max_modules
    ]
    return group if len(group) >= 2 else []
