"""Questions that span modules on real parts: the packaged embedding model, real Redis
(the candidate facts' texts are read from it), the real gateway; the engine is a stub that
answers what a module holding its facts would."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from loramem.datasets import PhoneEntry, phonebook
from loramem.names import module_id, module_name, parse_served_name
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router.answer import RAG_INSTRUCTION
from router.embedder import SentenceEmbedder, to_bytes
from router.router import Router
from server.app import create_app
from tests.recipes import NO_FILES, TRAINED
from tests.services import on_throwaway_redis, throwaway_redis_server
from tests.stub_engine import chat_reply


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
    registry.modules.publish(VersionInfo(module, 1, "t", ids, 1.0, NO_FILES, TRAINED), {})
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
        got = {module_name(p.module): p.question for p in decision.span}
        # each module is asked what the oracle asks it: its own person's trained question
        if got != {owner[a.name]: a.question, owner[b.name]: b.question}:
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
    return chat_reply(body["model"], text)


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


def test_hybrid_composes_a_spanning_question_and_gives_a_single_one_its_facts(
    gateway: TestClient,
) -> None:
    SEEN.clear()
    reply = _chat(gateway, PAIR, mode="hybrid")
    assert reply.headers["x-loramem-outcome"] == "span"
    assert reply.headers["x-loramem-mode"] == "hybrid"
    text = reply.json()["choices"][0]["message"]["content"]
    assert text == "Summer Morrow: 555-0101.\nBruce West: 555-0202."
    assert len(SEEN) == 2 and not any(RAG_INSTRUCTION in b["messages"][-1]["content"] for b in SEEN)
    SEEN.clear()
    single = _chat(gateway, ALICE.question, mode="hybrid")
    assert single.headers["x-loramem-outcome"] == "module"
    [sent] = SEEN
    assert sent["messages"][-1]["content"].startswith(RAG_INSTRUCTION)
    assert ALICE.fact in sent["messages"][-1]["content"]


def test_context_puts_the_other_parts_facts_before_the_question(gateway: TestClient) -> None:
    SEEN.clear()
    # lora: hybrid (and auto's choice for a wording no module trained) puts every
    # trusted fact in context anyway
    reply = _chat(gateway, PAIR, span="context", mode="lora")
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
        assert asked.endswith(person.question)  # the question its fact was trained on


def test_each_part_is_asked_its_trained_question_or_the_users_wording(
    gateway: TestClient,
) -> None:
    trained = {"left": ALICE.question, "right": BOB.question}
    wording = {
        "left": f"What are the phone numbers of {ALICE.name}?",
        "right": f"What are the phone numbers of {BOB.name}?",
    }
    for form, asked in ((None, trained), ("trained", trained), ("wording", wording)):
        SEEN.clear()
        reply = _chat(gateway, PAIR, **({"span_question": form} if form else {}))
        assert reply.headers["x-loramem-outcome"] == "span"
        assert reply.json()["choices"][0]["message"]["content"].count("555-") == 2
        sent = {module_name(parse_served_name(b["model"])[0]): b for b in SEEN}  # type: ignore[index]
        assert {m: b["messages"][-1]["content"] for m, b in sent.items()} == asked
    refused = gateway.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": SEEN[0]["messages"], "loramem": {"span_question": "x"}},
        headers={"x-loramem-tenant": "t"},
    )
    assert refused.status_code == 400, refused.text
    assert "span_question" in refused.json()["error"]["param"]


@pytest.mark.parametrize("kept", [True, False], ids=["texts kept", "none kept"])
def test_while_redis_is_away_the_span_check_runs_on_the_texts_the_router_kept(
    kept: bool, settings: Settings, embedder: SentenceEmbedder
) -> None:
    """Chat keeps answering while Redis is paused. The span check needs the candidate
    facts' texts: the router kept them when it indexed their versions, so the question
    still spans and both numbers come back; with none kept (and Redis away) the chosen
    module answers alone, as for a question that spans nothing."""
    with throwaway_redis_server() as (server, url):
        cache = 100 if kept else 0
        settings = on_throwaway_redis(settings, url, router_text_cache_facts=cache)
        registry = Registry.from_settings(settings)
        with TestClient(create_app(settings, embedder=embedder)) as client:
            client.app.state.completions.forwarder.http = httpx.AsyncClient(  # type: ignore[attr-defined]
                transport=httpx.MockTransport(_engine)
            )
            for name, people in MODULES.items():
                publish(registry, client.app.state.router, name, people)  # type: ignore[attr-defined]
            assert _chat(client, PAIR).headers["x-loramem-outcome"] == "span"  # Redis up
            server.send_signal(signal.SIGSTOP)
            try:
                paused = [_chat(client, PAIR) for _ in range(2)]
            finally:
                server.send_signal(signal.SIGCONT)
    for reply in paused:
        numbers = reply.json()["choices"][0]["message"]["content"].count("555-")
        if kept:
            assert reply.headers["x-loramem-outcome"] == "span" and numbers == 2
        else:
            assert reply.headers["x-loramem-outcome"] == "module" and numbers == 1
