"""Routing: which module version answers a request.

The router keeps, per tenant, a fact index and the active version of every module. Only
facts that a published version was trained on are indexed, so a request is never routed
to a module that does not know the fact yet. Updates come from registry events.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from loramem.errors import ModelNotFound
from loramem.registry import Registry, served_name
from router.embedder import Embedder, from_bytes
from router.index import Hit, TenantIndex

log = logging.getLogger("loramem.router")


@dataclass(frozen=True)
class RouteDecision:
    target: str  # engine model name: "<module>@v<N>" or the base model's name
    module: str | None  # None when the base model answers
    outcome: str  # "module" (named or routed), "base" (asked for), "below_threshold"
    score: float | None = None
    candidates: list[Hit] = field(default_factory=list)

    @property
    def header(self) -> str:
        return self.target if self.module else "base"


class Router:
    def __init__(
        self,
        registry: Registry,
        embedder: Embedder,
        base_name: str,
        threshold: float,
        top_k: int = 5,
    ) -> None:
        self.registry = registry
        self.embedder = embedder
        self.base_name = base_name
        self.threshold = threshold
        self.top_k = top_k
        self._indexes: dict[str, TenantIndex] = {}
        self._active: dict[str, tuple[str, int]] = {}  # module -> (tenant, version)
        self._lock = threading.Lock()

    # ------------------------------------------------------------- decisions
    def route(self, tenant: str, model: str, query: str) -> RouteDecision:
        if model == self.base_name:
            return RouteDecision(target=self.base_name, module=None, outcome="base")
        if model != "auto":
            return self._named(tenant, model)
        return self._nearest(tenant, query)

    def _named(self, tenant: str, model: str) -> RouteDecision:
        module, _, version = model.partition("@v")
        active = self._active.get(module)
        if active is None or active[0] != tenant:  # foreign modules look exactly like absent ones
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        if version and not version.isdigit():
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        number = int(version) if version else active[1]
        return RouteDecision(target=served_name(module, number), module=module, outcome="module")

    def _nearest(self, tenant: str, query: str) -> RouteDecision:
        index = self._indexes.get(tenant)
        if index is None or not len(index) or not query.strip():
            return RouteDecision(target=self.base_name, module=None, outcome="below_threshold")
        vector = self.embedder.embed([query])[0]
        with self._lock:
            hits = index.search(vector, self.top_k)
        best = hits[0]
        if best.score < self.threshold:
            return RouteDecision(self.base_name, None, "below_threshold", best.score, hits)
        _tenant, version = self._active[best.module]
        return RouteDecision(
            served_name(best.module, version), best.module, "module", best.score, hits
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    # --------------------------------------------------------------- updates
    def load_all(self) -> None:
        for tenant in self.registry.list_tenants():
            for module in self.registry.list_modules(tenant):
                if module.active_version:
                    self.apply_published(tenant, module.name, module.active_version)

    def apply_published(self, tenant: str, module: str, version: int) -> None:
        """Index exactly the facts this version was trained on; drop the module's others."""
        info = self.registry.get_version(module, version)
        facts = {f.id: f for f in self.registry.facts_by_id(tenant, info.fact_ids)}
        with self._lock:
            index = self._indexes.setdefault(tenant, TenantIndex(self.embedder.dim))
            previous = self._active.get(module)
            if previous and previous[1] > version:
                return  # an older event arriving late
            for fact_id in index.facts_of(module) - set(facts):
                index.remove(fact_id)
            for fact in facts.values():
                index.upsert(fact.id, module, from_bytes(fact.embedding))
            self._active[module] = (tenant, version)
        log.info("router: %s@v%d active with %d facts", module, version, len(facts))

    def active_modules(self, tenant: str) -> dict[str, int]:
        return {m: v for m, (t, v) in self._active.items() if t == tenant}

    def all_active(self) -> dict[str, int]:
        return {m: v for m, (_t, v) in self._active.items()}
