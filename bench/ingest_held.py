"""POST /facts to `published` for a few facts into tenants that already hold some: now
`loramem eval ingest-held` (evaluation/ingest_held.py), which this runs with the same
flags, so the commands in docs/RESULTS.md still work.

    .venv/bin/python -m bench.ingest_held --held 0,50 --facts 10
"""

from __future__ import annotations

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main(["eval", "ingest-held", *sys.argv[1:]]))
