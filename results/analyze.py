"""Analyse one or several experiments: the study's table, the Pareto front, plots.

    python -m neqtune.results.analyze results/digits-grid results/digits-full -o docs/digits

reads ``epochs.parquet`` and ``trials.parquet`` of every experiment directory
given (several are merged, as the study merged several sweep files), on the
local disk or under a URI (``s3://bucket/prefix/<experiment>``), and writes
into the output directory:

- ``table.md``, ``table.csv``, ``table.xlsx``: the study's table, one row
  per (model, scheme, budget unit, budget in parameters or in memory,
  initialization, policy), aggregated over seeds (mean and sample standard
  deviation, n - 1); the XLSX also holds the Pareto front(s), the
  per-trial outcomes and the problems, one sheet each;
- ``pareto.csv``: the trials that no other trial beats on both test top-1
  (higher) and budget in parameters (lower);
- ``pareto_memory.csv``, when some trial has a memory budget: the same
  front over the measured memory (``memory_used``) of every trial that
  reports it, whatever its budget;
- ``trials.csv``: one row per trial, best epoch chosen by validation;
- ``problems.csv``: every trial left out of the table, and why;
- ``report.md``: all tables, as printed;
- PNG plots (see :mod:`neqtune.results.plots`).

Each trial's best epoch is recomputed from its epoch rows: the first epoch
with the highest validation top-1 (the trainer's rule); the test top-1 of
that epoch is the headline number. A crashed trial, a trial without an
evaluated epoch, or one with epoch rows but no summary row (still running,
or its driver stopped) is kept out of the aggregates and listed under
problems, never dropped silently.

Experiments written before memory budgets existed have no ``budget.unit``
or memory columns: those read as not set, and such experiments are
analysed exactly as before (the Markdown table shows memory columns only
when some trial reports memory).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from neqtune.results.loading import is_uri, load_experiments
from neqtune.results.model import AnalysisInputError
from neqtune.results.outcomes import analyze
from neqtune.results.report import report_markdown, write_outputs


def default_out_dir(directories: Sequence[Path | str]) -> Path:
    """``<experiment>/analysis`` for one experiment; ``<parent>/analysis-<a>+<b>...`` for several.

    The outputs stay on the local disk: for an experiment under a URI, the
    experiment's directory is ``results/<experiment>`` (where the search
    keeps its TensorBoard files).
    """
    local = [Path("results") / _uri_name(d) if is_uri(d) else Path(d) for d in directories]
    if len(local) == 1:
        return local[0] / "analysis"
    names = "+".join(re.sub(r"[^\w.-]+", "_", d.resolve().name) for d in local)
    return local[0].resolve().parent / f"analysis-{names}"


def _uri_name(location: Path | str) -> str:
    """The last path component of a URI (its query left out)."""
    return str(location).partition("?")[0].rstrip("/").rpartition("/")[2]


def report_importances(directories: Sequence[Path | str], out_dir: Path) -> list[Path]:
    """Print the fANOVA importances of the searched keys (:mod:`neqtune.results.importance`) and write them; the files written."""
    from neqtune.results.importance import importance_markdown, parameter_importances, write_importances

    importances = parameter_importances(directories)
    print(importance_markdown(importances))
    return write_importances(importances, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (2 for bad input, before anything is written)."""
    parser = argparse.ArgumentParser(
        prog="python -m neqtune.results.analyze",
        description="The study's table, the Pareto front and plots from one or several neqtune experiments.",
    )
    parser.add_argument(
        "experiments",
        nargs="+",
        type=lambda text: text if is_uri(text) else Path(text),
        help="experiment directories (results/<experiment>, or a URI such as s3://bucket/prefix/<experiment>), merged",
    )
    parser.add_argument(
        "-o", "--out", type=Path, default=None, help="output directory (default: <experiment>/analysis; results/<experiment>/analysis for a URI)"
    )
    args = parser.parse_args(argv)
    try:
        experiments = load_experiments(args.experiments)
        if args.out is not None and args.out.exists() and not args.out.is_dir():
            raise AnalysisInputError(f"{args.out}: exists and is not a directory")
    except AnalysisInputError as error:
        print(f"analyze: error: {error}", file=sys.stderr)
        return 2
    analysis = analyze(experiments)
    out_dir = args.out if args.out is not None else default_out_dir(args.experiments)
    written = write_outputs(analysis, experiments, out_dir)
    print(report_markdown(analysis, experiments, [p.name for p in written if p.suffix == ".png"]))
    written += report_importances(args.experiments, out_dir)
    print(f"wrote {len(written)} files to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
