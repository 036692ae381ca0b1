"""The trainer's pause for an engine on its host that is answering: it waits while the
engine reports requests in flight, never past its bound, and asks only local engines."""

from __future__ import annotations

import time

import httpx

from loramem.engine import EngineClient
from trainer.answer_pause import AnswerPause, on_this_host


class FakeEngine:
    """An engine whose GET /load reports `loads` in turn, then 0 (or None: no tracking)."""

    def __init__(self, base_url: str, loads: list[int | None]) -> None:
        self.base_url, self.loads, self.asked = base_url, loads, 0

    def answering(self) -> int | None:
        self.asked += 1
        return self.loads.pop(0) if self.loads else 0


def pause(engines: list[FakeEngine], max_pause_s: float) -> AnswerPause:
    return AnswerPause(engines, max_pause_s)  # type: ignore[arg-type]


def test_it_waits_while_the_local_engine_answers_and_goes_on_once_it_stops() -> None:
    engine = FakeEngine("http://127.0.0.1:8100", [1, 1, 2, 1])
    waited = pause([engine], max_pause_s=5).wait()
    assert 0.1 < waited < 1.0  # three polls of 50 ms, not the 5 s cap
    assert engine.asked == 5


def test_it_never_waits_past_its_limit_nor_the_setting() -> None:
    always = FakeEngine("http://localhost:8100", [1] * 1000)
    started = time.monotonic()
    assert pause([always], max_pause_s=5).wait(limit_s=0.2) < 0.4
    assert pause([always], max_pause_s=0.2).wait(limit_s=10) < 0.4
    assert time.monotonic() - started < 1.0


def test_an_idle_engine_costs_one_question_and_no_wait() -> None:
    idle = FakeEngine("http://127.0.0.1:8100", [0])
    untracked = FakeEngine("http://127.0.0.1:8101", [None])  # started without load tracking
    assert pause([idle, untracked], max_pause_s=5).wait() == 0.0
    assert (idle.asked, untracked.asked) == (1, 1)


def test_only_engines_on_this_host_are_asked_and_zero_turns_it_off() -> None:
    remote = FakeEngine("http://engine-2.internal:8100", [1] * 100)
    assert pause([remote], max_pause_s=5).wait() == 0.0
    assert remote.asked == 0
    local = FakeEngine("http://127.0.0.1:8100", [1] * 100)
    assert pause([local], max_pause_s=0).wait() == 0.0
    assert local.asked == 0
    assert on_this_host("http://[::1]:8100") and not on_this_host("http://10.0.0.5:8100")


def test_the_engine_client_reads_vllms_load_and_survives_an_engine_without_it() -> None:
    replies = iter([httpx.Response(200, json={"server_load": 2}), httpx.Response(404)])
    client = EngineClient("http://engine")
    client.http = httpx.Client(
        base_url="http://engine", transport=httpx.MockTransport(lambda r: next(replies))
    )
    assert client.answering() == 2
    assert client.answering() is None
    client.http = httpx.Client(
        base_url="http://127.0.0.1:9", transport=httpx.HTTPTransport(retries=0)
    )  # nothing listens
    assert client.answering() is None
