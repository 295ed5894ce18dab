"""``python -m neqtune.search``: the same command line as ``run_search.py``."""

from __future__ import annotations

import sys

from neqtune.search.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m neqtune.search"))
