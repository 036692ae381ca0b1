"""The publisher pushes a new version into the engines only when they cannot fetch it
themselves (engine_resolver off); with the resolver on, publishing touches no engine."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from loramem.adapter_store import RECIPE_FILE, AdapterStore, checksum
from loramem.names import served_name
from loramem.settings import Settings
from tests.recipes import TRAINED
from trainer.outcomes import Artifact
from trainer.publisher import Publisher


class Modules:
    def __init__(self) -> None:
        self.published: list[str] = []

    def next_version(self, module: str, at_least: int = 1) -> int:
        return at_least

    def publish(self, info, files, job_id=None, fence=None, fold=None) -> None:  # type: ignore[no-untyped-def]
        self.published.append(f"{info.module}@v{info.version}")


@pytest.mark.parametrize("resolver", [True, False])
def test_engines_get_a_push_only_without_their_resolver(tmp_path: Path, resolver: bool) -> None:
    registry = SimpleNamespace(modules=Modules())
    settings = Settings(cache_dir=tmp_path, engine_resolver=resolver)
    ctx = SimpleNamespace(
        settings=settings, registry=registry, store=AdapterStore(tmp_path / "a", registry)
    )
    pushed: list[str] = []
    engine = SimpleNamespace(
        load_adapter=lambda ref, fresh=False: pushed.append(ref.name),
        loaded_models=lambda: {"base"},  # the publisher asks which names an engine holds
    )
    publisher = Publisher(ctx, [engine])  # type: ignore[arg-type, list-item]
    config = {"peft_type": "LORA", "r": 8}
    files = {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": b"w"}
    publisher.publish(SimpleNamespace(id="j", tenant="t"), Artifact("m", files, TRAINED, [], 1.0))  # type: ignore[arg-type]
    assert registry.modules.published == ["m@v1"]
    served = served_name("m", 1, checksum({**files, RECIPE_FILE: TRAINED.to_json().encode()}))
    assert pushed == ([] if resolver else [served])
