import pytest

from loramem.registry.jobs import ALLOWED, JobStatus, can_transition

S = JobStatus
CASES = [
    (S.QUEUED, S.TRAINING, True),
    (S.QUEUED, S.PUBLISHED, False),
    (S.QUEUED, S.FAILED, True),
    (S.TRAINING, S.VALIDATING, True),
    (S.TRAINING, S.TRAINING, True),  # a reclaimed job restarts training
    (S.TRAINING, S.PUBLISHED, False),
    (S.VALIDATING, S.PUBLISHING, True),
    (S.VALIDATING, S.TRAINING, True),  # gate asks for more steps
    (S.VALIDATING, S.FAILED, True),
    (S.PUBLISHING, S.PUBLISHED, True),
    (S.PUBLISHED, S.TRAINING, False),
    (S.PUBLISHED, S.FAILED, False),
    (S.FAILED, S.QUEUED, False),
    (S.FAILED, S.TRAINING, False),
    (S.QUEUED, S.CANCELLED, True),  # DELETE /jobs/{id}, at any unfinished status
    (S.TRAINING, S.CANCELLED, True),
    (S.PUBLISHING, S.CANCELLED, True),
    (S.PUBLISHED, S.CANCELLED, False),
    (S.FAILED, S.CANCELLED, False),
    (S.CANCELLED, S.TRAINING, False),
    (S.CANCELLED, S.PUBLISHED, False),
]


@pytest.mark.parametrize(("current", "new", "allowed"), CASES)
def test_transition_table(current: JobStatus, new: JobStatus, allowed: bool) -> None:
    assert can_transition(current, new) is allowed


def test_every_status_has_a_rule_and_terminal_states_are_final() -> None:
    assert set(ALLOWED) == set(JobStatus)
    assert not ALLOWED[S.PUBLISHED] and not ALLOWED[S.FAILED] and not ALLOWED[S.CANCELLED]
