"""The whole path on real parts: vLLM engine, gateway, trainer worker, Redis, PEFT."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx

from loramem.datasets import phonebook
from loramem.names import module_id
from loramem.registry import Registry
from tests.e2e.support import E2E_REDIS_URL, System
from tests.e2e.support import answer as _answer


def test_posted_facts_answer_chat_requests(system: System) -> None:
    people = phonebook(system.settings.data_dir, 10)
    posted = time.monotonic()
    accepted = system.post_facts([p.fact for p in people])
    job = system.wait_job(accepted["job_id"])
    print(
        f"\n[e2e] 10 facts POST -> published in {time.monotonic() - posted:.1f} s "
        f"(steps {job['progress'].get('step')}, recall {job['progress'].get('recall')})"
    )
    assert job["version"] == 1 and job["progress"]["recall"] >= 0.95

    routed_hits, base_hits = 0, 0
    for person in people:
        reply = system.chat(person.question)
        assert reply.headers["x-loramem-module"] == f"{accepted['module']}@v1"
        routed_hits += person.phone in _answer(reply)
        base_reply = system.chat(person.question, model=system.settings.base_name)
        assert base_reply.headers["x-loramem-module"] == "base"
        base_hits += person.phone in _answer(base_reply)
    print(f"[e2e] exact-match recall model=auto {routed_hits}/10, base {base_hits}/10")
    assert routed_hits >= 9
    assert base_hits <= 1

    unrelated = system.chat("What is the capital of France?")
    assert unrelated.headers["x-loramem-module"] == "base"
    assert "paris" in _answer(unrelated).lower()

    models = [
        m["id"]
        for m in system.gateway.get("/v1/models", headers={"x-loramem-tenant": "e2e"}).json()[
            "data"
        ]
    ]
    assert accepted["module"] in models
    modules = system.gateway.get("/modules", headers={"x-loramem-tenant": "e2e"}).json()
    served = {m["name"]: m["served_name"] for m in modules}
    assert served[accepted["module"]] == f"{accepted['module']}@v1"


def test_streaming_returns_the_same_text_as_unary(system: System) -> None:
    question = phonebook(system.settings.data_dir, 1)[0].question
    unary = _answer(system.chat(question))
    with system.gateway.stream(
        "POST",
        "/v1/chat/completions",
        headers={"x-loramem-tenant": "e2e"},
        json={
            "model": "auto",
            "stream": True,
            "temperature": 0,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": question}],
        },
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["x-loramem-module"] != "base"
        pieces = []
        for line in reply.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                pieces.append(delta or "")
    assert "".join(pieces) == unary


def test_unknown_model_is_rejected_by_the_real_gateway(system: System) -> None:
    reply = system.chat("hello", model="no-such-module")
    assert reply.status_code == 404 and reply.json()["error"]["param"] == "model"


def test_a_worker_killed_during_training_loses_no_job(system: System) -> None:
    people = phonebook(system.settings.data_dir, 6, offset=100)
    accepted = system.post_facts([p.fact for p in people], module="crash-test")
    system.wait_job(accepted["job_id"], until={"training"}, min_step=1)
    worker = system.processes["worker"]
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    system.start_worker()  # a new consumer: it reclaims the dead one's pending entry
    job = system.wait_job(accepted["job_id"])
    assert job["status"] == "published" and job["version"] == 1
    reply = system.chat(people[0].question, model="crash-test")
    assert people[0].phone in _answer(reply)


def test_metrics_count_module_hits(system: System) -> None:
    text = system.gateway.get("/metrics").text
    assert 'loramem_requests_total{mode="lora",module="base",outcome="base"}' in text
    assert 'outcome="module"' in text


def test_edits_and_deletes_switch_versions_without_failed_requests(system: System) -> None:
    people = phonebook(system.settings.data_dir, 3, offset=400)
    accepted = system.post_facts([p.fact for p in people], module="lifecycle")
    system.wait_job(accepted["job_id"])
    edited_id, deleted_id = accepted["fact_ids"][0], accepted["fact_ids"][1]
    new_phone = "111-222-3333"

    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:  # requests on the module while its versions switch
        with httpx.Client(base_url="http://127.0.0.1:18000", timeout=120) as client:
            while not stop.is_set():
                question = {"role": "user", "content": people[2].question}
                reply = client.post(
                    "/v1/chat/completions",
                    headers={"x-loramem-tenant": "e2e"},
                    json={"model": "lifecycle", "max_tokens": 8, "messages": [question]},
                )
                statuses.append(reply.status_code)
                stop.wait(0.2)  # steady traffic that still leaves the trainer some CPU

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        new_text = f"The phone number of {people[0].name} is {new_phone}."
        edit = system.gateway.put(
            f"/facts/{edited_id}", headers={"x-loramem-tenant": "e2e"}, json={"text": new_text}
        )
        assert edit.status_code == 202
        assert system.wait_job(edit.json()["job_id"])["version"] == 2
        delete = system.gateway.delete(f"/facts/{deleted_id}", headers={"x-loramem-tenant": "e2e"})
        assert delete.status_code == 202
        assert system.wait_job(delete.json()["job_id"])["version"] == 3
    finally:
        stop.set()
        sender.join()
    assert statuses and set(statuses) == {200}, statuses

    edited = system.chat(people[0].question, model="lifecycle")
    assert edited.headers["x-loramem-module"] == "lifecycle@v3"
    assert new_phone in _answer(edited) and people[0].phone not in _answer(edited)
    for model in ("lifecycle", "auto"):
        assert people[1].phone not in _answer(system.chat(people[1].question, model=model))
    assert people[2].phone in _answer(system.chat(people[2].question, model="lifecycle"))


def test_rag_answers_without_a_module_and_hybrid_uses_both(system: System) -> None:
    person = phonebook(system.settings.data_dir, 1, offset=800)[0]
    accepted = system.post_facts([person.fact], tenant="modes")
    system.wait_job(accepted["job_id"], tenant="modes")
    _assert_routable_within_a_second_of_publish(system, accepted["module"], "modes")
    rag = system.chat(person.question, tenant="modes", loramem={"mode": "rag"})
    assert rag.headers["x-loramem-module"] == "base" and rag.headers["x-loramem-mode"] == "rag"
    assert person.phone in _answer(rag)
    hybrid = system.chat(person.question, tenant="modes", loramem={"mode": "hybrid"})
    assert hybrid.headers["x-loramem-module"].endswith("@v1")
    assert hybrid.headers["x-loramem-mode"] == "hybrid"
    assert person.phone in _answer(hybrid)
    # No mode named (auto, the default): an attribute fact's module answers alone, in
    # the wording it trained and in another (a statement's would get hybrid for that;
    # how often another wording is answered right is the evals' figure, not this test's).
    unasked = system.chat(person.question, tenant="modes")
    assert unasked.headers["x-loramem-mode"] == "lora" and person.phone in _answer(unasked)
    worded = system.chat(f"Could you look up the number of {person.name} for me?", tenant="modes")
    assert worded.headers["x-loramem-module"].endswith("@v1")
    assert worded.headers["x-loramem-mode"] == "lora"
    # A question about nothing stored: no fact clears the threshold, so none goes into
    # the context and rag answers exactly as the base model does.
    unrelated = "What is the capital of France?"
    # (a few tokens: CPU greedy decoding may part at a near-tie far into an answer)
    base = system.chat(unrelated, model=system.settings.base_name, tenant="modes", max_tokens=8)
    plain = system.chat(unrelated, tenant="modes", loramem={"mode": "rag"}, max_tokens=8)
    assert plain.headers["x-loramem-module"] == "base"
    assert plain.json()["usage"]["prompt_tokens"] == base.json()["usage"]["prompt_tokens"]
    assert _answer(plain) == _answer(base)


def test_a_question_about_a_document_is_answered_in_hybrid_unasked(system: System) -> None:
    """POST /documents stores sentences longer than LORAMEM_ROUTER_SUBJECT_MAX_WORDS: a
    question routed to one is answered by its module with the sentence in context."""
    text = (
        "The Lindqvist reactor at Harrow Point was cooled by a loop of molten tin salts "
        "that its designers pumped through ceramic channels beneath the core. It was shut "
        "down in the winter of 1987 after inspectors found cracks in three of the channels."
    )
    reply = system.gateway.post(
        "/documents",
        # Gate 0: a document's sentence need not be recalled word for word to be served.
        json={"text": text, "training": {"recall_gate": 0.0, "max_steps": 8}},
        headers={"x-loramem-tenant": "docs"},
    )
    assert reply.status_code == 202, reply.text
    accepted = reply.json()
    system.wait_job(accepted["job_id"], tenant="docs")
    _assert_routable_within_a_second_of_publish(system, accepted["module"], "docs")
    question = "How was the Lindqvist reactor at Harrow Point cooled beneath its core?"
    unasked = system.chat(question, tenant="docs", max_tokens=8)
    assert unasked.headers["x-loramem-module"] == f"{accepted['module']}@v1"
    assert unasked.headers["x-loramem-mode"] == "hybrid"
    lora = system.chat(question, tenant="docs", max_tokens=8, loramem={"mode": "lora"})
    assert lora.headers["x-loramem-mode"] == "lora"
    # the sentences went into the context: a longer prompt than the question alone
    assert unasked.json()["usage"]["prompt_tokens"] > lora.json()["usage"]["prompt_tokens"] + 20


def _assert_routable_within_a_second_of_publish(system: System, module: str, tenant: str) -> None:
    """The gateway lists the module (so routes to it) within 1 s of the publish event."""
    events = Registry.from_url(E2E_REDIS_URL).modules.events_after("0-0", block_ms=10)
    module_ = module_id(tenant, module)  # events name modules by id
    published_ms = max(int(i.split("-")[0]) for i, e in events if e.get("module") == module_)
    while True:
        listed = system.gateway.get("/v1/models", headers={"x-loramem-tenant": tenant}).json()
        if module in {m["id"] for m in listed["data"]}:
            break
        assert time.time() * 1000 - published_ms < 1000, "routing did not update within 1 s"
        time.sleep(0.02)
    print(f"\n[e2e] seen routable {time.time() * 1000 - published_ms:.0f} ms after the publish")
