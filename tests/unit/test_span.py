"""Questions that span modules: the decision (router/span.py) and the composed answer
(server/span.py)."""

from __future__ import annotations

import asyncio
import json

from router.index import Hit
from router.lexical import words
from router.router import RouteDecision
from router.span import SpanPart, find_span, sub_question, trained_question
from server import span

TEXTS = {
    "a": "The phone number of Summer Morrow is 555-0101.",
    "b": "The phone number of Bruce West is 555-0202.",
    "c": "The phone number of Summer Hale is 555-0303.",
    "d": "The phone number of Ada Lovelace is 555-0404.",
}
PAIR = "What are the phone numbers of Summer Morrow and Bruce West?"


def hits(*scored: tuple[str, str, float]) -> list[Hit]:
    return [Hit(fact, module, score) for fact, module, score in scored]


def test_two_people_held_by_two_modules_span_both() -> None:
    found = hits(("a", "m1", 0.72), ("b", "m2", 0.66), ("c", "m1", 0.55), ("d", "m3", 0.52))
    parts = find_span(PAIR, found, TEXTS, "m1", 0.55, 0.2, 3)
    assert [(p.module, p.fact_id, p.words) for p in parts] == [
        ("m1", "a", ("morrow", "summer")),
        ("m2", "b", ("bruce", "west")),
    ]
    # each module is asked the question its fact was trained and gated on
    assert [p.question for p in parts] == [
        "What is the phone number of Summer Morrow?",
        "What is the phone number of Bruce West?",
    ]


def test_a_one_person_question_does_not_span_look_alikes_of_other_modules() -> None:
    """The neighbours of other modules score close but name nothing the question names
    beyond what the chosen fact names ("summer" is Summer Morrow's too)."""
    found = hits(("a", "m1", 0.86), ("c", "m2", 0.70), ("b", "m3", 0.66), ("d", "m4", 0.6))
    question = "What is the phone number of Summer Morrow?"
    assert find_span(question, found, TEXTS, "m1", 0.55, 0.2, 3) == []


def test_words_most_top_facts_hold_name_nothing() -> None:
    """ "phone" and "number" are held by every look-alike fact: not a name."""
    texts = {"a": "The phone number of Ada is 1.", "b": "Phone number: 2.", "c": "number phone"}
    found = hits(("a", "m1", 0.8), ("b", "m2", 0.75), ("c", "m2", 0.7))
    assert find_span("phone number of Ada", found, texts, "m1", 0.55, 0.2, 3) == []


def test_a_part_must_clear_the_threshold_and_lie_within_the_margin() -> None:
    low = hits(("a", "m1", 0.72), ("b", "m2", 0.50))
    assert find_span(PAIR, low, TEXTS, "m1", 0.55, 0.2, 3) == []
    far = hits(("a", "m1", 0.90), ("b", "m2", 0.65))
    assert find_span(PAIR, far, TEXTS, "m1", 0.55, 0.2, 3) == []
    assert len(find_span(PAIR, far, TEXTS, "m1", 0.55, 0.3, 3)) == 2


def test_parts_are_capped_and_a_second_fact_of_the_chosen_module_is_no_part() -> None:
    question = "Phone numbers of Summer Morrow, Bruce West and Ada Lovelace?"
    found = hits(("a", "m1", 0.7), ("b", "m2", 0.68), ("d", "m3", 0.66))
    assert [p.module for p in find_span(question, found, TEXTS, "m1", 0.55, 0.2, 3)] == [
        "m1",
        "m2",
        "m3",
    ]
    assert len(find_span(question, found, TEXTS, "m1", 0.55, 0.2, 2)) == 2
    same = hits(("a", "m1", 0.7), ("b", "m1", 0.68))  # both people in the chosen module
    assert find_span(PAIR, same, TEXTS, "m1", 0.55, 0.2, 3) == []


def test_facts_without_text_are_skipped() -> None:
    found = hits(("a", "m1", 0.72), ("gone", "m2", 0.7))
    assert find_span(PAIR, found, TEXTS, "m1", 0.55, 0.2, 3) == []


def parts() -> list[SpanPart]:
    return [
        SpanPart("m1", "a", 0.7, ("morrow", "summer")),
        SpanPart("m2", "b", 0.66, ("bruce", "west")),
    ]


def test_each_part_is_asked_without_the_other_parts_names() -> None:
    first, second = parts()
    assert sub_question(PAIR, first, parts()) == "What are the phone numbers of Summer Morrow?"
    assert sub_question(PAIR, second, parts()) == "What are the phone numbers of Bruce West?"
    listed = "Give me the numbers for Bruce West, Summer Morrow."
    assert sub_question(listed, second, parts()) == "Give me the numbers for Bruce West."
    assert sub_question("Summer Morrow's and Bruce West's numbers?", first, parts()) == (
        "Summer Morrow's numbers?"
    )


def test_the_trained_question_only_where_the_query_asks_what_the_fact_states() -> None:
    own, names = {"summer", "morrow"}, {"summer", "morrow", "bruce", "west"}
    fact = TEXTS["a"]
    asked = words("Give me Summer Morrow's and Bruce West's phone") - {"me", "give", "s"}
    assert trained_question(fact, asked, own, names) == (
        "What is the phone number of Summer Morrow?"
    )
    emails = words("emails of Summer Morrow and Bruce West")  # not what the fact says
    assert trained_question(fact, emails, own, names) == ""
    manager = "The manager of Bruce West is Summer Morrow."  # names them as its value
    assert trained_question(manager, words("managers of Summer Morrow"), own, names) == ""
    edit = "Lenta.ru is written in Italian"  # another shape: its opening is the prompt
    asked = words("Which language are Lenta.ru and Le Monde written in")
    lenta = {"lenta", "ru"}
    assert trained_question(edit, asked, lenta, lenta) == "Lenta.ru is written in"
    assert trained_question(edit, words("Lenta.ru and Le Monde?"), lenta, lenta) == ""
    assert trained_question(edit, asked, set(), lenta) == ""  # names nothing of it


def test_a_part_falls_back_to_the_users_wording() -> None:
    first, second = parts()
    trained = [first, SpanPart("m2", "b", 0.66, ("bruce", "west"), "Who is Bruce West?")]
    assert span_question(trained, True) == [
        "What are the phone numbers of Summer Morrow?",  # no trained question: the wording
        "Who is Bruce West?",
    ]
    assert span_question(trained, False)[1] == "What are the phone numbers of Bruce West?"


def span_question(found: list[SpanPart], trained: bool) -> list[str]:
    ruling = RouteDecision("t~m1@v1", "t~m1", "span", span=found, span_targets=["a", "b"])
    body = {"model": "x", "messages": [{"role": "user", "content": PAIR}]}
    return [b["messages"][0]["content"] for b in span.part_bodies(ruling, body, PAIR, trained)]


def decision() -> RouteDecision:
    return RouteDecision(
        "t~m1@v1", "t~m1", "span", 0.7, span=parts(), span_targets=["t~m1@v1", "t~m2@v3"]
    )


def test_part_bodies_ask_each_module_its_sub_question_unstreamed() -> None:
    body = {
        "model": "t~m1@v1",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PAIR}],
    }
    first, second = span.part_bodies(decision(), body, PAIR)
    assert (first["model"], second["model"]) == ("t~m1@v1", "t~m2@v3")
    assert first["stream"] is False and "stream_options" not in first
    assert first["messages"][0] == body["messages"][0]
    assert second["messages"][1]["content"] == "What are the phone numbers of Bruce West?"
    assert body["messages"][1]["content"] == PAIR  # the request itself is left as it was
    text = span.part_bodies(decision(), {"model": "x", "prompt": PAIR}, PAIR)
    assert text[0]["prompt"] == "What are the phone numbers of Summer Morrow?"
    assert not span.composable({"prompt": ["a", "b"]})
    assert not span.composable({"messages": [], "n": 2})


def answer(text: str, tokens: int, finish: str = "stop") -> dict:
    return {
        "id": "x",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ],  # fmt: skip
        "usage": {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens},
    }


def test_answers_are_joined_one_per_line_with_usage_summed() -> None:
    joined = span.join([answer(" It is 555-0101. ", 5), answer("It is 555-0202.", 6, "length")])
    choice = joined["choices"][0]
    assert choice["message"]["content"] == "It is 555-0101.\nIt is 555-0202."
    assert choice["finish_reason"] == "length"
    assert joined["usage"] == {"prompt_tokens": 20, "completion_tokens": 11, "total_tokens": 31}


def test_a_composed_answer_streams_as_openai_chunks() -> None:
    async def collect() -> list[bytes]:
        return [line async for line in span.as_stream(span.join([answer("A", 1), answer("B", 1)]))]

    lines = asyncio.run(collect())
    events = [json.loads(x[6:]) for x in lines if x.startswith(b"data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == "A\nB"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert lines[-2:] == [b"data: [DONE]\n", b"\n"]
    assert all(x.endswith(b"\n") for x in lines)
