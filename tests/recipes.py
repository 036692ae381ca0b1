"""Version recipes and checksums for tests that publish versions by hand."""

from loramem.adapter_store import checksum
from loramem.knobs import MergeRecipe, TrainingKnobs, VersionRecipe

# The checksum of a version published with no files: a sha256 like every real one, since
# the served name carries its digest (loramem/names.py).
NO_FILES = checksum({})

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
