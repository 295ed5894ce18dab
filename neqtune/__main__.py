"""``python -m neqtune``: the same command line as ``run_search.py`` and the ``neqtune`` console script."""

from neqtune.search.cli import run

if __name__ == "__main__":
    run(prog="python -m neqtune")
