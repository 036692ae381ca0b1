"""The `loramem` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cli.main import main


def test_loramem_engine_becomes_the_engine_so_a_stop_signal_reaches_vllm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 30}')
    monkeypatch.setattr("loramem.base_model.prepare_base_model", lambda _settings: tmp_path)
    replaced_with: list[tuple[str, list[str], dict[str, str]]] = []

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        replaced_with.append((path, argv, env))
        raise SystemExit(0)  # the real one never returns

    monkeypatch.setattr(os, "execve", execve)
    with pytest.raises(SystemExit):
        main(["engine"])
    [(path, argv, env)] = replaced_with
    assert path == argv[0] == sys.executable
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_following_a_job_says_which_facts_moved_out_and_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli.main import follow

    moved = {"module": "m-s1", "job_id": "j2", "fact_ids": ["f9"], "reason": "not recalled"}
    done = {
        "status": "published", "module": "m", "version": 1, "error": None,
        "progress": {"step": 30, "total_steps": 90, "moved_out": [moved]},
    }  # fmt: skip

    class Finished:
        def wait_job(self, _job_id: str, on_progress: object) -> dict:
            return done

    assert follow(Finished(), "j1") == 0  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "published: m v1" in out
    assert "moved out 1 fact(s) to m-s1 (job j2): not recalled" in out
