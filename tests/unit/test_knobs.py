from loramem.knobs import PartialTrainingKnobs, TrainingKnobs, VersionRecipe
from loramem.settings import Settings
from tests.recipes import TRAINED, merged


def test_overrides_resolve_alpha_and_keep_the_rest() -> None:
    knobs = Settings().training.with_overrides({"rank": 4, "learning_rate": 1e-3})
    assert knobs.rank == 4 and knobs.alpha == 4.0  # alpha follows a new rank (the paper)
    assert knobs.learning_rate == 1e-3 and knobs.top_layers == Settings().training.top_layers
    explicit = TrainingKnobs(alpha=2.0).with_overrides({"rank": 16})
    assert explicit.alpha == 16.0  # a new rank without its own alpha: alpha = r
    assert TrainingKnobs(alpha=2.0).with_overrides({}).alpha == 2.0


def test_the_request_model_has_every_knob_optional_with_the_same_limits() -> None:
    assert set(PartialTrainingKnobs.model_fields) == set(TrainingKnobs.model_fields)
    assert PartialTrainingKnobs().model_dump(exclude_none=True) == {}
    schema = PartialTrainingKnobs.model_json_schema()["properties"]["rank"]["anyOf"][0]
    assert (schema["minimum"], schema["maximum"]) == (1, 256)


def test_recipes_round_trip_and_say_how_a_version_was_made() -> None:
    for recipe in (TRAINED, merged({"a": 1, "b": 2})):
        assert VersionRecipe.model_validate_json(recipe.to_json()) == recipe
    assert TRAINED.training is not None and TRAINED.merge is None
