"""Search efficiency on digits: the study's grid against TPE and TPE with ASHA.

One run of this script executes, one after the other on the same Ray
session, searches over the same space (selection policy x budget scheme x
learning rate):

- ``grid``: every combination of the choice lists, each trained to the end
  (the study's way: an exhaustive grid);
- ``tpe``: Optuna's TPE, as many trials as the grid, each to the end;
- ``tpe+asha``: TPE with Ray Tune's ASHA stopping bad trials early, as many
  trials as the grid;
- ``tpe+asha, 1/3 of the grid's epochs``: the same with a search budget
  (``search.max_trial_epochs``) of a third of the grid's trial-epochs: the
  search ends when its trials have run that many epochs, however many
  configurations it tried by then;
- ``tpe+asha, fewer trials``: the same with ``fewer_samples`` trials;
- ``tpe+asha, no actor reuse``: as ``tpe+asha``, a new Ray worker per trial;
- ``pareto``: a two-objective TPE search (best validation top-1 up, budget
  in parameters down) over velocity and random selection at the study's
  schemes, for the study's claim that velocity beats random at equal budget.

For each method it reports the best trial by validation and its test top-1
at the best validation epoch, the trial-epochs spent, the wall time, and
the per-trial overhead: per trial, its wall time (driver side, from its
start to its end) minus its epochs' time, with the parts of it read from
Ray's per-trial ``result.json`` (:func:`overhead_parts`); and per slot,
``(wall time x concurrent slots - training time) / trials``. The table goes
to ``docs/benchmarks/search_efficiency.md`` and ``.parquet``, the Pareto set
to ``search_efficiency.pareto.parquet``.

``python -m benchmarks.search_efficiency`` runs the default methods (grid,
tpe, tpe+asha, tpe+asha with the budget, pareto: about 26 minutes on 2
quiet CPU cores); ``--method NAME`` (repeatable) picks methods and ``--add``
keeps the other rows of an earlier run of the same setting, so ``--add
--method "tpe+asha, fewer trials" --method "tpe+asha, no actor reuse"``
completes the table. ``--quick``
runs every method at tiny sizes in about a minute, to check the pipeline
(into ``results/search_efficiency_quick``, never over the committed tables);
``--render`` recomputes the rows from the experiments under ``--results``
and rewrites the report, without running a search.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from benchmarks.report import table_lines, write_atomically
from neqtune.pareto import compare_policies_at_budget, dominates, finite, pareto_front
from neqtune.search.space import Space, build_space
from neqtune.search.tables import rows_to_table, write_atomic

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks"
QUICK_OUT = ROOT / "results" / "search_efficiency_quick"  # --quick never overwrites the committed tables
NOTE_KEY = b"neqtune.dominance_note"
SCHEMES = {1: "mbv2-w0.35_scheme_1", 3: "mbv2-w0.35_scheme_3", 5: "mbv2-w0.35_scheme_5"}


BUDGETED = "tpe+asha, 1/3 of the grid's epochs"
METHODS = ("grid", "tpe", "tpe+asha", BUDGETED, "tpe+asha, fewer trials", "tpe+asha, no actor reuse", "pareto")


@dataclass(frozen=True)
class Setting:
    """The benchmark's sizes (stated in the table).

    The default follows the offline reproduction of docs/results.md (32 px, SGD
    without momentum), where velocity and random already differ after two
    epochs; at 16 px and 6 epochs every trial was still at chance when ASHA
    first looked, so early stopping had nothing to decide on.
    """

    image_size: int = 32
    epochs: int = 30
    policies: tuple[str, ...] = ("velocity", "random", "su")
    schemes: tuple[int, ...] = (1, 5)
    lrs: tuple[float, ...] = (0.03, 0.06, 0.1, 0.2)
    lr_range: tuple[float, float] = (0.02, 0.25)
    grace_period: int = 2
    reduction_factor: float = 4.0
    max_concurrent: int = 2
    pareto_samples: int = 10
    pareto_schemes: tuple[int, ...] = (1, 3, 5)
    pareto_lr_range: tuple[float, float] = (0.05, 0.2)
    fewer_samples: int = 12
    methods: tuple[str, ...] = ("grid", "tpe", "tpe+asha", BUDGETED, "pareto")
    seed: int = 0

    @property
    def grid_size(self) -> int:
        """Configurations of the grid, hence of every single-objective method."""
        return len(self.policies) * len(self.schemes) * len(self.lrs)

    def asha_rungs(self) -> list[int]:
        """The epochs at which Tune's ASHA compares trials (its formula, one bracket)."""
        count = int(math.log(self.epochs / self.grace_period) / math.log(self.reduction_factor) + 1)
        return [int(self.grace_period * self.reduction_factor**k) for k in range(max(count, 0))]

    def describe(self) -> str:
        """One line for the table's caption."""
        return (
            f"digits {self.image_size} px, mbv2-w0.35 from scratch, SGD (momentum 0), {self.epochs} epochs, "
            f"{self.grid_size} configurations per method (policy {list(self.policies)} x scheme {list(self.schemes)} x "
            f"lr {list(self.lrs)} in the grid; lr log-uniform in {list(self.lr_range)} for TPE), "
            f"ASHA on best_val_top1, grace {self.grace_period} epochs, reduction factor {self.reduction_factor:g} "
            f"(rungs at epochs {self.asha_rungs()}), {self.max_concurrent} trials at a time, 1 CPU each, seed {self.seed}; "
            f"two objectives: {self.pareto_samples} TPE trials over velocity/random x schemes {list(self.pareto_schemes)} x "
            f"lr log-uniform in {list(self.pareto_lr_range)}"
        )


QUICK = Setting(
    image_size=16,
    epochs=2,
    policies=("velocity", "random"),
    schemes=(1,),
    lrs=(0.1,),
    grace_period=1,
    reduction_factor=2.0,
    pareto_samples=2,
    pareto_schemes=(1,),
    fewer_samples=1,
    methods=METHODS,
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
        "asha": {
            "metric": "best_val_top1",
            "mode": "max",
            "grace_period": setting.grace_period,
            "reduction_factor": setting.reduction_factor,
        },
    }
    pareto = {
        **tpe,
        "num_samples": setting.pareto_samples,
        "startup_trials": max(1, setting.pareto_samples // 2),
        "metric": ["best_val_top1", "budget_params"],
        "mode": ["max", "min"],
        "params": {
            "budget.policy": {"choice": ["velocity", "random"]},
            "budget.scheme": {"choice": [SCHEMES[s] for s in setting.pareto_schemes]},
            "training.lr": {"loguniform": list(setting.pareto_lr_range)},
        },
    }
    raws = {
        "grid": grid,
        "tpe": tpe,
        "tpe+asha": asha,
        BUDGETED: {**asha, "max_trial_epochs": max(1, setting.grid_size * setting.epochs // 3)},
        "tpe+asha, fewer trials": {**asha, "num_samples": setting.fewer_samples, "startup_trials": max(1, setting.fewer_samples // 3)},
        "tpe+asha, no actor reuse": {**asha, "reuse_actors": False},
        "pareto": pareto,
    }
    return {
        name: build_space({**base_space(setting, "bench"), "search": raws[name]}, f"<benchmark {name}>")
        for name in METHODS
        if name in setting.methods
    }


def experiment_slug(method: str) -> str:
    """A method's name as a directory name: letters and digits, runs of anything else as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")


def overhead_parts(experiment_dir: Path, trials: pd.DataFrame) -> dict[str, float]:
    """Where a trial's overhead goes, from Ray's per-trial ``result.json`` (medians over the trials).

    Tune stamps every result with ``time_this_iter_s``, the worker's time
    between two results; the trainer's ``epoch_time_s`` is the epoch alone
    (training, mask reselection, evaluation). Their difference is, at the
    first result, the trial's start in the worker (config, model, data
    loaders, the first velocity pass) and at later ones the checkpoint and
    report of the previous epoch. What remains of the trial's wall time
    (the driver's ``wall_time_s`` minus the sum of ``time_this_iter_s``) is
    the driver: Tune's scheduling and our callbacks between results.
    """
    starts, reports, drivers = [], [], []
    for trial in trials.itertuples():
        log = experiment_dir / f"trial_{trial.trial_id}" / "result.json"
        if not log.is_file():
            continue
        results = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        extra = [float(r["time_this_iter_s"]) - float(r["epoch_time_s"]) for r in results if "epoch_time_s" in r]
        if not extra:
            continue
        starts.append(extra[0])
        reports.extend(extra[1:])
        drivers.append(float(trial.wall_time_s) - sum(float(r["time_this_iter_s"]) for r in results))
    median = statistics.median
    return {
        "start_in_worker_s": median(starts) if starts else math.nan,
        "report_per_epoch_s": median(reports) if reports else math.nan,
        "driver_per_trial_s": median(drivers) if drivers else math.nan,
    }


def _results(experiment_dir: Path, trial_id: str) -> list[dict[str, Any]]:
    log = experiment_dir / f"trial_{trial_id}" / "result.json"
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def epochs_to_reach(experiment_dir: Path, trials: pd.DataFrame, target: float) -> float:
    """Trial-epochs the search had spent when its incumbent first reached ``target`` test top-1 (NaN: never).

    The incumbent is, after every epoch any trial finished (in the order
    they finished: the trial's start plus Tune's ``time_total_s``), the trial
    with the best validation top-1 so far; what counts is its test top-1 at
    its best validation epoch, so selection never looks at test.
    """
    events: list[tuple[float, str, dict[str, Any]]] = []
    for trial in trials.itertuples():
        for result in _results(experiment_dir, str(trial.trial_id)):
            if "best_val_top1" in result and "time_total_s" in result:
                events.append((float(trial.start_time_s) + float(result["time_total_s"]), str(trial.trial_id), result))
    latest: dict[str, dict[str, Any]] = {}
    for spent, (_, trial_id, result) in enumerate(sorted(events, key=lambda e: (e[0], e[1])), start=1):
        latest[trial_id] = result
        scored = [(float(r["best_val_top1"]), tid) for tid, r in latest.items() if finite(r.get("best_val_top1"))]
        if not scored:
            continue
        _, incumbent = min(scored, key=lambda v: (-v[0], v[1]))
        test = latest[incumbent].get("test_top1_at_best_val", math.nan)
        if finite(test) and float(test) >= target:
            return float(spent)
    return math.nan


def summarize(
    method: str,
    space: Space,
    trials: pd.DataFrame,
    wall_s: float,
    grid: dict[str, Any] | None,
    experiment_dir: Path | None = None,
) -> dict[str, Any]:
    """One row of the table from a method's trials table (``grid``: the grid's row, for the ratios)."""
    done = trials[trials.status.isin(["TERMINATED", "STOPPED"]) & trials.best_val_top1.map(finite)]
    best = done.sort_values(["best_val_top1", "trial_id"], ascending=[False, True]).iloc[0] if len(done) else None
    epochs = int(trials.epochs_run.sum())
    train_s = float(trials.train_time_s.sum())
    slots = int(space.search.max_concurrent)
    active_s = float(trials.end_time_s.max() - trials.start_time_s.min()) if len(trials) else math.nan
    per_trial = [float(x) for x in trials.wall_time_s - trials.train_time_s]
    row: dict[str, Any] = {
        "method": method,
        "configurations": len(trials),
        "stopped_early": int((trials.status == "STOPPED").sum()),
        "failed": int((trials.status == "ERROR").sum()),
        "trial_epochs": epochs,
        "epochs_vs_grid": epochs / grid["trial_epochs"] if grid else (1.0 if method == "grid" else math.nan),
        "best_val_top1": float(best.best_val_top1) if best is not None else math.nan,
        "test_top1_of_best": float(best.test_top1_at_best_val) if best is not None else math.nan,
        "best_config": ", ".join(f"{k}={_fmt(best[k])}" for k in space.search.params) if best is not None else "",
        "max_test_top1": float(done.test_top1_at_best_val.max()) if len(done) else math.nan,
        "wall_s": wall_s,
        "train_s": train_s,
        "overhead_per_trial_s": (wall_s * slots - train_s) / max(len(trials), 1),
        "steady_overhead_per_trial_s": (active_s * slots - train_s) / max(len(trials), 1),
        "in_trial_overhead_median_s": float(statistics.median(per_trial)) if len(per_trial) else math.nan,
        "in_trial_overhead_max_s": float(max(per_trial)) if len(per_trial) else math.nan,
        "in_trial_overhead_per_epoch_s": float(sum(per_trial) / epochs) if epochs else math.nan,
        **(overhead_parts(experiment_dir, trials) if experiment_dir is not None else {}),
        "experiment": experiment_dir.name if experiment_dir is not None else "",
    }
    reference = grid if grid is not None else (row if method == "grid" else None)
    if reference is not None and experiment_dir is not None:
        target = float(reference["test_top1_of_best"]) - 1.0
        row["epochs_to_grid_best_minus_1"] = epochs_to_reach(experiment_dir, trials, target)
        row["epochs_to_target_vs_grid"] = row["epochs_to_grid_best_minus_1"] / reference["trial_epochs"]
    return row


def _reached(row: dict[str, Any]) -> str:
    spent = row.get("epochs_to_grid_best_minus_1", math.nan)
    if not finite(spent):
        return "never" if "epochs_to_grid_best_minus_1" in row else "-"
    return f"{spent:.0f} ({row['epochs_to_target_vs_grid']:.2f})"


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown(rows: Sequence[dict[str, Any]], setting: Setting, pareto: Sequence[dict[str, Any]], comparison: str) -> str:
    """The Markdown report: the methods table, the Pareto set and the dominance check."""
    lines = [
        "# Search efficiency on digits",
        "",
        f"Setting: {setting.describe()}.",
        "",
    ]
    methods = [
        (r["method"], r["configurations"], r["stopped_early"], r["trial_epochs"], f"{r['epochs_vs_grid']:.2f}", f"{r['best_val_top1']:.2f}",
         f"{r['test_top1_of_best']:.2f}", f"{r['max_test_top1']:.2f}", _reached(r), f"{r['wall_s']:.1f}", f"{r['train_s']:.1f}",
         f"{r['overhead_per_trial_s']:.2f}", f"{r['steady_overhead_per_trial_s']:.2f}")
        for r in rows
    ]  # fmt: skip
    header = ["method", "configs", "stopped early", "trial-epochs", "vs grid", "best val top-1", "test top-1 of best", "max test top-1",
              "incumbent within 1 pt of grid's best after (trial-epochs, vs grid)", "wall s", "train s", "overhead / trial s",
              "steady overhead / trial s"]  # fmt: skip
    lines += table_lines(header, methods)
    lines += ["", "Best configurations (by validation):", ""]
    lines += [f"- {r['method']}: {r['best_config']}" for r in rows]
    lines += [
        "",
        "`test top-1 of best`: test top-1 at the best validation epoch of the trial with the best validation top-1 "
        "(selection never looks at test). `incumbent within 1 pt`: the trial-epochs spent (in the order epochs finished) "
        "until the trial with the best validation top-1 so far had a test top-1 at most 1 point below the grid's final "
        "`test top-1 of best`. `overhead / trial`: (wall x slots - training time) / trials, the search's "
        "start (Tuner set-up, first Ray workers importing torch) included. `steady overhead / trial`: the same from the first "
        "trial's start to the last trial's end.",
        "",
        "## Per-trial overhead: a trial's wall time minus its epochs' time",
        "",
    ]
    overheads = [
        (r["method"], f"{r['trial_epochs'] / max(r['configurations'], 1):.1f}", f"{r['in_trial_overhead_median_s']:.2f}",
         f"{r['in_trial_overhead_max_s']:.2f}", f"{r.get('start_in_worker_s', math.nan):.2f}", f"{r.get('report_per_epoch_s', math.nan):.3f}",
         f"{r.get('driver_per_trial_s', math.nan):.2f}")
        for r in rows
    ]  # fmt: skip
    header = ["method", "epochs / trial (mean)", "wall - train per trial s (median)", "(max)", "start in worker s", "checkpoint + report per epoch s",
              "driver per trial s"]  # fmt: skip
    lines += table_lines(header, overheads)
    lines += [
        "",
        "Medians over the trials, from Ray's per-trial `result.json`: `start in worker`: the first result's "
        "`time_this_iter_s` minus its epoch (config, model, data loaders, first velocity pass; a new worker's imports "
        "are not in it); `checkpoint + report per epoch`: the same at later results (the report handed to "
        "`tune.report`, and at the epochs where `search.checkpoint_interval_s` had passed the full run state saved with "
        "`torch.save` and copied into the trial directory by Tune); `driver per trial`: the "
        "trial's wall time minus all its `time_this_iter_s` (Tune's scheduling and the result callbacks).",
        "",
        "## Two objectives: best validation top-1 (max) and budget in parameters (min)",
        "",
    ]
    front = [
        (p["trial_id"], p["budget.policy"], p["budget.scheme"], f"{p['training.lr']:.3g}", int(p["budget_params"]), f"{p['best_val_top1']:.2f}",
         f"{p['test_top1_at_best_val']:.2f}")
        for p in pareto
    ]  # fmt: skip
    lines += table_lines(["trial", "policy", "scheme", "lr", "budget params", "best val top-1", "test top-1 at best val"], front)
    lines += ["", comparison, ""]
    return "\n".join(lines)


def _best_by_val(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the best validation top-1 (ties: the smaller trial id)."""
    return sorted(rows, key=lambda r: (-float(r["best_val_top1"]), str(r["trial_id"])))[0]


def dominance_note(trials: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> str:
    """Whether velocity beats random at equal budget, and whether velocity trials dominate random ones.

    Per budget both policies ran at, each policy's trial is the one with the
    best validation top-1 (selection never looks at test); its test top-1 at
    the best validation epoch is what is compared. Then, over all trials:
    how many random trials some velocity trial dominates in both objectives.
    """
    rows = [r for r in trials.to_dict("records") if finite(r.get("best_val_top1")) and finite(r.get("budget_params"))]
    by_val = compare_policies_at_budget(rows, first="velocity", second="random", score="best_val_top1")
    parts = []
    wins = 0
    for c in by_val:
        at = [r for r in rows if float(r["budget_params"]) == c.budget]
        v = _best_by_val([r for r in at if r["budget.policy"] == "velocity"])
        r_ = _best_by_val([r for r in at if r["budget.policy"] == "random"])
        won = float(v["test_top1_at_best_val"]) > float(r_["test_top1_at_best_val"])
        wins += won
        parts.append(
            f"{int(c.budget)} params: velocity {v['test_top1_at_best_val']:.2f} (val {v['best_val_top1']:.2f}) vs random "
            f"{r_['test_top1_at_best_val']:.2f} (val {r_['best_val_top1']:.2f})"
        )
    if by_val:
        verdict = (
            "velocity beats random at every shared budget"
            if wins == len(by_val)
            else f"velocity beats random at {wins} of {len(by_val)} shared budgets, so it does NOT dominate here"
        )
        equal = f"At equal budget (per policy the trial with the best validation top-1; its test top-1 at best val): {'; '.join(parts)}: {verdict}."
    else:
        equal = "At equal budget: the search did not sample both policies at any one budget, so no comparison."
    velocity = [r for r in rows if r["budget.policy"] == "velocity"]
    random_ = [r for r in rows if r["budget.policy"] == "random"]
    dominated = sum(any(dominates(v, r, metrics, modes) for v in velocity) for r in random_)
    front = pareto_front(rows, metrics, modes)
    front_random = sum(r["budget.policy"] == "random" for r in front)
    overall = (
        f"Over all {len(rows)} trials ({len(velocity)} velocity, {len(random_)} random): a velocity trial dominates "
        f"{dominated} of the {len(random_)} random trials in both objectives; the Pareto set holds {len(front)} trials, "
        f"{front_random} of them random."
    )
    return f"Velocity against random. {equal} {overall}"


def write_outputs(
    rows: Sequence[dict[str, Any]], setting: Setting, pareto: Sequence[dict[str, Any]] | None, note: str, out_dir: Path
) -> pd.DataFrame:
    """Write the methods table, the Pareto set (when that search ran) and the Markdown report; return the table."""
    table = pd.DataFrame(list(rows))
    table["setting"] = setting.describe()
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(table):
        write_atomic(rows_to_table(table.to_dict("records")), out_dir / "search_efficiency.parquet")
    if pareto is not None:
        columns = ["trial_id", "budget.policy", "budget.scheme", "training.lr", "budget_params", "best_val_top1", "test_top1_at_best_val"]
        front = rows_to_table([{k: p[k] for k in columns} for p in pareto])
        front = front.replace_schema_metadata({**(front.schema.metadata or {}), NOTE_KEY: note.encode()})
        write_atomic(front, out_dir / "search_efficiency.pareto.parquet")
    write_atomically(out_dir / "search_efficiency.md", lambda p: p.write_text(markdown(rows, setting, pareto or [], note)))
    return table


class PreviousRunError(ValueError):
    """``--add`` found no usable earlier tables in the output directory."""


def previous_outputs(setting: Setting, out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, str]:
    """The methods rows, Pareto set and note of an earlier run of the same setting in ``out_dir`` (for ``--add``).

    Raises:
        PreviousRunError: no table there, or one written for another setting.
    """
    path = out_dir / "search_efficiency.parquet"
    if not path.is_file():
        raise PreviousRunError(f"{path}: no earlier table")
    table = pd.read_parquet(path)
    settings = set(table["setting"]) if "setting" in table else set()
    if settings != {setting.describe()}:
        raise PreviousRunError(f"{path}: written for another setting ({'; '.join(sorted(settings)) or 'none'})")
    rows = [{k: v for k, v in r.items() if k != "setting"} for r in table.to_dict("records")]
    front_path = out_dir / "search_efficiency.pareto.parquet"
    if not front_path.is_file():
        return rows, None, ""
    front = pq.read_table(front_path)
    note = (front.schema.metadata or {}).get(NOTE_KEY, b"").decode()
    return rows, front.to_pylist(), note


def resummarize(rows: Sequence[dict[str, Any]], setting: Setting, results_dir: Path) -> list[dict[str, Any]]:
    """The rows recomputed from their experiments' tables in ``results_dir`` (rows whose experiment is gone stay)."""
    spaces = method_spaces(Setting(**{**asdict(setting), "methods": METHODS}))
    grid: dict[str, Any] | None = None
    out = []
    for row in sorted(rows, key=lambda r: METHODS.index(r["method"])):
        experiment = results_dir / str(row.get("experiment") or "")
        if row.get("experiment") and (experiment / "trials.parquet").exists():
            trials = pd.read_parquet(experiment / "trials.parquet")
            row = summarize(row["method"], spaces[row["method"]], trials, float(row["wall_s"]), grid, experiment)
        if row["method"] == "grid":
            grid = row
        out.append(dict(row))
    return out


def run_benchmark(setting: Setting, *, out_dir: Path, results_dir: Path, echo: Any = print, add: bool = False) -> pd.DataFrame:
    """Run every method of ``setting``, writing the tables after each one; return the methods table.

    With ``add``, the rows of an earlier run of the same setting in
    ``out_dir`` are kept for the methods this run does not repeat.
    """
    from neqtune.search.experiment import run_search

    spaces = method_spaces(setting)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows: list[dict[str, Any]] = []
    pareto_rows: list[dict[str, Any]] | None = None
    note = ""
    if add:
        previous, pareto_rows, note = previous_outputs(setting, out_dir)
        rows = [r for r in previous if r["method"] not in spaces]
        if "pareto" in spaces:
            pareto_rows, note = None, ""
    grid: dict[str, Any] | None = next((r for r in rows if r["method"] == "grid"), None)
    table = pd.DataFrame()
    for method, space in spaces.items():
        name = f"bench-{experiment_slug(method)}-{stamp}"
        echo(f"== {method}: {space.num_trials()} trials -> {results_dir / name}")
        outcome = run_search(space, results_dir=results_dir, name=name, echo=lambda line: None)
        trials = pd.read_parquet(outcome.experiment_dir / "trials.parquet")
        if method == "pareto":
            pareto_rows = pareto_front(trials.to_dict("records"), space.search.metrics, space.search.modes)
            note = dominance_note(trials, space.search.metrics, space.search.modes)
            echo(f"   {note}")
        else:
            row = summarize(method, space, trials, outcome.wall_time_s, grid, outcome.experiment_dir)
            if method == "grid":
                grid = row
            rows.append(row)
            rows.sort(key=lambda r: METHODS.index(r["method"]))
            echo(
                f"   {row['trial_epochs']} trial-epochs, best val {row['best_val_top1']:.2f}, "
                f"test {row['test_top1_of_best']:.2f}, {row['wall_s']:.0f} s"
            )
        table = write_outputs(rows, setting, pareto_rows, note, out_dir)
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_efficiency", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the pipeline, numbers mean nothing)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"where the Markdown and Parquet tables go (default {DEFAULT_OUT}; --quick: {QUICK_OUT})"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="where the searches' experiment directories go")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at a time (default 2)")
    parser.add_argument(
        "--render",
        action="store_true",
        help="recompute the rows of the table in --out from their experiments, rewrite the report (no search)",
    )
    parser.add_argument("--add", action="store_true", help="keep the other methods' rows of an earlier run of the same setting in --out")
    parser.add_argument(
        "--method",
        action="append",
        dest="methods",
        default=None,
        help=f"a method to run (repeat for several): {'; '.join(METHODS)} (default: all but tpe and no actor reuse; --quick: all)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    out: Path = args.out if args.out is not None else (QUICK_OUT if args.quick else DEFAULT_OUT)
    setting = QUICK if args.quick else Setting()
    if args.max_concurrent is not None:
        if args.max_concurrent < 1:
            print(f"error: --max-concurrent: must be >= 1, got {args.max_concurrent}")
            return 2
        setting = Setting(**{**asdict(setting), "max_concurrent": args.max_concurrent})
    if args.methods is not None:
        methods = tuple(m.strip() for m in args.methods)
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            print(f"error: --method: unknown {unknown}; choose from {'; '.join(METHODS)}")
            return 2
        setting = Setting(**{**asdict(setting), "methods": methods})
    if args.add or args.render:
        try:
            rows, pareto, note = previous_outputs(setting, out)
        except PreviousRunError as err:
            print(f"error: {'--render' if args.render else '--add'}: {err}")
            return 2
        if args.render:
            write_outputs(resummarize(rows, setting, args.results), setting, pareto, note, out)
            print((out / "search_efficiency.md").read_text())
            return 0
    table = run_benchmark(setting, out_dir=out, results_dir=args.results, add=args.add)
    print((out / "search_efficiency.md").read_text())
    return 0 if len(table) else 1


if __name__ == "__main__":
    raise SystemExit(main())
