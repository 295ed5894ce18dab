"""``run_search.py``: the command line of neqtune."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from neqtune.search.experiment import SearchOutcome

# Imported by a search; looked up (not imported) before anything runs, so that a Python without them says so in one line.
DEPENDENCIES = ("yaml", "optuna", "ray", "torch", "torchvision", "pyarrow", "tensorboard")


def missing_dependencies() -> list[str]:
    """The modules of :data:`DEPENDENCIES` this Python cannot import (found without importing them)."""
    return [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]


def parse_set(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``training.lr=0.01``, ``budget.scheme=null``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"the value of {key} is not valid YAML: {value!r}") from None


def parse_concurrency(text: str) -> int | str:
    """``auto`` or a positive count of trials."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of trials, got {text!r}") from None


def build_parser(prog: str = "run_search.py") -> argparse.ArgumentParser:
    """The flags of ``run_search.py`` (``prog``: the command name in usage lines)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Search how to fine-tune a network under a parameter budget (Ray Tune + Optuna).",
    )
    parser.add_argument("--space", type=Path, default=None, help="search space YAML (default: the embedded digits space, no download)")
    parser.add_argument(
        "--variant",
        default=None,
        help="a recipe of the space's 'variants' section (the study's spaces: 'paper', the recipe the paper states)",
    )
    parser.add_argument("--name", default=None, help="experiment directory name (default: the space's experiment name + a timestamp)")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where experiment directories go (default: $NEQ_RESULTS, else ./results; inside a Ray job: ~/neqtune-results)",
    )
    parser.add_argument("--address", default=None, help="join a running Ray cluster: 'auto' or HOST:PORT (default: start Ray here)")
    parser.add_argument(
        "--storage",
        default=None,
        help="where tables, trial directories and checkpoints go: a local path or a URI (s3://bucket/path, gs://...); default: --results",
    )
    parser.add_argument(
        "--shared-storage",
        action="store_true",
        help="the local --storage path is on a file system every cluster node mounts (NFS); needed for a multi-host cluster",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="EXPERIMENT_DIR",
        help="continue the search in results/<experiment> (or a URI) whose driver died or stopped (Ctrl-C, a full disk); other options but --address are ignored",
    )
    parser.add_argument("--num-samples", type=int, default=None, help="trials (optuna) or grid repeats (grid)")
    parser.add_argument(
        "--max-concurrent", type=parse_concurrency, default=None, help="trials running at once, or 'auto' (from the CPUs and the memory)"
    )
    parser.add_argument("--max-failures", type=int, default=None, help="restarts of a failed trial from its last checkpoint")
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
    parser.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a plug-in (a module name, or a .py file / package folder relative to the current directory) "
        "that registers models, data sets or policies, before the space is checked (repeatable; see docs/plugins.md)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate the space, print the trials it would run, and stop")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "run_search.py") -> int:
    """Entry point; returns the exit code (2 for bad input, before any work starts).

    Help and argument errors answer before torch and Ray are imported.
    """
    missing = missing_dependencies()
    if missing:
        print(
            f"error: {sys.executable} cannot import {', '.join(missing)}: run neqtune with the Python of its virtualenv "
            "(.venv/bin/python); on a Ray cluster, start the head from the activated virtualenv (docs/cluster.md)",
            file=sys.stderr,
        )
        return 2
    args = build_parser(prog).parse_args(argv)
    from neqtune.search.locations import default_results_dir, outside_ray_package

    explicit = [("--results", args.results), ("--storage", args.storage), ("--resume", args.resume)]
    for flag, value in explicit:
        refused = outside_ray_package(flag, value) if value is not None else None
        if refused:
            print(f"error: {refused}", file=sys.stderr)
            return 2
    if args.results is None:
        args.results, note = default_results_dir()
        if note and not args.dry_run:
            print(note)
    if args.resume is not None:
        from neqtune.search.experiment import resume_search
        from neqtune.search.interrupts import StopOnInterrupt
        from neqtune.search.ray_cluster import ClusterError

        try:
            with StopOnInterrupt() as stop:
                outcome = guarded(
                    lambda: resume_search(
                        args.resume, results_dir=args.results, address=args.address, shared_storage=args.shared_storage, stop=stop
                    ),
                    stop,
                )
        except ClusterError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except SearchStopped as stopped:
            return stopped.code
        return report_outcome(outcome, searched=list(outcome.searched))
    search_overrides = {
        key: value
        for key, value in (
            ("num_samples", args.num_samples),
            ("max_concurrent", args.max_concurrent),
            ("cpus_per_trial", args.cpus_per_trial),
            ("max_failures", args.max_failures),
        )
        if value is not None
    }
    from neqtune.search.plugins import PluginError, load_plugins, resolve_plugins
    from neqtune.search.space import SpaceError, load_space
    from neqtune.trainables.config import ConfigError

    try:
        plugins = resolve_plugins(args.plugins, key="--plugin", relative_to=Path.cwd())
        load_plugins(plugins)
    except PluginError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        from neqtune.search.dry_run import dry_run

        try:
            report, problems = dry_run(
                args.space, overrides=args.overrides, search_overrides=search_overrides, variant=args.variant, plugins=plugins
            )
        except SpaceError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print("\n".join(report))
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2 if problems else 0
    try:
        space = load_space(args.space, overrides=args.overrides, search_overrides=search_overrides, variant=args.variant, plugins=plugins)
        from neqtune.search.weights import fetch_space_weights

        fetch_space_weights(space)  # before Ray starts: a run that cannot get its weights is refused here
        from neqtune.search.dry_run import budget_warnings

        for warning in budget_warnings(space):  # parameters that would train beside a budget smaller than them
            print(warning)
    except SpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"error: {space.source}: {err}", file=sys.stderr)
        return 2

    from neqtune.search.experiment import run_search
    from neqtune.search.interrupts import StopOnInterrupt
    from neqtune.search.ray_cluster import ClusterError

    try:
        with StopOnInterrupt() as stop:
            outcome = guarded(
                lambda: run_search(
                    space,
                    results_dir=args.results,
                    name=args.name,
                    address=args.address,
                    storage=args.storage,
                    shared_storage=args.shared_storage,
                    stop=stop,
                ),
                stop,
            )
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SearchStopped as stopped:
        return stopped.code
    return report_outcome(outcome, searched=list(space.search.params))


class SearchStopped(Exception):
    """The search ended early and said why in one line; ``code`` is the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# Exit codes of a search that stopped early: Ctrl-C (the shell's 128 + SIGINT), a full or read-only disk.
EXIT_INTERRUPTED = 130
EXIT_STORAGE = 1


def resume_hint(location: str | None) -> str:
    """How to go on with the search at ``location``."""
    from neqtune.search.storage import resumable

    if location is None or not resumable(location):
        return "no trial had started: run the search again"
    return f"resume with: python run_search.py --resume {location}"


def guarded(search: Callable[[], SearchOutcome], stop: Any) -> SearchOutcome:
    """Run ``search``; on Ctrl-C or a full or read-only disk, stop Ray, print one line and raise :class:`SearchStopped`."""
    from neqtune.search.interrupts import SearchInterrupted
    from neqtune.search.tables import StorageError

    try:
        return search()
    except SearchInterrupted as interrupted:
        if shutdown_ray():
            print(f"neqtune: search interrupted; every epoch reported so far is in the tables; {resume_hint(interrupted.location)}")
        else:  # the second Ctrl-C came while Ray shut down
            print(f"neqtune: search interrupted (forced); the tables are whole; {resume_hint(interrupted.location)}")
        raise SearchStopped(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        shutdown_ray()
        print(f"neqtune: search interrupted (forced); the tables are whole; {resume_hint(stop.location)}")
        raise SearchStopped(EXIT_INTERRUPTED) from None
    except StorageError as err:
        shutdown_ray()
        print(f"error: {err.path}: {err.reason}: the search stopped; once there is space: {resume_hint(err.location)}", file=sys.stderr)
        raise SearchStopped(EXIT_STORAGE) from None


def shutdown_ray() -> bool:
    """Stop this driver's Ray (for a local instance: its processes; the watchdog ends any that linger).

    A Ctrl-C during the shutdown cuts it short (the watchdog ends what is
    left when the driver exits); returns False then.
    """
    import ray

    try:
        if ray.is_initialized():
            ray.shutdown()
    except KeyboardInterrupt:
        return False
    return True


def report_outcome(outcome: SearchOutcome, *, searched: list[str]) -> int:
    """Print where the results are and the best trial; the exit code (1 if a trial failed or none finished).

    The closing line names the TensorBoard directory as an absolute path
    (the parent of the experiment directory, which holds its event files).
    """
    print(f"\nneqtune: {outcome.num_trials} trials ({outcome.errors} failed) in {outcome.wall_time_s:.0f} s")
    print(f"results: {outcome.location or outcome.experiment_dir}  (epochs.parquet, trials.parquet, tensorboard/)")
    if outcome.location and outcome.location != str(outcome.experiment_dir):
        print(f"tensorboard files: {outcome.experiment_dir}")
    view = f"view the curves: tensorboard --logdir {outcome.experiment_dir.absolute().parent}"
    if outcome.best is None:
        print("no trial finished")
        print(view)
        return 1
    best = outcome.best
    values = ", ".join(f"{key}={best.get(key)}" for key in searched)
    print(f"best trial {best['trial_id']}: {values}")
    print(
        f"  best val top-1 {best['best_val_top1']:.2f}% at epoch {best['best_epoch']}; test top-1 at that epoch {best['test_top1_at_best_val']:.2f}%"
    )
    if outcome.pareto is not None:
        print_pareto(outcome.pareto, searched=searched, metrics=list(outcome.objectives))
    print(view)
    return 0 if outcome.errors == 0 else 1


def print_pareto(front: list[dict[str, Any]], *, searched: list[str], metrics: list[str]) -> None:
    """The Pareto set of a multi-objective search: one line per trial, its config and objectives (saved in pareto.parquet)."""
    print(f"Pareto set ({len(front)} trials; {', '.join(metrics)}; also test top-1 at best val), in pareto.parquet:")
    for row in front:
        values = ", ".join(f"{key}={row.get(key)}" for key in searched)
        scores = ", ".join(f"{m}={row.get(m):.6g}" for m in metrics)
        if "memory_used" in metrics and row.get("memory_used") is not None:  # a memory objective also in kB
            scores += f" ({row['memory_used'] * (row.get('budget.bytes_per_element') or 4.0) / 1024:.1f} kB)"
        print(f"  {row['trial_id']}: {values}: {scores}, test_top1_at_best_val={row.get('test_top1_at_best_val', float('nan')):.2f}")


def run(prog: str = "run_search.py") -> NoReturn:
    """The command line as a process: :func:`main` on ``sys.argv``, then the process ends with its exit code.

    The interpreter's own teardown is skipped: after a search it takes 2-3 s on two cores, spent freeing the modules
    of torch, torchvision and Ray one by one, and every search paid it, an interrupted one too. What the teardown
    would do first still happens: other non-daemon threads are joined, the exit handlers run (Ray's shutdown,
    logging's flush) and the standard streams are flushed. An exception other than ``SystemExit`` leaves as usual.
    """
    try:
        code = main(prog=prog)
    except SystemExit as stop:
        if not (stop.code is None or isinstance(stop.code, int)):
            raise  # a message to print: the interpreter's usual exit prints it
        code = stop.code or 0
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def console_main() -> NoReturn:
    """The ``neqtune`` console script (pyproject.toml's ``[project.scripts]``): the same command line."""
    run(prog="neqtune")


if __name__ == "__main__":
    run(prog="python -m neqtune.search.cli")
