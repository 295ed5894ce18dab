"""``run_search.py``: the command line of neqtune."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from search.space import SpaceError, load_space


def parse_set(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``training.lr=0.01``, ``budget.scheme=null``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"the value of {key} is not valid YAML: {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_search.py",
        description="Search how to fine-tune a network under a parameter budget (Ray Tune + Optuna).",
    )
    parser.add_argument("--space", type=Path, default=None, help="search space YAML (default: the embedded digits space, no download)")
    parser.add_argument("--name", default=None, help="experiment directory name (default: the space's experiment name + a timestamp)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="where experiment directories go (default: ./results)")
    parser.add_argument("--address", default=None, help="join a running Ray cluster: 'auto' or HOST:PORT (default: start Ray here)")
    parser.add_argument("--num-samples", type=int, default=None, help="trials (optuna) or grid repeats (grid)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials running at once")
    parser.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs reserved by each trial")
    parser.add_argument(
        "--set",
        dest="overrides",
        type=parse_set,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a space value, e.g. --set training.epochs=3 (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate the space, print the trials it would run, and stop")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, before any work starts)."""
    args = build_parser().parse_args(argv)
    search_overrides = {
        key: value
        for key, value in (
            ("num_samples", args.num_samples),
            ("max_concurrent", args.max_concurrent),
            ("cpus_per_trial", args.cpus_per_trial),
        )
        if value is not None
    }
    try:
        space = load_space(args.space, overrides=args.overrides, search_overrides=search_overrides)
    except SpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        from search.dry_run import describe_space

        try:
            report = describe_space(space)
        except SpaceError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print("\n".join(report))
        return 0

    from search.experiment import run_search

    outcome = run_search(space, results_dir=args.results, name=args.name, address=args.address)
    print(f"\nneqtune: {outcome.num_trials} trials ({outcome.errors} failed) in {outcome.wall_time_s:.0f} s")
    print(f"results: {outcome.experiment_dir}  (epochs.parquet, trials.parquet, tensorboard/)")
    if outcome.best is None:
        print("no trial finished")
        return 1
    best = outcome.best
    searched = ", ".join(f"{key}={best.get(key)}" for key in space.search.params)
    print(f"best trial {best['trial_id']}: {searched}")
    print(
        f"  best val top-1 {best['best_val_top1']:.2f}% at epoch {best['best_epoch']}; test top-1 at that epoch {best['test_top1_at_best_val']:.2f}%"
    )
    print(f"view the curves: tensorboard --logdir {args.results}")
    return 0 if outcome.errors == 0 else 1
