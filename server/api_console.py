"""The memory console: a static page at /console, and the hit counts it charts.

The page is plain HTML, CSS and JavaScript from server/console/, with no build step and
nothing fetched from elsewhere. It holds no data of its own: the browser calls the public
API (facts, jobs, modules, chat, /stats/hits) with the key the person types, so it sees
exactly what that key may see. The page itself needs no key.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastapi import APIRouter, FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from server.deps import HitsDep, ReaderDep
from server.protocol import HitSeriesOut, HitsOut

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
# Only the page's own files and this origin's API: a fact's text is shown as text, and
# even a script that slipped into the page could not send the key anywhere else.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}

api = APIRouter(tags=["console"])


@api.get("/stats/hits", response_model=HitsOut)
def hits(caller: ReaderDep, counter: HitsDep) -> HitsOut:
    """Completion requests of the caller's tenant per module, over the last hour, from this
    gateway's memory (so it works without Prometheus or Grafana)."""
    series = counter.of_tenant(caller.tenant)
    return HitsOut(
        window_s=counter.buckets * counter.bucket_s,
        bucket_s=counter.bucket_s,
        now_s=time.time(),
        total=sum(s.total for s in series),
        series=[HitSeriesOut(module=s.module, counts=s.counts, total=s.total) for s in series],
    )


class ConsoleFiles(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def install(app: FastAPI) -> None:
    app.include_router(api)
    # /console redirects to /console/, which serves index.html.
    app.mount("/console", ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console")
