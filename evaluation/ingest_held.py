"""`loramem eval ingest-held`: adding facts costs the same whatever the tenant holds.

For each `--held` count, side by side in one run: a fresh tenant gets that many PhoneBook
facts first (rows from `--offset`, in batches of 50 as a user posts them, each batch
waited for, not timed), then `--facts` more (rows from 1900, so that 1,000 held fit the
data) are posted and timed from sending the POST to `published`. New facts are packed
into the tenant's open module while it has room (LORAMEM_MODULE_CAPACITY_FACTS); with
delta modules on (LORAMEM_DELTA_ADDS, the default) they train alone into a delta of that
module, without them the job retrains the open module's facts too: `facts_trained`
shows which the system did. Every row's time is also given as a ratio of the baseline
row's (the first published one: the empty tenant when `--held` starts with 0); the
target is `TARGET_RATIO`.

`--fill` says how the held facts are made: `train` (the system's recipe, as a user's
would be), `cheap` (each batch trained with one step and no gate: real modules and
versions, fast) or `stored` (posted and packed, their jobs cancelled: stored and counted
in their modules, but no version holds them; the fastest, for 1,000 held on 2 cores).
The timed add always runs the system's own recipe (the other evals' training flags are
not offered). POST /facts needs no engine: a gateway and a worker on one Redis are enough.

Not compared here: the same run without delta modules. That is the worker's setting
(LORAMEM_DELTA_ADDS=false), which a client of the gateway cannot switch; run this again
against a worker and gateway started with it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from evaluation.client import EvalClient
from evaluation.experiments import job_summary
from evaluation.run import EvalRun, table
from loramem.client import GatewayError
from loramem.datasets import phonebook

TARGET_RATIO = 1.5  # issue 15: an add into a full tenant costs at most 1.5x an empty one's
FILL_BATCH = 50  # facts per fill request, as a user posts them
NEW_FACTS_ROW = 1900  # the timed facts' first PhoneBook row: past every held fact
CHEAP = {"recall_gate": 0.0, "max_steps": 1}  # --fill cheap: one step, no gate
POLL_S = 0.25  # the timed job's polling: a fraction of a second against 1-2 minute adds
JOB_TIMEOUT_S = 7200.0  # --fill train of a 50-fact batch under load takes minutes


def ingest_held(run: EvalRun) -> dict[str, Any]:
    helds = [int(h) for h in str(run.flags["held"]).split(",")]
    count, fill, offset = run.flags["facts"], run.flags["fill"], run.flags["offset"]
    if offset + max(helds) > NEW_FACTS_ROW:
        raise SystemExit(f"--offset + --held must stay below row {NEW_FACTS_ROW}")
    held_facts = [p.fact for p in phonebook(run.settings.data_dir, max(helds), offset=offset)]
    new_facts = [p.fact for p in phonebook(run.settings.data_dir, count, offset=NEW_FACTS_ROW)]
    if len(held_facts) < max(helds) or len(new_facts) < count:
        raise SystemExit("PhoneBook has too few rows for --held and --facts")
    load_start = os.getloadavg()
    rows = []
    for held in helds:
        client = run.client(f"h{held}")
        filled = fill_tenant(client, held_facts[:held], fill)
        if filled["failed"]:
            run.skip(f"held {held}", f"{filled['failed']} fill job(s) failed: {filled['error']}")
            continue
        row = timed_add(client, new_facts)
        rows.append({"held": held, "fill_seconds": filled["seconds"], **row})
        status, steps, trained = row["job"]["status"], row["steps"], row["facts_trained"]
        print(f"[eval ingest-held] held {held}: {status} in {row['seconds']:.1f} s, "
              f"{steps} steps, {trained} facts trained", flush=True)  # fmt: skip
    baseline = next((r for r in rows if r["job"]["status"] == "published"), None)
    for row in rows:
        ratio = None
        if baseline is not None and row["job"]["status"] == "published":
            ratio = round(row["seconds"] / baseline["seconds"], 2)
        row["vs_baseline"] = ratio
        row["within_target"] = ratio is not None and ratio <= TARGET_RATIO
    results = {
        "fill": fill,
        "new_facts": count,
        "target_ratio": TARGET_RATIO,
        "baseline_held": baseline["held"] if baseline else None,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "rows": rows,
    }
    return {"results": results, "report": _report(results), "figures": _figures(results)}


def fill_tenant(client: EvalClient, facts: list[str], fill: str) -> dict[str, Any]:
    """Post `facts` in batches; each batch published (train, cheap) or stored with its job
    cancelled (stored; a job that finished first is waited for)."""
    started = time.monotonic()
    failed: list[dict] = []

    def settle(batch: dict[str, Any]) -> None:  # before the next batch is posted
        if fill == "stored" and _cancelled(client, batch["job_id"]):
            return
        job = client.api.wait_job(batch["job_id"], timeout_s=JOB_TIMEOUT_S, poll_s=POLL_S)
        if job["status"] != "published":
            failed.append(job)

    client.post_batches(facts, FILL_BATCH, CHEAP if fill == "cheap" else None, settle)
    error = failed[-1].get("error") if failed else None
    return {"seconds": round(time.monotonic() - started, 1), "failed": len(failed), "error": error}


def _cancelled(client: EvalClient, job_id: str) -> bool:
    try:
        client.api.cancel_job(job_id)
    except GatewayError as exc:
        if exc.status != 409:  # 409: the job finished before the cancel reached it
            raise
        return False
    return True


def timed_add(client: EvalClient, facts: list[str]) -> dict[str, Any]:
    """POST `facts` (the system's recipe) and wait for the job: seconds to its end, what
    it trained, and what the tenant holds afterwards."""
    started = time.monotonic()
    reply = client.post_facts(facts, None)
    job = client.api.wait_job(reply["job_id"], timeout_s=JOB_TIMEOUT_S, poll_s=POLL_S)
    seconds = time.monotonic() - started
    progress = job.get("progress") or {}
    return {
        "new_facts": len(facts),
        "seconds": seconds,  # POST -> published (or failed)
        "steps": progress.get("step"),
        "facts_trained": progress.get("facts"),  # with delta modules: the new facts only
        "module": job["module"],  # with delta modules: "<open module>-d<hex>" once it holds facts
        "tenant_facts": len(client.api.facts()),
        "load_1m": round(os.getloadavg()[0], 2),
        "job": job_summary(job),
    }


def _report(results: dict[str, Any]) -> str:
    header = ["facts held", "new facts", "POST->published (s)", "steps", "facts trained"]
    header += ["vs baseline", f"within {TARGET_RATIO}x", "status", "load (1 min)"]
    keys = ("held", "new_facts", "seconds", "steps", "facts_trained", "vs_baseline")
    body = [
        [*[r[k] for k in keys], r["within_target"], r["job"]["status"], r["load_1m"]]
        for r in results["rows"]
    ]
    start, end = (
        ", ".join(f"{x:.2f}" for x in results["load_average"][when]) for when in ("start", "end")
    )
    return (
        f"Fill: `{results['fill']}`. Baseline: the row with {results['baseline_held']} facts "
        f"held. Load average (1, 5, 15 min): {start} at the start, {end} at the end.\n\n"
        + table(header, body)
    )


def _figures(results: dict[str, Any]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(5, 3.2))
    rows = [r for r in results["rows"] if r["job"]["status"] == "published"]
    axes.plot([r["held"] for r in rows], [r["seconds"] for r in rows], "o-", label="measured")
    baseline = next((r for r in rows if r["held"] == results["baseline_held"]), None)
    if baseline is not None:
        target = baseline["seconds"] * TARGET_RATIO
        label = f"target: {TARGET_RATIO}x the {baseline['held']}-held row"
        axes.axhline(target, color="tab:red", linestyle="--", label=label)
    axes.set_xscale("symlog", linthresh=10)  # 0 held beside 50, 200 and 1,000
    axes.set_xticks([r["held"] for r in rows], [str(r["held"]) for r in rows])
    axes.set_ylim(bottom=0)
    axes.set_xlabel("facts the tenant holds")
    axes.set_ylabel("POST -> published (s)")
    axes.set_title(f"Adding {results['new_facts']} facts (fill: {results['fill']})")
    axes.legend(fontsize=8)
    return {"ingest_held": figure}
