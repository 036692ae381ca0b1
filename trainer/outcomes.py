"""What a job handler returns to the worker, and how it refuses a job for good."""

from __future__ import annotations

from dataclasses import dataclass, field

from loramem.knobs import VersionRecipe


@dataclass(frozen=True)
class Artifact:
    """A new version of `module`, ready for the publisher."""

    module: str
    files: dict[str, bytes]  # the adapter as PEFT saved it (the publisher adds recipe.json)
    recipe: VersionRecipe
    fact_ids: list[str]  # the facts it was trained on: what the router indexes
    recall: float  # measured by the gate; nan when not gated (a merge)
    sources: dict[str, int] = field(default_factory=dict)  # a merge's source versions
    # A consolidation: per delta folded in, its facts' ids and the texts trained.
    folded: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Retirement:
    """Every fact of the module was deleted: it stops serving."""


@dataclass(frozen=True)
class Covered:
    """The module's active version was already trained on every fact the job sees."""

    version: int


Outcome = Artifact | Retirement | Covered


class JobRefused(Exception):
    """The job cannot succeed as asked (recall below the gate, a merge that does not fit):
    it fails at once instead of being retried."""


class JobYielded(Exception):
    """A background job stopped for a user's job queued behind it: it publishes nothing
    and is queued again when a worker is idle (trainer/handlers.py consolidate)."""
