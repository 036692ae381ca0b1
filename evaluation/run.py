"""What every experiment shares: its own tenant and module names, results, report, plots."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from evaluation.client import EvalClient
from loramem.settings import Settings

log = logging.getLogger("loramem.eval")


@dataclass
class EvalRun:
    experiment: str
    gateway: str
    out: Path
    settings: Settings
    flags: dict[str, Any]
    concurrency: int = 8
    transport: httpx.BaseTransport | None = None  # unit tests: a fake gateway
    # A run id keeps tenants and module names apart from earlier runs on the same system.
    run_id: str = field(default_factory=lambda: time.strftime("%m%d%H%M%S"))
    started: float = field(default_factory=time.monotonic)
    skipped: list[dict[str, str]] = field(default_factory=list)
    _clients: dict[str, EvalClient] = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The run as a command line with every flag spelled out (defaults included)."""
        words = []
        for key, value in self.flags.items():
            if key == "gateway" or value is None or value is False:
                continue
            words.append(f"--{key.replace('_', '-')}" + ("" if value is True else f" {value}"))
        return f"loramem eval {self.experiment} {' '.join(words)}"

    def tenant(self, part: str = "") -> str:
        return "-".join(p for p in ("eval", self.experiment, part, self.run_id) if p)

    def module(self, part: str) -> str:
        return f"{part}-{self.run_id}".lower()

    def client(self, part: str = "") -> EvalClient:
        tenant = self.tenant(part)
        if tenant not in self._clients:
            self._clients[tenant] = EvalClient(
                self.gateway,
                tenant,
                self.concurrency,
                api_key=self.settings.api_key,
                transport=self.transport,
            )
        return self._clients[tenant]

    def skip(self, arm: str, reason: str) -> None:
        log.warning("skipping %s: %s", arm, reason)
        print(f"[eval {self.experiment}] skipping {arm}: {reason}", file=sys.stderr)
        self.skipped.append({"arm": arm, "reason": reason})

    def finish(self, results: dict[str, Any], report: str, figures: dict[str, Any]) -> Path:
        """Write results.json, report.md and one PNG per figure into the output folder."""
        self.out.mkdir(parents=True, exist_ok=True)
        document = {
            "experiment": self.experiment,
            "command": self.command,
            "flags": self.flags,
            "gateway": self.gateway,
            "tenant": self.tenant(),
            "run_id": self.run_id,
            "seconds": round(time.monotonic() - self.started, 1),
            "skipped": self.skipped,
            **results,
        }
        path = self.out / "results.json"
        path.write_text(json.dumps(document, indent=2))
        skipped = "".join(f"\n- skipped **{s['arm']}**: {s['reason']}" for s in self.skipped)
        (self.out / "report.md").write_text(
            f"# loramem eval {self.experiment}\n\n`{self.command}`\n\n{report}\n{skipped}\n"
        )
        for name, figure in figures.items():
            figure.savefig(self.out / f"{name}.png", dpi=80, bbox_inches="tight")
        for client in self._clients.values():
            client.close()
        print(f"results in {self.out}")
        return path


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats to three places, None as n/a."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
