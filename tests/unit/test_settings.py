import pytest
from pydantic import ValidationError

from loramem.settings import Settings


def test_defaults_follow_the_base_model(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.base_name == "SmolLM2-135M-Instruct"
    assert s.training.with_overrides({}).alpha == s.training.rank  # the paper's alpha = r
    assert s.adapters_path == s.cache_dir / "adapters"


def test_env_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAMEM_TRAINING__RANK", "4")
    monkeypatch.setenv("LORAMEM_ROUTE_THRESHOLD", "0.6")
    assert Settings().training.rank == 4 and Settings().route_threshold == 0.6


@pytest.mark.parametrize(
    "bad",
    [
        {"redis_url": "http://x"},
        {"engine_url": "redis://x"},
        {"training": {"rank": 0}},
        {"training": {"recall_gate": 1.5}},
        {"training": {"targets": "everything"}},
        {"training": {"variant": "dora"}},  # served modules are plain LoRA
    ],
)
def test_impossible_values_fail_fast(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)
