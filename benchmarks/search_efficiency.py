"""Search efficiency on digits: the study's grid against TPE and TPE with ASHA.

One run of this script executes, one after the other on the same Ray
session, searches over the same space (selection policy x budget scheme x
learning rate) at an equal number of configurations:

- ``grid``: every combination of the choice lists, each trained to the end
  (the study's way: an exhaustive grid);
- ``tpe``: Optuna's TPE, the same number of trials, each to the end;
- ``tpe+asha``: TPE with Ray Tune's ASHA stopping bad trials early;
- ``tpe+asha, no actor reuse``: the same, with a new Ray worker per trial;
- ``pareto``: a two-objective TPE search (best validation top-1 up, budget
  in parameters down) over velocity and random selection at the study's
  schemes, for the study's claim that velocity beats random at equal budget.

For each method it reports the best trial by validation and its test top-1
at the best validation epoch, the trial-epochs spent, the wall time, and
the per-trial overhead: ``(wall time x concurrent slots - training time) /
trials`` (everything a slot spent not training: worker start, scheduling,
checkpoints, idle slots at the end) and, per trial, the median of its own
wall time minus its epochs' time (worker start excluded). The table goes to
``docs/benchmarks/search_efficiency.md`` and ``.parquet``, the Pareto set to
``search_efficiency.pareto.parquet``.

``python -m benchmarks.search_efficiency`` (12 minutes on 2 shared CPU
cores); ``--quick`` runs tiny sizes in about a minute, to check the pipeline.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from search.pareto import compare_policies_at_budget, pareto_front
from search.space import Space, build_space
from search.tables import rows_to_table, write_atomic

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks"
SCHEMES = {1: "mbv2-w0.35_scheme_1", 3: "mbv2-w0.35_scheme_3", 5: "mbv2-w0.35_scheme_5"}


@dataclass(frozen=True)
class Setting:
    """The benchmark's sizes (stated in the table)."""

    image_size: int = 16
    epochs: int = 6
    policies: tuple[str, ...] = ("velocity", "random", "su")
    schemes: tuple[int, ...] = (1, 5)
    lrs: tuple[float, ...] = (0.1, 0.3)
    lr_range: tuple[float, float] = (0.03, 0.5)
    grace_period: int = 1
    reduction_factor: float = 4.0
    max_concurrent: int = 2
    pareto_samples: int = 8
    pareto_schemes: tuple[int, ...] = (1, 3, 5)
    seed: int = 0

    @property
    def grid_size(self) -> int:
        """Configurations of the grid, hence of every method."""
        return len(self.policies) * len(self.schemes) * len(self.lrs)

    def describe(self) -> str:
        """One line for the table's caption."""
        return (
            f"digits {self.image_size} px, mbv2-w0.35 from scratch, SGD (momentum 0), {self.epochs} epochs, "
            f"{self.grid_size} configurations per method (policy {list(self.policies)} x scheme {list(self.schemes)} x "
            f"lr {list(self.lrs)} in the grid; lr log-uniform in {list(self.lr_range)} for TPE), "
            f"ASHA grace {self.grace_period} epoch, reduction factor {self.reduction_factor:g}, "
            f"{self.max_concurrent} trials at a time, 1 CPU each, seed {self.seed}"
        )


QUICK = Setting(
    image_size=16, epochs=2, policies=("velocity", "random"), schemes=(1,), lrs=(0.1,), reduction_factor=2.0, pareto_samples=2, pareto_schemes=(1,)
)


def base_space(setting: Setting, experiment: str) -> dict[str, Any]:
    """The trial sections shared by every method."""
    return {
        "experiment": experiment,
        "data": {"name": "digits", "image_size": setting.image_size, "batch_size": 32},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": setting.epochs, "lr": 0.1, "momentum": 0.0, "seed": setting.seed},
        "budget": {"policy": "velocity", "initialization": "random", "scheme": SCHEMES[setting.schemes[0]]},
    }


def method_spaces(setting: Setting) -> dict[str, Space]:
    """The space of every method, validated."""
    schemes = [SCHEMES[s] for s in setting.schemes]
    common = {"max_concurrent": setting.max_concurrent, "cpus_per_trial": 1, "seed": setting.seed, "metric": "best_val_top1", "mode": "max"}
    grid = {
        **common,
        "algorithm": "grid",
        "num_samples": 1,
        "params": {
            "budget.policy": {"choice": list(setting.policies)},
            "budget.scheme": {"choice": schemes},
            "training.lr": {"choice": list(setting.lrs)},
        },
    }
    tpe = {
        **common,
        "algorithm": "optuna",
        "sampler": "tpe",
        "startup_trials": max(1, setting.grid_size // 3),
        "num_samples": setting.grid_size,
        "params": {
            "budget.policy": {"choice": list(setting.policies)},
            "budget.scheme": {"choice": schemes},
            "training.lr": {"loguniform": list(setting.lr_range)},
        },
    }
    asha = {
        **tpe,
        "scheduler": "asha",
        "asha": {"metric": "best_val_top1", "mode": "max", "grace_period": setting.grace_period, "reduction_factor": setting.reduction_factor},
    }
    pareto = {
        **tpe,
        "num_samples": setting.pareto_samples,
        "startup_trials": max(1, setting.pareto_samples // 3),
        "metric": ["best_val_top1", "budget_params"],
        "mode": ["max", "min"],
        "params": {
            "budget.policy": {"choice": ["velocity", "random"]},
            "budget.scheme": {"choice": [SCHEMES[s] for s in setting.pareto_schemes]},
            "training.lr": {"loguniform": list(setting.lr_range)},
        },
    }
    raws = {
        "grid": grid,
        "tpe": tpe,
        "tpe+asha": asha,
        "tpe+asha, no actor reuse": {**asha, "reuse_actors": False},
        "pareto": pareto,
    }
    return {name: build_space({**base_space(setting, "bench"), "search": raw}, f"<benchmark {name}>") for name, raw in raws.items()}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summarize(method: str, space: Space, trials: pd.DataFrame, wall_s: float, grid_epochs: int | None) -> dict[str, Any]:
    """One row of the table from a method's trials table."""
    done = trials[trials.status.isin(["TERMINATED", "STOPPED"]) & trials.best_val_top1.map(_finite)]
    best = done.sort_values(["best_val_top1", "trial_id"], ascending=[False, True]).iloc[0] if len(done) else None
    epochs = int(trials.epochs_run.sum())
    train_s = float(trials.train_time_s.sum())
    slots = int(space.search.max_concurrent)
    active_s = float(trials.end_time_s.max() - trials.start_time_s.min()) if len(trials) else math.nan
    return {
        "method": method,
        "configurations": len(trials),
        "stopped_early": int((trials.status == "STOPPED").sum()),
        "failed": int((trials.status == "ERROR").sum()),
        "trial_epochs": epochs,
        "epochs_vs_grid": epochs / grid_epochs if grid_epochs else 1.0,
        "best_val_top1": float(best.best_val_top1) if best is not None else math.nan,
        "test_top1_of_best": float(best.test_top1_at_best_val) if best is not None else math.nan,
        "best_config": ", ".join(f"{k}={_fmt(best[k])}" for k in space.search.params) if best is not None else "",
        "max_test_top1": float(done.test_top1_at_best_val.max()) if len(done) else math.nan,
        "wall_s": wall_s,
        "train_s": train_s,
        "overhead_per_trial_s": (wall_s * slots - train_s) / max(len(trials), 1),
        "steady_overhead_per_trial_s": (active_s * slots - train_s) / max(len(trials), 1),
        "in_trial_overhead_median_s": float(statistics.median(trials.wall_time_s - trials.train_time_s)) if len(trials) else math.nan,
    }


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown(rows: Sequence[dict[str, Any]], setting: Setting, pareto: Sequence[dict[str, Any]], comparison: str) -> str:
    """The Markdown report: the methods table, the Pareto set and the dominance check."""
    lines = [
        "# Search efficiency on digits",
        "",
        f"Setting: {setting.describe()}.",
        "",
        "| method | configs | stopped early | trial-epochs | vs grid | best val top-1 | test top-1 of best | "
        "max test top-1 | wall s | train s | overhead / trial s | steady overhead / trial s | in-trial overhead s (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['configurations']} | {r['stopped_early']} | {r['trial_epochs']} | {r['epochs_vs_grid']:.2f} | "
            f"{r['best_val_top1']:.2f} | {r['test_top1_of_best']:.2f} | {r['max_test_top1']:.2f} | {r['wall_s']:.1f} | "
            f"{r['train_s']:.1f} | {r['overhead_per_trial_s']:.2f} | {r['steady_overhead_per_trial_s']:.2f} | {r['in_trial_overhead_median_s']:.2f} |"
        )
    lines += ["", "Best configurations (by validation):", ""]
    lines += [f"- {r['method']}: {r['best_config']}" for r in rows]
    lines += [
        "",
        "`test top-1 of best`: test top-1 at the best validation epoch of the trial with the best validation top-1 "
        "(selection never looks at test). `overhead / trial`: (wall x slots - training time) / trials, the search's "
        "start (Tuner set-up, first Ray workers importing torch) included. `steady overhead / trial`: the same from the first "
        "trial's start to the last trial's end. `in-trial overhead`: a trial's own wall time minus its epochs' time "
        "(worker start excluded).",
        "",
        "## Two objectives: best validation top-1 (max) and budget in parameters (min)",
        "",
        "| trial | policy | scheme | lr | budget params | best val top-1 | test top-1 at best val |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in pareto:
        lines.append(
            f"| {p['trial_id']} | {p['budget.policy']} | {p['budget.scheme']} | {p['training.lr']:.3g} | {int(p['budget_params'])} | "
            f"{p['best_val_top1']:.2f} | {p['test_top1_at_best_val']:.2f} |"
        )
    lines += ["", comparison, ""]
    return "\n".join(lines)


def dominance_note(trials: pd.DataFrame) -> str:
    """Whether velocity beats random at each budget both ran at (best test top-1 at best val)."""
    rows = trials.to_dict("records")
    comparisons = compare_policies_at_budget(rows, first="velocity", second="random", score="test_top1_at_best_val")
    if not comparisons:
        return "Velocity against random at equal budget: the search did not sample both policies at any one budget, so no comparison."
    parts = [f"{int(c.budget)} params: velocity {c.better:.2f} vs random {c.worse:.2f}" for c in comparisons]
    wins = sum(c.margin > 0 for c in comparisons)
    verdict = (
        "velocity dominates random at every shared budget"
        if wins == len(comparisons)
        else f"velocity beats random at {wins} of {len(comparisons)} shared budgets, so it does NOT dominate here"
    )
    return f"Velocity against random at equal budget (best test top-1 at best val per policy): {'; '.join(parts)}: {verdict}."


def run_benchmark(setting: Setting, *, out_dir: Path, results_dir: Path, echo: Any = print) -> pd.DataFrame:
    """Run every method, write the tables, return the methods table."""
    from search.experiment import run_search

    spaces = method_spaces(setting)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows: list[dict[str, Any]] = []
    grid_epochs: int | None = None
    pareto_rows: list[dict[str, Any]] = []
    note = ""
    for method, space in spaces.items():
        name = f"bench-{method.replace('+', '-').replace(', ', '-').replace(' ', '-')}-{stamp}"
        echo(f"== {method}: {space.num_trials()} trials")
        outcome = run_search(space, results_dir=results_dir, name=name, echo=lambda line: None)
        trials = pd.read_parquet(outcome.experiment_dir / "trials.parquet")
        if method == "pareto":
            pareto_rows = pareto_front(trials.to_dict("records"), space.search.metrics, space.search.modes)
            note = dominance_note(trials)
            continue
        row = summarize(method, space, trials, outcome.wall_time_s, grid_epochs)
        if method == "grid":
            grid_epochs = row["trial_epochs"]
        rows.append(row)
        echo(f"   {row['trial_epochs']} trial-epochs, best val {row['best_val_top1']:.2f}, test {row['test_top1_of_best']:.2f}, {row['wall_s']:.0f} s")
    table = pd.DataFrame(rows)
    table["setting"] = setting.describe()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(rows_to_table(table.to_dict("records")), out_dir / "search_efficiency.parquet")
    pareto_columns = ["trial_id", "budget.policy", "budget.scheme", "training.lr", "budget_params", "best_val_top1", "test_top1_at_best_val"]
    write_atomic(
        rows_to_table([{k: p[k] for k in pareto_columns} for p in pareto_rows]),
        out_dir / "search_efficiency.pareto.parquet",
    )
    (out_dir / "search_efficiency.md").write_text(markdown(rows, setting, pareto_rows, note))
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_efficiency", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the pipeline, numbers mean nothing)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the Markdown and Parquet tables go")
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="where the searches' experiment directories go")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at a time (default 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    setting = QUICK if args.quick else Setting()
    if args.max_concurrent is not None:
        if args.max_concurrent < 1:
            print(f"error: --max-concurrent: must be >= 1, got {args.max_concurrent}")
            return 2
        setting = Setting(**{**asdict(setting), "max_concurrent": args.max_concurrent})
    table = run_benchmark(setting, out_dir=args.out, results_dir=args.results)
    print((args.out / "search_efficiency.md").read_text())
    return 0 if len(table) else 1


if __name__ == "__main__":
    raise SystemExit(main())
