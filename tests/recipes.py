"""Version recipes for tests that publish versions by hand."""

from loramem.knobs import MergeRecipe, TrainingKnobs, VersionRecipe

TRAINED = VersionRecipe(
    made_by="trained", base_model="test-base", rank=8, training=TrainingKnobs().with_overrides({})
)


def merged(sources: dict[str, int]) -> VersionRecipe:
    return VersionRecipe(
        made_by="merged",
        base_model="test-base",
        rank=16,
        merge=MergeRecipe(
            combination="ties",
            peft_combination="ties_svd",
            sources=sources,
            weights=dict.fromkeys(sources, 1.0),
            density=1.0,
        ),
    )
