"""Fact-level vector indexes, one per tenant, over unit vectors (cosine = inner product).

Four backends behind one interface (`FactIndex`), chosen by `LORAMEM_ROUTER_INDEX_BACKEND`:

- `ExactIndex` ("exact"): one contiguous float32 matrix, brute-force inner product.
  Always exact; a query costs O(facts x dim), a few ms per 100k facts here.
- `PqIndex` ("pq", the default): exact below `train_at` facts; from there every fact is
  scanned as a 4-bit product-quantisation code (faiss fast-scan) and the best
  `rerank` x k are re-scored on float16 copies: at a million facts 0.996 of the exact
  top-8 of real questions, where inverted lists miss their scattered near-ties, for a
  few ms more a query (docs/RESULTS.md).
- `IvfIndex` ("ivf"): exact below `train_at` facts; from there faiss's
  inverted lists over float16 (or int8) codes: a query scans `probe` of `lists` clusters,
  about a millisecond at a million facts, at half (a quarter) of exact's memory. Adding a
  fact is one centroid assignment, so a million facts load in seconds (hnsw: minutes).
- `HnswIndex` ("hnsw"): hnswlib's HNSW graph. Approximate (recall is set by ef_search);
  a query costs well under a millisecond at 100k facts, at about 1.4x the memory, but a
  graph of 100k facts takes minutes to build on 2 cores.

Every backend exports its whole state as arrays (`state`, `load_state`), which
router/snapshot.py writes to disk so that a restarted gateway need not rebuild them
(an hnsw graph of a million facts takes tens of minutes to build, seconds to load).

Both apply updates incrementally: an upsert or removal touches only its own rows, and the
per-module bookkeeping (which facts a module holds) lives in the shared base class, so
`facts_of` never scans the whole index.
"""

from __future__ import annotations

import importlib
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from threadpoolctl import ThreadpoolController

IndexBackend = Literal["exact", "ivf", "hnsw", "pq"]
IvfCodes = Literal["fp16", "int8", "fp32"]


@dataclass(frozen=True)
class Hit:
    fact_id: str
    module: str
    score: float


class FactIndex(ABC):
    """Rows of (fact id, module, unit vector) for one tenant. Not thread-safe: callers lock."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._module_of: dict[str, str] = {}
        self._by_module: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._module_of)

    def __contains__(self, fact_id: object) -> bool:
        return fact_id in self._module_of

    def modules(self) -> set[str]:
        return set(self._by_module)

    def facts_of(self, module: str) -> set[str]:
        return set(self._by_module.get(module, ()))

    def upsert(self, fact_id: str, module: str, vector: np.ndarray) -> None:
        self.upsert_many([fact_id], [module], vector.reshape(1, self.dim))

    def upsert_many(
        self, fact_ids: Sequence[str], modules: Sequence[str], vectors: np.ndarray
    ) -> None:
        """Insert new facts and overwrite the vector and module of known ones."""
        if not fact_ids:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(fact_ids), self.dim)
        if len(set(fact_ids)) != len(fact_ids) or len(modules) != len(fact_ids):
            raise ValueError("upsert_many needs unique fact ids and one module per fact")
        new = np.array([f not in self._module_of for f in fact_ids], dtype=bool)
        for fact_id, module in zip(fact_ids, modules, strict=True):
            self._forget_module(fact_id)
            self._module_of[fact_id] = module
            self._by_module.setdefault(module, set()).add(fact_id)
        if (~new).any():
            self._update([f for f, n in zip(fact_ids, new, strict=True) if not n], vectors[~new])
        if new.any():
            self._insert([f for f, n in zip(fact_ids, new, strict=True) if n], vectors[new])

    def remove(self, fact_id: str) -> None:
        self.remove_many([fact_id])

    def remove_many(self, fact_ids: Iterable[str]) -> None:
        """Forget these facts (unknown ids are ignored), in one pass where the backend can."""
        known = [f for f in dict.fromkeys(fact_ids) if f in self._module_of]
        for fact_id in known:
            self._forget_module(fact_id)
            del self._module_of[fact_id]
        if known:
            self._delete_many(known)

    def _delete_many(self, fact_ids: list[str]) -> None:
        for fact_id in fact_ids:
            self._delete(fact_id)

    def _forget_module(self, fact_id: str) -> None:
        module = self._module_of.get(fact_id)
        if module is None:
            return
        members = self._by_module[module]
        members.discard(fact_id)
        if not members:
            del self._by_module[module]

    def state(self) -> dict[str, np.ndarray]:
        """Arrays from which `from_state` rebuilds this index exactly (router/snapshot.py)."""
        fact_ids = list(self._module_of)
        modules = sorted(self._by_module)
        code = {m: i for i, m in enumerate(modules)}
        return {
            "fact_ids": pack_strings(fact_ids),
            "modules": pack_strings(modules),
            "module_of": np.array([code[self._module_of[f]] for f in fact_ids], dtype=np.int32),
            **self._state(fact_ids),
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Fill this empty index from `state()`'s arrays (ValueError when they disagree)."""
        fact_ids = unpack_strings(arrays["fact_ids"])
        modules = unpack_strings(arrays["modules"])
        module_of = arrays["module_of"]
        if len(module_of) != len(fact_ids) or (len(module_of) and module_of.max() >= len(modules)):
            raise ValueError("index state: rows and modules disagree")
        self._module_of = {f: modules[c] for f, c in zip(fact_ids, module_of.tolist(), strict=True)}
        for fact_id, module in self._module_of.items():
            self._by_module.setdefault(module, set()).add(fact_id)
        self._load_state(fact_ids, arrays)

    def _state(self, fact_ids: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def _load_state(self, fact_ids: list[str], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be loaded")

    def _hits(self, fact_ids: Sequence[str], scores: Sequence[float]) -> list[Hit]:
        return [Hit(f, self._module_of[f], float(s)) for f, s in zip(fact_ids, scores, strict=True)]

    @abstractmethod
    def _insert(self, fact_ids: list[str], vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _update(self, fact_ids: list[str], vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _delete(self, fact_id: str) -> None: ...

    @abstractmethod
    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """The k facts nearest to a unit query vector, best first."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of the vector structures in use. Spare capacity is left out: it is
        allocated zeroed or uninitialised and stays off the resident set until written."""


_blas = ThreadpoolController()  # scanning the loaded libraries is slow: once per process


class ExactIndex(FactIndex):
    """Brute-force inner product over a growable matrix; removal swaps the last row in.

    The product runs on one BLAS thread: a matrix-vector product is memory-bound, and
    OpenBLAS's spinning workers otherwise take the cores the query embedding (torch) needs
    next; measured on 2 cores at 10k facts, that doubled the embedding's median time.
    """

    def __init__(self, dim: int, initial_capacity: int = 256) -> None:
        super().__init__(dim)
        self._vectors = np.zeros((initial_capacity, dim), dtype=np.float32)
        self._fact_ids: list[str] = []  # row -> fact id
        self._row_of: dict[str, int] = {}

    def _insert(self, fact_ids: list[str], vectors: np.ndarray) -> None:
        start, end = len(self._fact_ids), len(self._fact_ids) + len(fact_ids)
        if end > len(self._vectors):  # grow geometrically: appends stay amortised O(1)
            grown = np.zeros((max(end, 2 * len(self._vectors)), self.dim), dtype=np.float32)
            grown[:start] = self._vectors[:start]
            self._vectors = grown
        self._vectors[start:end] = vectors
        for offset, fact_id in enumerate(fact_ids):
            self._row_of[fact_id] = start + offset
        self._fact_ids.extend(fact_ids)

    def _update(self, fact_ids: list[str], vectors: np.ndarray) -> None:
        self._vectors[[self._row_of[f] for f in fact_ids]] = vectors

    def _delete(self, fact_id: str) -> None:
        row = self._row_of.pop(fact_id)
        last = len(self._fact_ids) - 1
        if row != last:
            self._vectors[row] = self._vectors[last]
            self._fact_ids[row] = self._fact_ids[last]
            self._row_of[self._fact_ids[row]] = row
        self._fact_ids.pop()

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        count = len(self._fact_ids)
        k = min(k, count)
        if k <= 0:
            return []
        with _blas.limit(limits=1, user_api="blas"):
            scores = self._vectors[:count] @ np.asarray(query, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k] if k < count else np.arange(count)
        top = top[np.argsort(-scores[top], kind="stable")]
        return self._hits([self._fact_ids[i] for i in top], scores[top].tolist())

    @property
    def nbytes(self) -> int:
        return len(self._fact_ids) * self.dim * self._vectors.itemsize

    def _state(self, fact_ids: list[str]) -> dict[str, np.ndarray]:
        rows = np.array([self._row_of[f] for f in fact_ids], dtype=np.int64)
        return {"vectors": self._vectors[rows] if len(rows) else self._vectors[:0]}

    def _load_state(self, fact_ids: list[str], arrays: dict[str, np.ndarray]) -> None:
        vectors = arrays["vectors"]
        if vectors.shape != (len(fact_ids), self.dim):
            raise ValueError("index state: vectors do not match the facts")
        self._vectors = np.array(vectors, dtype=np.float32)  # a copy we own (mutable)
        self._fact_ids = list(fact_ids)
        self._row_of = {f: i for i, f in enumerate(fact_ids)}

    def matrix(self) -> tuple[list[str], np.ndarray]:
        """The fact ids and their vectors, row for row (a view: read before any change)."""
        return self._fact_ids, self._vectors[: len(self._fact_ids)]


class _TrainedIndex(FactIndex):
    """Exact until `train_at` facts, then faiss codes (ivf, pq): the shared part.

    The first `train_at` facts live in an exact matrix (`_pending`), which also serves a
    small tenant exactly. When it fills up, the subclass trains its codes on those facts
    (`_build`), and from then on every fact is a faiss code under an int64 label. Labels
    are never reused; `_label_of` and `_fact_of` map them to fact ids. The codes are not
    retrained as the tenant grows.
    """

    def __init__(self, dim: int, train_at: int) -> None:
        super().__init__(dim)
        self.train_at = train_at
        self._pending = ExactIndex(dim)  # facts not yet coded (before training)
        self._label_of: dict[str, int] = {}
        self._fact_of: dict[int, str] = {}
        self._next_label = 0

    @property
    @abstractmethod
    def trained(self) -> bool: ...

    @abstractmethod
    def _build(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Train the codes on these vectors and add them."""

    @abstractmethod
    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None: ...

    @abstractmethod
    def _replace(self, vectors: np.ndarray, labels: np.ndarray) -> None: ...

    @abstractmethod
    def _remove(self, labels: np.ndarray) -> None: ...

    @abstractmethod
    def _search(self, query: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        """Labels and scores of the k best, best first (a 1 x dim float32 query)."""

    @abstractmethod
    def _coded_nbytes(self) -> int: ...

    @abstractmethod
    def _coded_state(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _load_coded(self, arrays: dict[str, np.ndarray], labels: np.ndarray) -> None: ...

    def _labels(self, fact_ids: Sequence[str]) -> np.ndarray:
        return np.array([self._label_of[f] for f in fact_ids], dtype=np.int64)

    def _train(self) -> None:
        fact_ids, vectors = self._pending.matrix()
        self._build(vectors, self._labels(fact_ids))
        self._pending = ExactIndex(self.dim)

    def _insert(self, fact_ids: list[str], vectors: np.ndarray) -> None:
        labels = np.arange(self._next_label, self._next_label + len(fact_ids), dtype=np.int64)
        self._next_label += len(fact_ids)
        for fact_id, label in zip(fact_ids, labels.tolist(), strict=True):
            self._label_of[fact_id] = label
            self._fact_of[label] = fact_id
        if self.trained:
            self._add(vectors, labels)
            return
        self._pending.upsert_many(fact_ids, [""] * len(fact_ids), vectors)
        if len(self._pending) >= self.train_at:
            self._train()

    def _update(self, fact_ids: list[str], vectors: np.ndarray) -> None:
        if not self.trained:
            self._pending.upsert_many(fact_ids, [""] * len(fact_ids), vectors)
            return
        self._replace(vectors, self._labels(fact_ids))

    def _delete(self, fact_id: str) -> None:
        self._delete_many([fact_id])

    def _delete_many(self, fact_ids: list[str]) -> None:
        labels = [self._label_of.pop(f) for f in fact_ids]
        for label in labels:
            del self._fact_of[label]
        if not self.trained:
            self._pending.remove_many(fact_ids)
            return
        self._remove(np.array(labels, dtype=np.int64))

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        k = min(k, len(self))
        if k <= 0:
            return []
        if not self.trained:
            return self._hits(*_ids_scores(self._pending.search(query, k)))
        import faiss

        # One query on one thread (per calling thread in libgomp): a parallel region
        # for a single query costs more than it saves and takes the embedder's cores.
        faiss.omp_set_num_threads(1)
        labels, scores = self._search(np.asarray(query, np.float32).reshape(1, self.dim), k)
        return self._hits([self._fact_of[label] for label in labels], scores)

    @property
    def nbytes(self) -> int:
        return self._coded_nbytes() if self.trained else self._pending.nbytes

    def _state(self, fact_ids: list[str]) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "labels": self._labels(fact_ids),
            "next_label": np.array([self._next_label], np.int64),
        }
        if self.trained:
            return arrays | self._coded_state()
        pending_ids, vectors = self._pending.matrix()
        rows = {f: i for i, f in enumerate(pending_ids)}
        arrays["vectors"] = vectors[[rows[f] for f in fact_ids]]
        return arrays

    def _load_state(self, fact_ids: list[str], arrays: dict[str, np.ndarray]) -> None:
        labels = arrays["labels"]
        if len(labels) != len(fact_ids):
            raise ValueError("index state: labels do not match the facts")
        self._label_of = dict(zip(fact_ids, labels.tolist(), strict=True))
        self._fact_of = {label: f for f, label in self._label_of.items()}
        self._next_label = int(arrays["next_label"][0])
        if "vectors" in arrays:
            self._pending.upsert_many(fact_ids, [""] * len(fact_ids), arrays["vectors"])
        else:
            self._load_coded(arrays, labels)


class IvfIndex(_TrainedIndex):
    """faiss inverted lists (IVF) over scalar-quantised codes, exact until it is trained.

    At `train_at` facts, k-means picks `lists` centroids, and a fact is stored as a
    float16 (or int8) code in the list of its nearest centroid; a query scans the `probe`
    nearest lists. A removal goes through a hash table from label to list slot (faiss
    DirectMap), not a scan. At about 1,000 facts per list (a million facts with the
    default 1,024 lists) a query scans ~62k codes (probe 64), a sixteenth of the tenant.
    """

    def __init__(
        self,
        dim: int,
        lists: int = 1024,
        probe: int = 64,
        codes: IvfCodes = "fp16",
        train_at: int = 40_000,
    ) -> None:
        super().__init__(dim, max(train_at, lists))  # k-means needs a fact per list
        self.lists, self.probe, self.codes = lists, probe, codes
        self._ivf: Any = None  # faiss.IndexIVFScalarQuantizer once trained

    def set_probe(self, probe: int) -> None:
        self.probe = probe
        if self._ivf is not None:
            self._ivf.nprobe = probe

    @property
    def trained(self) -> bool:
        return self._ivf is not None

    def _new_ivf(self) -> Any:
        import faiss  # optional dependency: only needed when this backend is chosen

        # The wrapper keeps the quantizer alive (faiss's referenced_objects).
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.codes == "fp32":
            return faiss.IndexIVFFlat(quantizer, self.dim, self.lists, faiss.METRIC_INNER_PRODUCT)
        kind = (
            faiss.ScalarQuantizer.QT_fp16 if self.codes == "fp16" else faiss.ScalarQuantizer.QT_8bit
        )
        return faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, self.lists, kind, faiss.METRIC_INNER_PRODUCT
        )

    def _build(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        faiss: Any = importlib.import_module("faiss")  # untyped where it counts

        ivf = self._new_ivf()
        ivf.train(vectors)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.add_with_ids(vectors, labels)
        ivf.nprobe = self.probe
        self._ivf = ivf

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        self._ivf.add_with_ids(vectors, labels)

    def _replace(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        self._ivf.remove_ids(labels)
        self._ivf.add_with_ids(vectors, labels)

    def _remove(self, labels: np.ndarray) -> None:
        self._ivf.remove_ids(labels)

    def _search(self, query: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        scores, labels = self._ivf.search(query, k)
        keep = labels[0] >= 0
        return labels[0][keep].tolist(), scores[0][keep].tolist()

    def _coded_nbytes(self) -> int:
        # codes and ids in the lists, the centroids; the direct map's table is left out
        return int(self._ivf.ntotal * (self._ivf.code_size + 8) + self.lists * self.dim * 4)

    def _coded_state(self) -> dict[str, np.ndarray]:
        import faiss

        return {"ivf": faiss.serialize_index(self._ivf)}

    def _load_coded(self, arrays: dict[str, np.ndarray], labels: np.ndarray) -> None:
        faiss: Any = importlib.import_module("faiss")

        ivf = faiss.deserialize_index(np.ascontiguousarray(arrays["ivf"]))
        if ivf.d != self.dim or ivf.ntotal != len(labels) or ivf.nlist != self.lists:
            raise ValueError("index state: the inverted lists do not match")
        ivf.nprobe = self.probe
        self._ivf = ivf


class PqIndex(_TrainedIndex):
    """Every fact scanned as a 4-bit product-quantisation code, the best re-scored on
    float16 copies: exact until it is trained.

    At `train_at` facts, faiss trains a product quantiser of `dim / sub_dims`
    sub-quantisers of 16 centroids each (`sub_dims` dimensions a code nibble), and every
    fact is kept as such a code in faiss's fast-scan layout (SIMD look-up tables, 32
    codes at a time): 96 bytes a fact at dim 384. A query scans every code (no clusters
    to miss: a question's nearest facts are near-ties spread over the whole tenant), takes
    the `rerank` x k best, and re-scores those on float16 copies of the vectors, which
    makes the order exact to float16. The scan is faiss's IVF fast-scan with a single
    list, whose removals swap one code (the flat fast-scan index compacts every code,
    seconds at a million facts).
    """

    def __init__(
        self, dim: int, sub_dims: int = 2, rerank: int = 64, train_at: int = 40_000
    ) -> None:
        if sub_dims < 1 or dim % sub_dims:
            raise ValueError(f"pq: sub_dims {sub_dims} must divide the dimension {dim}")
        # 16 centroids a sub-quantiser: train on at least 16 facts per centroid.
        super().__init__(dim, max(train_at, 256))
        self.sub_dims, self.rerank = sub_dims, rerank
        self._scan: Any = None  # faiss.IndexIVFPQFastScan (one list) once trained
        self._half = _HalfRows(dim)

    @property
    def trained(self) -> bool:
        return self._scan is not None

    def _build(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        faiss: Any = importlib.import_module("faiss")

        spec = f"IVF1,PQ{self.dim // self.sub_dims}x4fs"
        scan = faiss.index_factory(self.dim, spec, faiss.METRIC_INNER_PRODUCT)
        scan.by_residual = False  # one list: codes of the vectors themselves
        scan.train(vectors)
        self._scan = scan
        self._add(vectors, labels)

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        self._scan.add_with_ids(vectors, labels)
        self._half.add(labels, vectors)

    def _replace(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        self._remove_codes(labels)
        self._scan.add_with_ids(vectors, labels)
        self._half.set(labels, vectors)

    def _remove(self, labels: np.ndarray) -> None:
        self._remove_codes(labels)
        self._half.remove(labels)

    def _remove_codes(self, labels: np.ndarray) -> None:
        faiss: Any = importlib.import_module("faiss")

        self._scan.remove_ids(labels)
        # faiss 1.15's blocked lists leave a removed code's nibbles in a partly filled last
        # block, and the next add ORs new codes into them (wrong scores; the unit test
        # test_pq_removals_then_adds_keep_every_code checks this). A list of whole blocks
        # is trimmed, and grows again zeroed: so the last block's codes are taken out
        # and added again, from their float16 copies.
        tail = self._scan.ntotal % self._scan.bbs
        if tail:
            count = self._scan.invlists.list_size(0)
            ids = faiss.rev_swig_ptr(self._scan.invlists.get_ids(0), count)[-tail:].copy()
            self._scan.remove_ids(ids)
            self._scan.add_with_ids(self._half.vectors_of(ids), ids)

    def _search(self, query: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        _, found = self._scan.search(query, min(k * self.rerank, self._scan.ntotal))
        labels = found[0][found[0] >= 0]
        scores = self._half.scores(labels, query[0])
        top = np.argsort(-scores, kind="stable")[:k]
        return labels[top].tolist(), scores[top].tolist()

    def _coded_nbytes(self) -> int:
        return int(self._scan.ntotal * (self._scan.code_size + 8)) + self._half.nbytes

    def _coded_state(self) -> dict[str, np.ndarray]:
        import faiss

        count = self._half.count
        return {
            "scan": faiss.serialize_index(self._scan),
            "half": self._half.vectors[:count],
            "half_labels": self._half.label_at[:count],
        }

    def _load_coded(self, arrays: dict[str, np.ndarray], labels: np.ndarray) -> None:
        faiss: Any = importlib.import_module("faiss")

        scan = faiss.deserialize_index(np.ascontiguousarray(arrays["scan"]))
        half, half_labels = arrays["half"], arrays["half_labels"]
        if (
            scan.d != self.dim
            or scan.M != self.dim // self.sub_dims
            or scan.ntotal != len(labels)
            or half.shape != (len(labels), self.dim)
            or not np.array_equal(np.sort(half_labels), np.sort(labels))
        ):
            raise ValueError("index state: the codes do not match the facts")
        self._scan = scan
        self._half = _HalfRows(self.dim)
        self._half.add(half_labels, half)


class _HalfRows:
    """float16 copies of the coded vectors, by faiss label, for re-scoring. The rows stay
    dense (a removal moves the last row into the hole); a label finds its row through an
    array indexed by label (labels are never reused and count up from 0)."""

    def __init__(self, dim: int) -> None:
        self.vectors = np.zeros((0, dim), dtype=np.float16)
        self.label_at = np.zeros(0, dtype=np.int64)  # row -> label
        self.row_of = np.zeros(0, dtype=np.int64)  # label -> row, -1 when gone
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self.count * (self.vectors.shape[1] * 2 + 8) + self.row_of.nbytes

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        start, end = self.count, self.count + len(labels)
        if end > len(self.vectors):  # grow geometrically: appends stay amortised O(1)
            size = max(end, 2 * len(self.vectors))
            self.vectors = _grown(self.vectors, size, start)
            self.label_at = _grown(self.label_at, size, start)
        top = int(labels.max()) + 1 if len(labels) else 0
        if top > len(self.row_of):
            old = len(self.row_of)
            self.row_of = _grown(self.row_of, max(top, 2 * old), old)
            self.row_of[old:] = -1
        self.vectors[start:end] = vectors
        self.label_at[start:end] = labels
        self.row_of[labels] = np.arange(start, end)
        self.count = end

    def set(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.vectors[self.row_of[labels]] = vectors

    def remove(self, labels: np.ndarray) -> None:
        for label in labels.tolist():
            row, last = int(self.row_of[label]), self.count - 1
            if row != last:
                self.vectors[row] = self.vectors[last]
                self.label_at[row] = self.label_at[last]
                self.row_of[self.label_at[row]] = row
            self.row_of[label] = -1
            self.count = last

    def vectors_of(self, labels: np.ndarray) -> np.ndarray:
        return self.vectors[self.row_of[labels]].astype(np.float32)

    def scores(self, labels: np.ndarray, query: np.ndarray) -> np.ndarray:
        return self.vectors[self.row_of[labels]].astype(np.float32) @ query


def _grown(array: np.ndarray, size: int, used: int) -> np.ndarray:
    """A zeroed array of `size` rows that starts with `array`'s first `used` rows."""
    grown = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
    grown[:used] = array[:used]
    return grown


def _ids_scores(hits: list[Hit]) -> tuple[list[str], list[float]]:
    return [h.fact_id for h in hits], [h.score for h in hits]


def pack_strings(strings: list[str]) -> np.ndarray:
    """Strings as one uint8 array (newline-separated UTF-8): compact, no pickling."""
    if any("\n" in s for s in strings):
        raise ValueError("a fact id or module name holds a newline")
    return np.frombuffer("\n".join(strings).encode(), dtype=np.uint8)


def unpack_strings(packed: np.ndarray) -> list[str]:
    text = packed.tobytes().decode()
    return text.split("\n") if text else []


class HnswIndex(FactIndex):
    """hnswlib graph in inner-product space. Labels are never reused: a removed fact is
    marked deleted and its slot is recycled for the next new fact (replace_deleted), so
    churn does not grow the graph; the graph is resized (doubled) only when it is full."""

    def __init__(
        self,
        dim: int,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        initial_capacity: int = 1024,
    ) -> None:
        import hnswlib  # optional dependency: only needed when this backend is chosen

        super().__init__(dim)
        self.m, self.ef_search = m, ef_search
        self._graph = hnswlib.Index(space="ip", dim=dim)
        self._graph.init_index(
            max_elements=initial_capacity,
            M=m,
            ef_construction=ef_construction,
            allow_replace_deleted=True,
        )
        self._graph.set_num_threads(1)  # one query per request thread; no pool hand-off
        self._label_of: dict[str, int] = {}
        self._fact_of: dict[int, str] = {}
        self._next_label = 0
        self._deleted = 0  # slots marked deleted and not yet recycled

    def _insert(self, fact_ids: list[str], vectors: np.ndarray) -> None:
        fresh_slots = max(0, len(fact_ids) - self._deleted)
        needed = self._graph.get_current_count() + fresh_slots
        capacity = self._graph.get_max_elements()
        if needed > capacity:
            self._graph.resize_index(max(needed, 2 * capacity))
        labels = np.arange(self._next_label, self._next_label + len(fact_ids), dtype=np.uint64)
        self._next_label += len(fact_ids)
        # A module's worth of facts (start-up loads, publishes) is built on every core;
        # single upserts stay on the caller's thread.
        threads = -1 if len(fact_ids) >= 32 else 1
        self._graph.add_items(vectors, labels, num_threads=threads, replace_deleted=True)
        self._deleted -= len(fact_ids) - fresh_slots
        for fact_id, label in zip(fact_ids, labels.tolist(), strict=True):
            self._label_of[fact_id] = label
            self._fact_of[label] = fact_id

    def _update(self, fact_ids: list[str], vectors: np.ndarray) -> None:
        # A live label re-added is updated in place (its links are repaired). This must not
        # pass replace_deleted, which would put it in a recycled slot and leave the old one.
        labels = np.array([self._label_of[f] for f in fact_ids], dtype=np.uint64)
        self._graph.add_items(vectors, labels, num_threads=1)

    def _delete(self, fact_id: str) -> None:
        label = self._label_of.pop(fact_id)
        del self._fact_of[label]
        self._graph.mark_deleted(label)
        self._deleted += 1

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        k = min(k, len(self))
        if k <= 0:
            return []
        query = np.asarray(query, dtype=np.float32).reshape(1, self.dim)
        ef = max(self.ef_search, k)
        while True:
            self._graph.set_ef(ef)
            try:
                labels, distances = self._graph.knn_query(query, k=k, num_threads=1)
                break
            except RuntimeError:  # too few live results reached (many deletions): widen
                if ef >= len(self) + self._deleted:
                    raise
                ef = min(4 * ef, len(self) + self._deleted)
        fact_ids = [self._fact_of[int(label)] for label in labels[0]]
        return self._hits(fact_ids, (1.0 - distances[0]).tolist())  # "ip" distance = 1 - dot

    @property
    def nbytes(self) -> int:
        # What hnswlib serialises for the slots in use (deleted ones included): vectors,
        # level-0 and upper-level links, labels.
        return int(self._graph.index_file_size())

    def _state(self, fact_ids: list[str]) -> dict[str, np.ndarray]:
        # hnswlib serialises only to a file: its bytes go into the snapshot as they are
        # (deleted marks included, so recycling slots goes on after a restart).
        with tempfile.TemporaryDirectory(prefix="loramem-hnsw-") as folder:
            path = Path(folder) / "graph.bin"
            self._graph.save_index(str(path))
            graph = np.fromfile(path, dtype=np.uint8)
        return {
            "graph": graph,
            "labels": np.array([self._label_of[f] for f in fact_ids], dtype=np.int64),
            "counters": np.array([self._next_label, self._deleted], dtype=np.int64),
        }

    def _load_state(self, fact_ids: list[str], arrays: dict[str, np.ndarray]) -> None:
        import hnswlib

        labels = arrays["labels"]
        if len(labels) != len(fact_ids):
            raise ValueError("index state: labels do not match the facts")
        self._next_label, self._deleted = (int(c) for c in arrays["counters"])
        with tempfile.TemporaryDirectory(prefix="loramem-hnsw-") as folder:
            path = Path(folder) / "graph.bin"
            np.ascontiguousarray(arrays["graph"]).tofile(path)
            graph = hnswlib.Index(space="ip", dim=self.dim)
            try:
                graph.load_index(str(path), allow_replace_deleted=True)
            except RuntimeError as exc:
                raise ValueError(f"index state: the graph does not load: {exc}") from exc
        live = graph.get_current_count() - self._deleted
        if graph.dim != self.dim or graph.M != self.m or live != len(fact_ids):
            raise ValueError("index state: the graph does not match the facts")
        graph.set_num_threads(1)
        self._graph = graph
        self._label_of = dict(zip(fact_ids, labels.tolist(), strict=True))
        self._fact_of = {label: f for f, label in self._label_of.items()}


def index_factory(
    backend: IndexBackend,
    hnsw_m: int = 16,
    hnsw_ef_construction: int = 200,
    hnsw_ef_search: int = 64,
    ivf_lists: int = 1024,
    ivf_probe: int = 64,
    ivf_codes: IvfCodes = "fp16",
    ivf_train_at: int = 40_000,
    pq_sub_dims: int = 2,
    pq_rerank: int = 64,
    pq_train_at: int = 40_000,
) -> Callable[[int], FactIndex]:
    """A constructor of empty per-tenant indexes of the chosen backend, taking the dim."""
    if backend == "exact":
        return ExactIndex
    if backend == "ivf":
        return lambda dim: IvfIndex(dim, ivf_lists, ivf_probe, ivf_codes, ivf_train_at)
    if backend == "hnsw":
        return lambda dim: HnswIndex(dim, hnsw_m, hnsw_ef_construction, hnsw_ef_search)
    if backend == "pq":
        return lambda dim: PqIndex(dim, pq_sub_dims, pq_rerank, pq_train_at)
    raise ValueError(f"unknown router index backend: {backend}")
