"""`loramem eval subject` at a small size, with real embeddings and the paper's data, no
gateway: the subject check off and on side by side, and what it must and must not change."""

import argparse
import json
from pathlib import Path

import pytest

from evaluation.cli import add_parser, run
from loramem.datasets import WHERE_TO_GET
from loramem.settings import Settings


def test_subject_eval_sends_unedited_subjects_to_base_and_keeps_the_rest(
    settings: Settings, tmp_path: Path
) -> None:
    if not (settings.data_dir / "counterfact" / "counterfact_edit_4K.csv").exists():
        pytest.skip(f"needs the paper's CounterFact under {settings.data_dir} ({WHERE_TO_GET})")
    out = tmp_path / "subject"
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"), settings)
    flags = ["--edits", "64", "--people", "64", "--papers", "1", "--out", str(out)]
    flags += ["--thresholds", "0.4,0.7"]
    assert run(parser.parse_args(["eval", "subject", *flags]), settings) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["arms"] == ["off", "on", "on, threshold 0.40", "on, threshold 0.70"]
    row = {(r["data"], r["kind"], r["arm"]): r for r in results["rows"]}
    for arm in ("off", "on"):
        # what must still reach its module does, with the check or without
        assert row[("counterfact", "edit prompt", arm)]["right"] == 1.0
        assert row[("counterfact", "question form", arm)]["right"] >= 0.95
        assert row[("phonebook", "stored", arm)]["right"] == 1.0
        assert row[("phonebook", "paraphrase", arm)]["right"] >= 0.99
    # at 64 edits the dense route sends 9 of 62 locality prompts into the module, the
    # check 2 (a shared surname or model name: "Boeing 747" against a "Boeing 747 ...")
    before = row[("counterfact", "locality", "off")]
    after = row[("counterfact", "locality", "on")]
    assert before["questions"] >= 60 and after["right"] >= before["right"] + 0.05
    assert after["right"] >= 0.95 and after["outcomes"].get("unnamed_subject", 0) >= 3
    assert (
        row[("paperqa", "question", "on")]["right"]
        >= row[("paperqa", "question", "off")]["right"] - 0.05
    )
    # a higher route threshold sends more to base: locality up, documents' questions down
    low, high = (row[("paperqa", "question", f"on, threshold {t}")] for t in ("0.40", "0.70"))
    assert high["to_base"] > low["to_base"]
    local = [row[("counterfact", "locality", f"on, threshold {t}")] for t in ("0.40", "0.70")]
    assert local[1]["right"] >= local[0]["right"]
    report = (out / "report.md").read_text()
    assert "| counterfact | locality | 62 | base |" in report and "check on" in report
    assert (out / "subject.png").exists()
