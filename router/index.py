"""Fact-level vector index, one per tenant. Exact cosine search over unit vectors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Hit:
    fact_id: str
    module: str
    score: float


class TenantIndex:
    """Rows of (fact id, module, unit vector); updates touch only their rows."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._fact_ids: list[str] = []
        self._modules: list[str] = []
        self._row_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._fact_ids)

    def upsert(self, fact_id: str, module: str, vector: np.ndarray) -> None:
        row = self._row_of.get(fact_id)
        if row is not None:
            self._vectors[row] = vector
            self._modules[row] = module
            return
        self._row_of[fact_id] = len(self._fact_ids)
        self._fact_ids.append(fact_id)
        self._modules.append(module)
        self._vectors = np.vstack([self._vectors, vector.reshape(1, self.dim)])

    def remove(self, fact_id: str) -> None:
        """Swap the last row into the hole, so removal is O(1) in rows moved."""
        row = self._row_of.pop(fact_id, None)
        if row is None:
            return
        last = len(self._fact_ids) - 1
        if row != last:
            self._vectors[row] = self._vectors[last]
            self._fact_ids[row] = self._fact_ids[last]
            self._modules[row] = self._modules[last]
            self._row_of[self._fact_ids[row]] = row
        self._vectors = self._vectors[:last]
        self._fact_ids.pop()
        self._modules.pop()

    def facts_of(self, module: str) -> set[str]:
        return {f for f, m in zip(self._fact_ids, self._modules, strict=True) if m == module}

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        if not self._fact_ids:
            return []
        scores = self._vectors @ query
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [Hit(self._fact_ids[i], self._modules[i], float(scores[i])) for i in top]
