"""Questions that span modules on real parts: the packaged embedding model, real Redis
(the candidate facts' texts are read from it), the real gateway; the engine is a stub that
answers what a module holding its facts would."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from loramem.datasets import PhoneEntry, phonebook
from loramem.names import module_id, module_name, parse_served_name
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router.embedder import SentenceEmbedder, to_bytes
from router.router import Router
from server.app import create_app
from tests.recipes import TRAINED


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceEmbedder]:
    import torch

    threads = torch.get_num_threads()  # the embedder sets it process-wide: put it back after
    yield SentenceEmbedder(threads=Settings().router_embed_threads)
    torch.set_num_threads(threads)


def publish(registry: Registry, router: Router, name: str, people: list[PhoneEntry]) -> None:
    module, texts = module_id("t", name), [p.fact for p in people]
    vectors = router.embed(texts)
    _job, ids = registry.facts.add(
        "t", texts, [None] * len(texts), [to_bytes(v) for v in vectors], module
    )
    registry.modules.publish(VersionInfo(module, 1, "t", ids, 1.0, "c", TRAINED), {})
    router.apply_published("t", module, 1)


def test_two_people_of_two_modules_span_and_one_person_does_not(
    registry: Registry, embedder: SentenceEmbedder, settings: Settings
) -> None:
    router = Router.from_settings(registry, embedder, settings)
    people = phonebook(settings.data_dir, 32, offset=1200)
    modules = {f"pb{i}": people[8 * i : 8 * i + 8] for i in range(4)}
    for name, held in modules.items():
        publish(registry, router, name, held)
    owner = {p.name: m for m, held in modules.items() for p in held}

    pairings = [(a, b) for i, a in enumerate(modules) for b in list(modules)[i + 1 :]]
    pairs = [(modules[a][row], modules[b][row]) for row in range(8) for a, b in pairings][:40]
    missed = []
    for a, b in pairs:
        question = f"What are the phone numbers of {a.name} and {b.name}?"
        decision = router.with_span("t", router.route("t", "auto", question), question)
        got = [module_name(p.module) for p in decision.span]
        if decision.outcome != "span" or set(got) != {owner[a.name], owner[b.name]}:
            missed.append((question, decision.outcome, got))
    spanned = []
    for person in people:
        decision = router.route("t", "auto", person.question)
        decision = router.with_span("t", decision, person.question)
        assert decision.module == module_id("t", owner[person.name])
        if decision.span:
            spanned.append((person.question, [p.module for p in decision.span]))
    print(f"\n[span] pairs missed: {missed}, singles spanned: {spanned}")
    # The paper's names: 40/40 here. The generated stand-ins share first and last names
    # across people ("Orrin Thistlewood", "Orrin Underhill"), which leaves a few pairs
    # ambiguous (38/40 seen).
    assert len(missed) <= 3
    assert not spanned


ALICE = PhoneEntry("Summer Morrow", "555-0101")
BOB = PhoneEntry("Bruce West", "555-0202")
MODULES = {"left": [ALICE, PhoneEntry("Ada Lovelace", "555-0303")],
           "right": [BOB, PhoneEntry("Grace Hopper", "555-0404")]}  # fmt: skip
PAIR = f"What are the phone numbers of {ALICE.name} and {BOB.name}?"
SEEN: list[dict] = []  # the bodies the engine stub got


def _engine(request: httpx.Request) -> httpx.Response:
    """A module answers with the numbers of the people it holds that the question names:
    what a module that learnt its facts does, so the test sees what each part was asked."""
    body = json.loads(request.content)
    SEEN.append(body)
    name = parse_served_name(body["model"])
    held = MODULES[module_name(name[0])] if name else []
    question = body["messages"][-1]["content"]
    text = " ".join(f"{p.name}: {p.phone}." for p in held if p.name in question) or "?"
    reply = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],  # fmt: skip
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
    return httpx.Response(200, json=reply)


@pytest.fixture
def gateway(
    settings: Settings, registry: Registry, embedder: SentenceEmbedder
) -> Iterator[TestClient]:
    with TestClient(create_app(settings, embedder=embedder)) as client:
        client.app.state.completions.forwarder.http = httpx.AsyncClient(  # type: ignore[attr-defined]
            transport=httpx.MockTransport(_engine)
        )
        for name, people in MODULES.items():
            publish(registry, client.app.state.router, name, people)  # type: ignore[attr-defined]
        yield client


def _chat(client: TestClient, question: str, **loramem: object) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": question}]}
    reply = client.post(
        "/v1/chat/completions", json=body | {"loramem": loramem}, headers={"x-loramem-tenant": "t"}
    )
    assert reply.status_code == 200, reply.text
    return reply


def test_the_gateway_asks_each_module_its_part_and_joins_the_answers(gateway: TestClient) -> None:
    reply = _chat(gateway, PAIR, explain=True)
    text = reply.json()["choices"][0]["message"]["content"]
    assert text == "Summer Morrow: 555-0101.\nBruce West: 555-0202."
    assert reply.headers["x-loramem-outcome"] == "span"
    assert reply.headers["x-loramem-span"] == "left@v1,right@v1"
    told = reply.json()["loramem"]
    assert [(p["module"], p["words"]) for p in told["span"]] == [
        ("left", ["morrow", "summer"]),
        ("right", ["bruce", "west"]),
    ]
    assert reply.json()["usage"]["completion_tokens"] == 8

    streamed = gateway.post(
        "/v1/chat/completions",
        json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": PAIR}]},
        headers={"x-loramem-tenant": "t"},
    )
    chunks = [json.loads(x[6:]) for x in streamed.text.splitlines() if x.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text

    alone = _chat(gateway, PAIR, span="off")  # the chosen module alone: one number
    assert alone.headers["x-loramem-outcome"] == "module"
    assert alone.json()["choices"][0]["message"]["content"].count("555-") == 1
    single = _chat(gateway, ALICE.question)  # one person: no span
    assert single.headers["x-loramem-outcome"] == "module"
    assert "x-loramem-span" not in single.headers


def test_context_puts_the_other_parts_facts_before_the_question(gateway: TestClient) -> None:
    SEEN.clear()
    reply = _chat(gateway, PAIR, span="context")
    assert reply.headers["x-loramem-outcome"] == "span"
    [sent] = SEEN  # one request: the chosen module's
    chosen = module_name(parse_served_name(sent["model"])[0])  # type: ignore[index]
    other = BOB if chosen == "left" else ALICE
    question = sent["messages"][-1]["content"]
    assert other.fact in question and question.endswith(PAIR)
    assert sum(p.fact in question for ps in MODULES.values() for p in ps) == 1


def test_compose_hybrid_gives_each_module_its_own_fact(gateway: TestClient) -> None:
    SEEN.clear()
    reply = _chat(gateway, PAIR, span="compose-hybrid")
    assert reply.headers["x-loramem-outcome"] == "span"
    assert reply.json()["choices"][0]["message"]["content"].count("555-") == 2
    by_module = {module_name(parse_served_name(b["model"])[0]): b for b in SEEN}  # type: ignore[index]
    for name, person in (("left", ALICE), ("right", BOB)):
        asked = by_module[name]["messages"][-1]["content"]
        facts = [p.fact for ps in MODULES.values() for p in ps if p.fact in asked]
        assert facts == [person.fact]  # its own part's fact, no other
        assert asked.endswith(f"What are the phone numbers of {person.name}?")
