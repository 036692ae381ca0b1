from loramem.settings import Settings
from trainer.config import TrainConfig


def test_config_round_trips_through_json() -> None:
    config = TrainConfig.from_settings(Settings(), rank=4, learning_rate=1e-3)
    assert TrainConfig.from_json(config.to_json()) == config
    assert config.rank == 4 and config.alpha == 4.0


def test_targets_map_to_llama_module_names() -> None:
    config = TrainConfig.from_settings(Settings(lora_targets="feed-forward"))
    assert config.target_modules == ["gate_proj", "up_proj", "down_proj"]
