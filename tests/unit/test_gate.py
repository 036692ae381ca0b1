"""The gate's decision after a round (trainer/gate.py): which facts publish, which move
out, when to train on."""

from __future__ import annotations

import pytest

from trainer.gate import Verdict, judge, movable

GATE, SHARE = 0.95, 0.1


@pytest.mark.parametrize(
    ("missed", "total", "rounds_left", "verdict"),
    [
        (0, 53, 2, Verdict.PUBLISH),  # every fact recalled
        (1, 53, 2, Verdict.MOVE_OUT),  # issue 15: one stubborn fact of 53, not 40 more steps
        (5, 53, 2, Verdict.MOVE_OUT),  # below the gate (0.906) but few: out, not drilled
        (6, 53, 2, Verdict.TRAIN_ON),  # more than 10%: the round was short overall
        (6, 53, 0, Verdict.BELOW_GATE),
        (1, 2, 2, Verdict.MOVE_OUT),  # at least one fact may move out
        (2, 2, 2, Verdict.TRAIN_ON),  # never every fact: nothing would be left to publish
        (1, 1, 2, Verdict.TRAIN_ON),  # a fact moved out alone trains on, on its own
        (1, 1, 0, Verdict.BELOW_GATE),  # ...and fails alone
    ],
)
def test_few_missed_facts_move_out_and_many_train_on(
    missed: int, total: int, rounds_left: int, verdict: Verdict
) -> None:
    assert judge(missed, total, rounds_left, GATE, SHARE) is verdict


def test_off_it_is_the_old_gate_extra_rounds_over_every_fact() -> None:
    assert judge(1, 53, 2, GATE, 0.0) is Verdict.TRAIN_ON
    assert judge(1, 53, 0, GATE, 0.0) is Verdict.PUBLISH  # above the gate: published whole
    assert judge(3, 53, 0, GATE, 0.0) is Verdict.BELOW_GATE


def test_a_gate_of_zero_publishes_what_one_round_reaches() -> None:
    assert judge(2, 2, 0, 0.0, SHARE) is Verdict.PUBLISH  # capacity experiments: not moved


def test_the_share_moved_is_at_least_one_fact() -> None:
    assert [movable(n, SHARE) for n in (1, 9, 10, 19, 20, 64)] == [1, 1, 1, 1, 2, 6]
    assert movable(64, 0.0) == 0
