"""What `loramem run` tells a person while it starts: one line per phase, each with the time
since the start, so a first start (minutes of converting and compiling) never looks stuck."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

WAIT_LINE_EVERY_S = 30.0  # without a terminal, a line this often while a phase waits


class StartupReport:
    def __init__(
        self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = clock()
        self._phase_started: dict[str, float] = {}
        self._last_wait_line = 0.0
        self._rewriting = False  # a waiting line is on screen, to be overwritten
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self, phase: str, text: str) -> None:
        self._write(f"{self._stamp()} {phase:<8} {text}", final=True)

    def begin(self, phase: str, text: str) -> None:
        """A phase starts; `done` reports how long it took."""
        self._phase_started[phase] = self.clock()
        self._last_wait_line = self.clock()
        self.line(phase, text)

    def waiting(self, phase: str, detail: str = "") -> None:
        """Called while a phase waits: on a terminal the line is rewritten in place; in a
        log (no terminal) one line every WAIT_LINE_EVERY_S."""
        now = self.clock()
        if not self.tty and now - self._last_wait_line < WAIT_LINE_EVERY_S:
            return
        self._last_wait_line = now
        text = f"still starting, {self.elapsed(phase):.0f} s"
        if detail:
            text += f": {_shorten(detail, 80)}"
        self._write(f"{self._stamp()} {phase:<8} {text}", final=not self.tty)

    def done(self, phase: str, text: str = "ready") -> None:
        self.line(phase, f"{text} in {self.elapsed(phase):.0f} s")

    def elapsed(self, phase: str) -> float:
        return self.clock() - self._phase_started.get(phase, self.started)

    def ready(self, url: str, logs: Path) -> None:
        """The last line: where to go, where the docs are, how to stop."""
        total = self.clock() - self.started
        self._write(
            f"{self._stamp()} loramem is ready in {total:.0f} s at {url} "
            f"(API docs: {url}/docs; logs: {logs}). Ctrl-C stops everything.",
            final=True,
        )

    def _stamp(self) -> str:
        minutes, seconds = divmod(round(self.clock() - self.started), 60)
        return f"[loramem {minutes:2d}:{seconds:02d}]"

    def _write(self, text: str, final: bool) -> None:
        if self._rewriting:
            self.stream.write("\r\033[K")  # clear the waiting line before writing over it
        self.stream.write(text + ("\n" if final else ""))
        self.stream.flush()
        self._rewriting = not final


def last_line(path: Path, max_bytes: int = 4096) -> str:
    """The last non-empty line of a log file (what the engine is doing now), or ''."""
    lines = last_lines(path, 1, max_bytes)
    return lines[0].strip() if lines else ""


def last_lines(path: Path, count: int, max_bytes: int = 16384) -> list[str]:
    """The last `count` non-empty lines of a log file (why a child died: the OOM, the port
    in use, the traceback), or [] when it is missing."""
    try:
        with path.open("rb") as log:
            log.seek(0, 2)
            log.seek(max(0, log.tell() - max_bytes))
            lines = log.read().decode("utf-8", "replace").split("\n")
    except OSError:
        return []
    # A progress bar rewrites its line with carriage returns: keep what it said last.
    kept = [x.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for x in lines]
    return [x for x in kept if x.strip()][-count:]


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
