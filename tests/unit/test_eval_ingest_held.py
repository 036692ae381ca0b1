"""`loramem eval ingest-held` against a fake gateway: the fill posts in batches and cancels
(or waits for a job that finished first), the timed add is reported against the baseline
row, and the JSON, markdown and plot are written. The real path: tests/e2e/test_eval.py."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import httpx

from evaluation.ingest_held import ingest_held
from evaluation.run import EvalRun
from loramem.settings import Settings


class FakeGateway:
    """Jobs publish at once, training the facts they were posted with; every second fill
    job finishes before its cancel arrives (409)."""

    def __init__(self) -> None:
        self.facts: dict[str, list[str]] = {}
        self.jobs: dict[str, dict] = {}
        self.cancels: list[str] = []
        self.ids = itertools.count()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        tenant = request.headers["x-loramem-tenant"]
        if request.method == "POST" and request.url.path == "/facts":
            facts = json.loads(request.content)["facts"]
            self.facts.setdefault(tenant, []).extend(facts)
            job_id = f"j{next(self.ids)}"
            progress = {"step": 7, "facts": len(facts)}
            self.jobs[job_id] = {"id": job_id, "status": "published", "module": "m-1",
                                 "version": 1, "progress": progress, "error": None}  # fmt: skip
            return httpx.Response(202, json={"job_id": job_id, "fact_ids": [], "module": "m-1"})
        if request.url.path == "/facts":
            return httpx.Response(200, json=[{"text": f} for f in self.facts[tenant]])
        job_id = request.url.path.rsplit("/", 1)[1]
        if request.method == "DELETE":
            self.cancels.append(job_id)
            if len(self.cancels) % 2 == 0:
                error = {"message": "already published", "type": "conflict", "code": 409}
                return httpx.Response(409, json={"error": error})
            self.jobs[job_id]["status"] = "cancelled"
        return httpx.Response(200, json=self.jobs[job_id])


def test_stored_fill_then_timed_add_per_held_count(tmp_path: Path) -> None:
    gateway = FakeGateway()
    flags = {"held": "0,120", "facts": 3, "fill": "stored", "offset": 0}
    run = EvalRun("ingest-held", "http://gw", tmp_path, Settings(), flags)
    run.transport = httpx.MockTransport(gateway)
    outcome = ingest_held(run)
    run.finish(outcome["results"], outcome["report"], outcome["figures"])

    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["held"] for r in rows] == [0, 120]
    assert [r["tenant_facts"] for r in rows] == [3, 123]
    assert all(r["facts_trained"] == 3 and r["job"]["status"] == "published" for r in rows)
    assert rows[0]["vs_baseline"] == 1.0
    # 120 held: batches of 50, 50 and 20, each cancelled once; the second finished first
    assert len(gateway.cancels) == 3
    assert "| 120 | 3 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "ingest_held.png").stat().st_size > 0
