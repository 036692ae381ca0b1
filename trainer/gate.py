"""The recall gate's decision after a round of training, per fact.

A round ends with the recall check: each fact's question is asked and its answer is a hit
or a miss. What happens next:

publish     every fact recalled (or the gate is 0, or above the gate with no more to do):
            a version holding every fact trained
move_out    a few facts missed (settings.py gate_move_out_fraction): a version holding
            the recalled facts; the missed ones move to a module of their own, with a job
            of their own, so one stubborn fact does not hold back the others
train_on    too many missed to move out: another round over every fact
below_gate  out of rounds and below the gate: the job splits or fails (trainer/handlers.py)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    PUBLISH = "publish"
    MOVE_OUT = "move_out"
    TRAIN_ON = "train_on"
    BELOW_GATE = "below_gate"


def judge(
    missed: int, total: int, rounds_left: int, recall_gate: float, move_out_fraction: float
) -> Verdict:
    """What to do after a round that missed `missed` of `total` facts."""
    if missed == 0 or recall_gate <= 0:  # a gate of 0 publishes what one round reaches
        return Verdict.PUBLISH
    if missed < total and missed <= movable(total, move_out_fraction):
        return Verdict.MOVE_OUT
    if rounds_left > 0:
        return Verdict.TRAIN_ON
    if (total - missed) / total >= recall_gate:
        return Verdict.PUBLISH
    return Verdict.BELOW_GATE


def movable(total: int, move_out_fraction: float) -> int:
    """How many missed facts of `total` may move out: the share, but at least one (0 when
    the per-fact gate is off)."""
    if move_out_fraction <= 0:
        return 0
    return max(1, math.floor(total * move_out_fraction + 1e-9))


@dataclass(frozen=True)
class GateResult:
    """The last round's recall check over a job's facts."""

    recall: float  # over every fact trained
    missed: tuple[str, ...]  # the ids of the facts whose answer was wrong
    verdict: Verdict
