"""`python -m cli <command>`: the same as the `loramem` console script."""

import sys

from cli.main import main

sys.exit(main())
