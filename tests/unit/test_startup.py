"""The lines `loramem run` prints while it starts (loramem/startup.py)."""

from __future__ import annotations

import io
from pathlib import Path

from loramem.startup import StartupReport, last_line


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_each_phase_has_a_line_with_the_time_since_the_start_and_its_own_duration() -> None:
    clock, out = Clock(), io.StringIO()
    report = StartupReport(out, clock)
    report.begin("engine", "starting vLLM")
    clock.now += 75
    report.done("engine", "ready at http://e")
    clock.now += 2
    report.ready("http://gw:8000", Path("/logs"))
    assert out.getvalue().splitlines() == [
        "[loramem  0:00] engine   starting vLLM",
        "[loramem  1:15] engine   ready at http://e in 75 s",
        "[loramem  1:17] loramem is ready in 77 s at http://gw:8000 "
        "(API docs: http://gw:8000/docs; logs: /logs). Ctrl-C stops everything.",
    ]


def test_waiting_without_a_terminal_writes_a_line_every_30_s_with_the_last_log_line() -> None:
    clock, out = Clock(), io.StringIO()
    report = StartupReport(out, clock)
    report.begin("engine", "starting")
    for _ in range(65):
        clock.now += 1
        report.waiting("engine", "INFO loading weights")
    assert out.getvalue().splitlines()[1:] == [
        "[loramem  0:30] engine   still starting, 30 s: INFO loading weights",
        "[loramem  1:00] engine   still starting, 60 s: INFO loading weights",
    ]


def test_on_a_terminal_the_waiting_line_is_rewritten_in_place_then_replaced() -> None:
    clock, out = Clock(), Terminal()
    report = StartupReport(out, clock)
    report.begin("engine", "starting")
    clock.now += 1
    report.waiting("engine", "x" * 200)
    clock.now += 1
    report.waiting("engine")
    report.done("engine")
    assert out.getvalue() == (
        "[loramem  0:00] engine   starting\n"
        f"[loramem  0:01] engine   still starting, 1 s: {'x' * 77}..."
        "\r\033[K[loramem  0:02] engine   still starting, 2 s"
        "\r\033[K[loramem  0:02] engine   ready in 2 s\n"
    )


def test_last_line_reads_the_end_of_a_log(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    assert last_line(log) == ""  # not there yet
    log.write_text("a\n" * 5000 + "INFO Started server process\n\n")
    assert last_line(log) == "INFO Started server process"
