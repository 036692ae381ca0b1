"""The training job lifecycle: states and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    TRAINING = "training"
    VALIDATING = "validating"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    FAILED = "failed"


TERMINAL = frozenset({JobStatus.PUBLISHED, JobStatus.FAILED})

# A reclaimed job (its worker died) restarts training from any non-terminal state, and a
# failed gate sends a job from validating back to training for more steps.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.TRAINING, JobStatus.FAILED}),
    JobStatus.TRAINING: frozenset({JobStatus.TRAINING, JobStatus.VALIDATING, JobStatus.FAILED}),
    JobStatus.VALIDATING: frozenset({JobStatus.TRAINING, JobStatus.PUBLISHING, JobStatus.FAILED}),
    JobStatus.PUBLISHING: frozenset({JobStatus.TRAINING, JobStatus.PUBLISHED, JobStatus.FAILED}),
    JobStatus.PUBLISHED: frozenset(),
    JobStatus.FAILED: frozenset(),
}


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in ALLOWED[current]


class InvalidTransition(Exception):
    def __init__(self, job_id: str, current: str, new: str) -> None:
        super().__init__(f"job {job_id}: {current} -> {new} is not allowed")
