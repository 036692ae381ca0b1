"""`loramem eval routing` at a small size, with real embeddings and no gateway: JSON and
markdown side by side for each lexical weight."""

import argparse
import json
from pathlib import Path

from evaluation.cli import add_parser, run
from loramem.settings import Settings


def test_routing_eval_writes_both_arms_side_by_side(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "routing"
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"), settings)
    flags = ["--sizes", "2,8", "--weights", "0,0.3", "--people", "6", "--out", str(out)]
    args = parser.parse_args(["eval", "routing", *flags])
    assert run(args, settings) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["modules"], r["lexical_weight"]) for r in rows] == [
        (2, 0.0),
        (2, 0.3),
        (8, 0.0),
        (8, 0.3),
    ]
    assert all(r["stored"] == 1.0 for r in rows)  # the stored question form always routes
    assert all(0.0 <= r["paraphrase"] <= 1.0 for r in rows)
    report = (out / "report.md").read_text()
    assert "| 8 | 512 | 0.300 |" in report and "surname only" in report
    assert (out / "routing.png").exists()
