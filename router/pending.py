"""Read your writes: facts changed since their module's active version was trained.

A posted fact is not in any module until a version trained on it is published (tens of
seconds to minutes on CPU), and an edited or deleted fact's old value is still in the
active version meanwhile. The router's index holds only published facts
(router/router.py), so this is a second, small index beside it, per tenant:

- `add`: a fact no active version holds; its current text's vector is indexed here;
- `edit`: the active version holds an older text; the new text's vector is indexed here
  and the fact is *stale* (the module must not answer it alone);
- `delete`: the active version still holds a fact that no longer exists: stale.

Changes come from `facts_changed` events, written in the same transaction that stores
the change (loramem/registry/facts.py), so every gateway sees them within one event
read. A change is cleared by the publish that holds it:

- an add, once any published version of the tenant lists the fact (ids are unique, and
  a split may have moved it to another module);
- an edit or a delete, once its module publishes a version of a job staged at or after
  the change: the trainer reads the module's facts after its job was staged, so that
  version has the new text (and, for a delete, lacks the fact). The order is the order
  of events in the stream, in which every job's own change event comes before its
  publish. A delete also clears when a version of its module lacks the fact.

A fact moved to a new module (the gate's move out, a split) is announced as an add by the
new module's job: pending until a version lists it, or, edited before, an edit now of the
new module, cleared by its job's publish (the old module's next version lacks it).

A change whose job failed stays pending until a later job of its module publishes: it
keeps being answered from context. After a gateway restart, adds are rebuilt from the
registry (facts that no active version lists); edits and deletes staged before the
restart are not known until their module publishes.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from loramem.registry import Registry
from router.embedder import from_bytes
from router.index import ExactIndex, FactIndex, Hit

CHANGES = ("add", "edit", "delete")
# Jobs whose change events were seen, for ordering their publish; bounded, since a failed
# or covered job never publishes (forgetting one only keeps its edits pending longer).
_MAX_JOBS_REMEMBERED = 10_000


@dataclass(frozen=True)
class Change:
    fact_id: str
    module: str
    change: str  # "add", "edit" or "delete"
    seq: int  # the order of its event among those this gateway applied


class PendingFacts:
    """Per tenant: the facts changed since the active versions were trained. Thread-safe
    (the event follower writes, request threads read)."""

    def __init__(
        self, registry: Registry, dim: int, new_index: Callable[[int], FactIndex] = ExactIndex
    ) -> None:
        self.registry = registry
        self.dim = dim
        self._new_index = new_index
        self._indexes: dict[str, FactIndex] = {}  # new texts (adds and edits)
        self._texts: dict[str, dict[str, str]] = {}  # tenant -> fact id -> its new text
        self._changes: dict[str, dict[str, Change]] = {}  # tenant -> fact id -> change
        self._job_seq: OrderedDict[str, int] = OrderedDict()
        self._seq = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reads
    def any(self, tenant: str) -> bool:
        """Whether the tenant has a pending change (else routing is as without this)."""
        with self._lock:
            return bool(self._changes.get(tenant))

    def search(self, tenant: str, vector: np.ndarray, k: int) -> list[Hit]:
        """The nearest facts with a new text no active version holds, best first."""
        with self._lock:
            index = self._indexes.get(tenant)
            return index.search(vector, k) if index is not None and len(index) else []

    def text(self, tenant: str, fact_id: str) -> str:
        """The new text of an indexed change ("" if none): the subject check reads it."""
        with self._lock:
            return self._texts.get(tenant, {}).get(fact_id, "")

    def stale(self, tenant: str) -> dict[str, str]:
        """Facts whose active version holds an old value: fact id -> "edit" or "delete"."""
        with self._lock:
            changes = self._changes.get(tenant, {})
            return {f: c.change for f, c in changes.items() if c.change != "add"}

    def count(self, tenant: str) -> int:
        with self._lock:
            return len(self._changes.get(tenant, {}))

    # ---------------------------------------------------------------- updates
    def apply_changed(
        self, tenant: str, module: str, job_id: str, change: str, fact_ids: list[str]
    ) -> None:
        """A `facts_changed` event: record the change, index the new texts."""
        if change not in CHANGES:
            raise ValueError(f"unknown change {change!r}")
        facts = {f.id: f for f in self.registry.facts.by_id(tenant, fact_ids)}
        with self._lock:
            self._seq += 1
            if job_id:
                self._job_seq[job_id] = self._seq
            while len(self._job_seq) > _MAX_JOBS_REMEMBERED:
                self._job_seq.popitem(last=False)
            changes = self._changes.setdefault(tenant, {})
            index = self._indexes.get(tenant)
            if index is None:
                index = self._indexes[tenant] = self._new_index(self.dim)
            texts = self._texts.setdefault(tenant, {})
            for fact_id in fact_ids:
                before = changes.get(fact_id)
                kind = _combined(before.change if before else None, change)
                changes[fact_id] = Change(fact_id, module, kind, self._seq)
                fact = facts.get(fact_id)
                # Index the text as stored now: a later change has its own event.
                if kind == "delete" or fact is None or not fact.embedding:
                    index.remove(fact_id)
                    texts.pop(fact_id, None)
                else:
                    index.upsert(fact_id, fact.module, from_bytes(fact.embedding))
                    texts[fact_id] = fact.text

    def apply_published(self, tenant: str, module: str, version: int, job_id: str) -> None:
        """A publish: clear the changes this version holds."""
        info = self.registry.modules.version(module, version)
        trained = set(info.fact_ids)  # empty for a merged module: it owns no facts
        with self._lock:
            upto = self._job_seq.pop(job_id, None)
            changes = self._changes.get(tenant, {})
            held = [c.fact_id for c in changes.values() if _holds(c, module, trained, upto)]
            self._clear(tenant, held)

    def apply_retired(self, tenant: str, module: str) -> None:
        """A module with no facts left: none of its deletions can be answered any more."""
        with self._lock:
            changes = self._changes.get(tenant, {})
            gone = [c.fact_id for c in changes.values() if c.module == module]
            self._clear(tenant, [f for f in gone if changes[f].change == "delete"])

    def load_all(self) -> None:
        """Rebuild the adds from the registry (start, resync): facts of a tenant that no
        active version lists."""
        with self._lock:
            self._indexes.clear()
            self._changes.clear()
            self._texts.clear()
        for tenant in self.registry.modules.tenants():
            trained: set[str] = set()
            for info in self.registry.modules.active_versions(tenant):
                trained.update(info.fact_ids)
            by_module: dict[str, list[str]] = {}
            for fact in self.registry.facts.of_tenant(tenant):
                if fact.id not in trained:
                    by_module.setdefault(fact.module, []).append(fact.id)
            for module_name, ids in by_module.items():
                self.apply_changed(tenant, module_name, "", "add", ids)

    def _clear(self, tenant: str, fact_ids: list[str]) -> None:
        changes, index = self._changes.get(tenant, {}), self._indexes.get(tenant)
        texts = self._texts.get(tenant, {})
        for fact_id in fact_ids:
            changes.pop(fact_id, None)
            texts.pop(fact_id, None)
            if index is not None:
                index.remove(fact_id)


def _combined(before: str | None, change: str) -> str:
    """What a fact's pending state becomes after one more change: the active version's
    view is what matters (it holds no value for an add, an old value otherwise)."""
    if before == "add":
        return "add" if change != "delete" else "delete"
    if before in ("edit", "delete"):
        return "edit" if change == "add" else change  # re-posted after a delete: an edit
    return change


def _holds(change: Change, module: str, trained: set[str], upto: int | None) -> bool:
    """Whether a version of `module` listing `trained`, published by a job whose change
    event was the `upto`-th (None: unknown), holds this change."""
    if change.change == "add":
        return change.fact_id in trained
    if change.module != module:
        return False
    if change.change == "delete":  # the module no longer holds it
        return change.fact_id not in trained
    return upto is not None and change.seq <= upto and change.fact_id in trained


def decode_fact_ids(raw: str) -> list[str]:
    ids = json.loads(raw)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("fact_ids must be a JSON list of strings")
    return ids
