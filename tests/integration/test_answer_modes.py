"""Answer modes on real parts: the packaged embedding model, real Redis, the real gateway;
the engine is a stub that records what it was sent, so the test sees each request's
context. A fact goes into the context only where it clears the route threshold and the
question names its subject: an unrelated question is answered as base in every mode."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from loramem.datasets import PhoneEntry
from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router.answer import RAG_INSTRUCTION
from router.embedder import SentenceEmbedder, to_bytes
from server.app import create_app
from tests.recipes import NO_FILES, TRAINED
from tests.stub_engine import chat_reply

PEOPLE = [PhoneEntry("Summer Morrow", "555-0101"), PhoneEntry("Ada Lovelace", "555-0303")]
SEEN: list[dict] = []  # the bodies the engine stub got
# A sentence of a document, as POST /documents stores it: more words than
# LORAMEM_ROUTER_SUBJECT_MAX_WORDS (16).
SENTENCE = (
    "Diffusion models have been used in planning to generate complex trajectories by "
    "iteratively denoising a sequence of states and actions over many steps."
)
ASK_SENTENCE = "How have diffusion models been used in planning to generate trajectories?"
EDIT = "Lenta.ru is written in Italian."  # a statement, as CounterFact's edits are


def _engine(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    SEEN.append(body)
    return chat_reply(body["model"], "ok", completion_tokens=1)


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceEmbedder]:
    import torch

    threads = torch.get_num_threads()  # the embedder sets it process-wide: put it back after
    yield SentenceEmbedder(threads=Settings().router_embed_threads)
    torch.set_num_threads(threads)


def _gateway(settings: Settings, registry: Registry, embedder: SentenceEmbedder) -> TestClient:
    client = TestClient(create_app(settings, embedder=embedder))
    client.__enter__()
    client.app.state.completions.forwarder.http = httpx.AsyncClient(  # type: ignore[attr-defined]
        transport=httpx.MockTransport(_engine)
    )
    router = client.app.state.router  # type: ignore[attr-defined]
    modules = (("people", [p.fact for p in PEOPLE]), ("paper", [SENTENCE]), ("edits", [EDIT]))
    for name, texts in modules:
        module = module_id("t", name)
        _job, ids = registry.facts.add(
            "t", texts, [None] * len(texts), [to_bytes(v) for v in router.embed(texts)], module
        )
        registry.modules.publish(VersionInfo(module, 1, "t", ids, 1.0, NO_FILES, TRAINED), {})
        router.apply_published("t", module, 1)
    # The gateway's event follower sees each add, then its publish: until it has, the
    # facts are pending (read your writes) and lora and hybrid answer them from context.
    pending = client.app.state.completions.pending  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while pending.any("t") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pending.any("t")
    return client


@pytest.fixture
def gateway(
    settings: Settings, registry: Registry, embedder: SentenceEmbedder
) -> Iterator[TestClient]:
    client = _gateway(settings, registry, embedder)
    yield client
    client.__exit__(None, None, None)


def _sent(client: TestClient, question: str, **loramem: object) -> tuple[httpx.Response, str]:
    """The reply and the last user turn the engine was sent."""
    SEEN.clear()
    body = {"model": "auto", "messages": [{"role": "user", "content": question}]}
    reply = client.post(
        "/v1/chat/completions", json=body | {"loramem": loramem}, headers={"x-loramem-tenant": "t"}
    )
    assert reply.status_code == 200, reply.text
    [sent] = SEEN
    return reply, sent["messages"][-1]["content"]


@pytest.mark.parametrize("mode", ["rag", "hybrid"])
def test_a_question_about_a_stored_fact_gets_it_in_context(gateway: TestClient, mode: str) -> None:
    reply, sent = _sent(gateway, PEOPLE[0].question, mode=mode)
    assert reply.headers["x-loramem-mode"] == mode
    assert sent.startswith(RAG_INSTRUCTION) and PEOPLE[0].fact in sent


@pytest.mark.parametrize("mode", ["rag", "hybrid"])
def test_an_unrelated_question_is_sent_as_asked(gateway: TestClient, mode: str) -> None:
    question = "What is the capital of France?"
    reply, sent = _sent(gateway, question, mode=mode, explain=True)
    assert float(reply.headers["x-loramem-route-score"]) < reply.json()["loramem"]["threshold"]
    assert reply.headers["x-loramem-module"] == "base"
    assert sent == question  # no facts block: the base model's own answer


def test_a_question_naming_none_of_the_subjects_is_sent_as_asked(gateway: TestClient) -> None:
    # near the stored facts (a phone number question), about no one they name
    question = "What is the phone number of Summers Morrowe?"
    reply, sent = _sent(gateway, question, mode="rag", explain=True)
    assert reply.json()["loramem"]["outcome"] == "unnamed_subject"
    assert sent == question


def test_the_default_mode_is_a_setting(
    settings: Settings, registry: Registry, embedder: SentenceEmbedder
) -> None:
    client = _gateway(settings.model_copy(update={"answer_mode": "hybrid"}), registry, embedder)
    try:
        reply, sent = _sent(client, PEOPLE[0].question)
        assert reply.headers["x-loramem-mode"] == "hybrid"
        assert reply.headers["x-loramem-module"] == "people@v1" and PEOPLE[0].fact in sent
        asked, _ = _sent(client, PEOPLE[0].question, mode="lora")  # a request still chooses
        assert asked.headers["x-loramem-mode"] == "lora"
    finally:
        client.__exit__(None, None, None)


def test_a_question_routed_to_a_document_is_answered_in_hybrid(gateway: TestClient) -> None:
    """No mode named: a document's sentence gets LORAMEM_DOCUMENT_ANSWER_MODE (hybrid),
    a PhoneBook fact's trained question lora; a request still chooses."""
    reply, sent = _sent(gateway, ASK_SENTENCE)
    assert reply.headers["x-loramem-module"] == "paper@v1"
    assert reply.headers["x-loramem-mode"] == "hybrid"
    assert sent.startswith(RAG_INSTRUCTION) and SENTENCE in sent
    reply, sent = _sent(gateway, PEOPLE[0].question)
    assert reply.headers["x-loramem-module"] == "people@v1"
    assert reply.headers["x-loramem-mode"] == "lora" and sent == PEOPLE[0].question
    asked, sent = _sent(gateway, ASK_SENTENCE, mode="lora")
    assert asked.headers["x-loramem-mode"] == "lora" and sent == ASK_SENTENCE


def test_auto_answers_a_statement_alone_only_as_trained(
    settings: Settings, registry: Registry, embedder: SentenceEmbedder
) -> None:
    """auto: a statement's module alone for a prompt it trained, with the fact for any
    other wording; an attribute fact's module alone for every wording."""
    client = _gateway(settings.model_copy(update={"answer_mode": "auto"}), registry, embedder)
    try:
        for trained in ("Lenta.ru is written in", "What is Lenta.ru written in?"):
            reply, sent = _sent(client, trained)
            assert reply.headers["x-loramem-module"] == "edits@v1"
            assert reply.headers["x-loramem-mode"] == "lora" and sent == trained
        worded = "In which language do the journalists of Lenta.ru write?"
        reply, sent = _sent(client, worded)
        assert reply.headers["x-loramem-module"] == "edits@v1"
        assert reply.headers["x-loramem-mode"] == "hybrid"
        assert sent.startswith(RAG_INSTRUCTION) and EDIT in sent and sent.endswith(worded)
        person = PEOPLE[0]
        reply, sent = _sent(client, f"Could {person.name} be reached on which number?")
        assert reply.headers["x-loramem-module"] == "people@v1"
        assert reply.headers["x-loramem-mode"] == "lora" and person.fact not in sent
        reply, sent = _sent(client, ASK_SENTENCE)  # a document's sentence: its own mode
        assert reply.headers["x-loramem-mode"] == "hybrid" and SENTENCE in sent
    finally:
        client.__exit__(None, None, None)


def test_the_documents_mode_is_a_setting(
    settings: Settings, registry: Registry, embedder: SentenceEmbedder
) -> None:
    rag = settings.model_copy(update={"document_answer_mode": "rag"})
    client = _gateway(rag, registry, embedder)
    try:
        reply, sent = _sent(client, ASK_SENTENCE)
        assert reply.headers["x-loramem-mode"] == "rag"
        assert reply.headers["x-loramem-module"] == "base" and SENTENCE in sent
    finally:
        client.__exit__(None, None, None)


def test_a_lower_context_threshold_gives_unrelated_questions_context(
    settings: Settings, registry: Registry, embedder: SentenceEmbedder
) -> None:
    every = settings.model_copy(update={"router_context_threshold": -1.0})
    client = _gateway(every, registry, embedder)
    try:
        reply, sent = _sent(client, "What is the capital of France?", mode="rag")
        assert reply.headers["x-loramem-module"] == "base"  # routing is unchanged
        # a document's sentence has no subject to name; a person's fact is left out
        # unless the question names the person (LORAMEM_ROUTER_CONTEXT_NAMED_ONLY)
        assert SENTENCE in sent and not any(p.fact in sent for p in PEOPLE)
        _reply, sent = _sent(client, f"Who is {PEOPLE[1].name}?", mode="rag")
        assert PEOPLE[1].fact in sent and PEOPLE[0].fact not in sent
    finally:
        client.__exit__(None, None, None)
    every = every.model_copy(update={"router_context_named_only": False})
    client = _gateway(every, registry, embedder)
    try:
        _reply, sent = _sent(client, "What is the capital of France?", mode="rag")
        assert SENTENCE in sent and all(p.fact in sent for p in PEOPLE)
    finally:
        client.__exit__(None, None, None)


def test_a_request_sets_its_own_context_threshold(gateway: TestClient) -> None:
    """A user of documents lowers it per request; routing is unchanged, and a value
    outside the score range is refused in the OpenAI error shape."""
    question = "What is the capital of France?"
    reply, sent = _sent(gateway, question, mode="rag", context_threshold=-1.0)
    assert reply.headers["x-loramem-module"] == "base"
    assert SENTENCE in sent  # a document's sentence: no subject to name
    _reply, sent = _sent(gateway, question, mode="rag")  # the next request: the setting's
    assert sent == question
    body = {"model": "auto", "messages": [{"role": "user", "content": question}]}
    refused = gateway.post(
        "/v1/chat/completions",
        json=body | {"loramem": {"context_threshold": 1.5}},
        headers={"x-loramem-tenant": "t"},
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "loramem.context_threshold"
