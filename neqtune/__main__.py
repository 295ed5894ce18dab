"""``python -m neqtune``: the same command line as ``run_search.py`` and the ``neqtune`` console script."""

import sys

from neqtune.search.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m neqtune"))
