"""`loramem eval span`'s questions, scores and requests, against a fake gateway."""

from __future__ import annotations

import json

import httpx
import pytest

from evaluation.client import Answer, EvalClient
from evaluation.span import ARMS, Question, _answerer, chosen_arms, questions, score
from loramem.datasets import PhoneEntry

PEOPLE = {
    "m0": [PhoneEntry("Ann Ash", "111-1111"), PhoneEntry("Bo Birch", "222-2222")],
    "m1": [PhoneEntry("Cy Cedar", "333-3333"), PhoneEntry("Di Dogwood", "444-4444")],
    "m2": [PhoneEntry("Ed Elm", "555-5555"), PhoneEntry("Fay Fir", "666-6666")],
}


def test_pairs_take_every_pairing_of_two_modules_row_by_row() -> None:
    singles, pairs = questions(PEOPLE, 4)
    assert [s.text for s in singles][:2] == [
        "What is the phone number of Ann Ash?",
        "What is the phone number of Bo Birch?",
    ]
    assert len(singles) == 6
    assert [(p.owners, p.phones) for p in pairs] == [
        (["m0", "m1"], ["111-1111", "333-3333"]),
        (["m0", "m2"], ["111-1111", "555-5555"]),
        (["m1", "m2"], ["333-3333", "555-5555"]),
        (["m0", "m1"], ["222-2222", "444-4444"]),  # row 2 after every pairing of row 1
    ]
    assert pairs[0].text == "What are the phone numbers of Ann Ash and Cy Cedar?"
    assert pairs[0].halves == [
        "What is the phone number of Ann Ash?",
        "What is the phone number of Cy Cedar?",
    ]


def test_an_answer_counts_only_with_every_number_as_written() -> None:
    _singles, pairs = questions(PEOPLE, 3)
    answers = [
        Answer("111-1111\n333-3333", "m0@v1", outcome="span"),
        Answer("111-1111, and 5555555", "m0@v1", outcome="module"),  # digits, not as written
        Answer("", "", error="refused"),
    ]
    result = score(pairs, answers)
    assert (result["asked"], result["all"], result["numbers"]) == (3, 1, 3)
    assert result["share"] == pytest.approx(1 / 3)
    assert (result["spanned"], result["request_errors"]) == (1, 1)
    assert [r["found"] for r in result["answers"]] == [2, 1, 0]
    assert result["answers"][2]["answer"] == "refused"


def test_arms_come_in_the_report_order_and_merged_only_once_built() -> None:
    assert [a.name for a in chosen_arms("oracle,off,merged", None)] == ["off", "oracle"]
    assert [a.name for a in chosen_arms("oracle,merged", "mx")] == ["merged", "oracle"]
    with pytest.raises(ValueError, match="unknown arms"):
        chosen_arms("off,nonsense", None)


def recording_client() -> tuple[EvalClient, list[dict]]:
    bodies: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        reply = {"choices": [{"message": {"content": f"said {body['model']}"}}]}
        return httpx.Response(200, json=reply, headers={"x-loramem-outcome": "module"})

    return EvalClient("http://gw", "t", transport=httpx.MockTransport(answer)), bodies


@pytest.mark.parametrize(
    ("arm", "model", "options"),
    [
        ("off", "auto", {"mode": "lora", "span": "off"}),
        ("compose", "auto", {"mode": "lora", "span": "compose", "span_question": "trained"}),
        ("wording", "auto", {"mode": "lora", "span": "compose", "span_question": "wording"}),
        ("rag", "auto", {"mode": "rag"}),
        ("hybrid", "auto", {"mode": "hybrid", "span": "off"}),
        ("merged", "merged-1", {"mode": "lora"}),
    ],
)
def test_each_arm_asks_the_whole_question_with_its_options(
    arm: str, model: str, options: dict
) -> None:
    client, bodies = recording_client()
    (chosen,) = [a for a in ARMS if a.name == arm]
    question = Question("What are the phone numbers of A and B?", ["1", "2"], ["m0", "m1"], [])
    _answerer(client, chosen, "merged-1", max_tokens=64)(question)
    (body,) = bodies
    assert body["model"] == model and body["loramem"] == options and body["max_tokens"] == 64
    assert body["messages"][-1]["content"] == question.text


def test_the_oracle_asks_each_half_of_its_own_module_and_joins_the_answers() -> None:
    client, bodies = recording_client()
    (oracle,) = [a for a in ARMS if a.name == "oracle"]
    _singles, (pair, *_rest) = questions(PEOPLE, 1)
    answer = _answerer(client, oracle, None, max_tokens=64)(pair)
    assert [(b["model"], b["messages"][-1]["content"]) for b in bodies] == list(
        zip(pair.owners, pair.halves, strict=True)
    )
    assert answer.text == "said m0\nsaid m1" and answer.outcome == "oracle"
