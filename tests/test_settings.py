import pytest
from pydantic import ValidationError

from loramem.settings import Settings


def test_defaults_follow_the_base_model(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.base_name == "SmolLM2-135M-Instruct"
    assert s.lora_alpha == s.lora_rank  # the paper's alpha = r
    assert s.adapters_path == s.cache_dir / "adapters"


def test_env_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAMEM_LORA_RANK", "4")
    assert Settings().lora_rank == 4


@pytest.mark.parametrize(
    "bad",
    [
        {"redis_url": "http://x"},
        {"engine_url": "redis://x"},
        {"lora_rank": 0},
        {"recall_gate": 1.5},
        {"lora_targets": "everything"},
    ],
)
def test_impossible_values_fail_fast(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)
