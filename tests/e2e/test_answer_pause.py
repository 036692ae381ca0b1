"""The trainer pauses for the engine on its host (trainer/answer_pause.py), on the real
engine and worker: vLLM's GET /load counts the answer in flight, and a job trained while
chats run back to back waits between its steps and still publishes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loramem.engine import EngineClient
from tests.e2e.support import ENGINE_KEY, System

PAUSE_METRIC = "loramem_trainer_answer_pause_seconds_total"


def paused_seconds(system: System) -> float:
    text = httpx.get(f"http://127.0.0.1:{system.settings.trainer_metrics_port}/metrics").text
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == PAUSE_METRIC
    )


def test_vllm_counts_the_answer_in_flight(system: System) -> None:
    engine = EngineClient(system.settings.engine_url, api_key=ENGINE_KEY)
    base = system.settings.base_name
    assert engine.answering() == 0
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(system.chat, "Tell me about lighthouses.", base, max_tokens=48)
        seen = 0
        while not reply.done():
            seen = max(seen, engine.answering() or 0)
            time.sleep(0.02)
    assert reply.result().status_code == 200
    assert seen == 1
    assert engine.answering() == 0


def test_a_job_trained_while_the_engine_answers_pauses_for_it_and_still_publishes(
    system: System,
) -> None:
    before = paused_seconds(system)
    posted = system.post_facts(
        ["The harbour master of Vell is Orla Quist.", "The ferry to Vell leaves at 7:40."],
        tenant="pause",
    )
    stop = threading.Event()

    def chat_back_to_back() -> None:
        while not stop.is_set():
            system.chat("Name a colour.", system.settings.base_name, tenant="pause", max_tokens=16)

    chats = threading.Thread(target=chat_back_to_back)
    chats.start()
    try:
        job = system.wait_job(posted["job_id"], tenant="pause")
    finally:
        stop.set()
        chats.join()
    assert job["status"] == "published"
    assert job["progress"]["recall"] == 1.0
    assert paused_seconds(system) > before
