"""Questions that span modules, answered side by side through a running gateway.

    .venv/bin/python -m bench.span --gateway http://127.0.0.1:19000 --modules 4 --facts 8

The same run as `loramem eval span` (evaluation/span.py says what each arm asks and
what counts), with its flags; kept so the commands in docs/RESULTS.md still run.
"""

from __future__ import annotations

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main(["eval", "span", *sys.argv[1:]]))
