"""``python -m neqtune.search``: the same command line as ``run_search.py``."""

from __future__ import annotations

from neqtune.search.cli import run

if __name__ == "__main__":
    run(prog="python -m neqtune.search")
