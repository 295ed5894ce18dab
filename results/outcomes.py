"""What the analysis computes from the merged tables: per-trial outcomes, the study's table, the Pareto fronts.

Owns the rule for a trial's best epoch (the first with the highest validation top-1), which trials are
usable and why the others are not, the study's table rows aggregated over seeds, and the fronts of
test top-1 versus budget and versus measured memory; :func:`analyze` puts them into one
:class:`~neqtune.results.model.Analysis`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from neqtune.pareto import cost_score_mask
from neqtune.results.loading import EPOCH_COLUMNS, EPOCHS_TABLE, SEED_KEY, TRIAL_KEY, TRIALS_TABLE
from neqtune.results.model import Analysis, Experiments

# The study's table rows: the data set (its label: an image folder's own name; "-" in tables older than the
# column), model, scheme, budget unit, budget (in parameters, or in memory elements per image),
# initialization, policy. A trial has one of the two budgets; the other is null (both are columns of its epoch rows).
GROUP_KEYS = ("data.label", "model.name", "budget.scheme", "budget.unit", "budget_params", "memory_budget", "budget.initialization", "budget.policy")
BUDGET_AMOUNTS = ("budget_params", "memory_budget")
# Per-epoch memory metrics a trial reports (absent in older tables); the analysis averages them over the trial's epochs.
MEMORY_METRICS = ("memory_used", "memory_used_kb", "activation_sparsity_pct")
BYTES_PER_ELEMENT = "budget.bytes_per_element"
# The configured memory budget: when set, the trainer's memory budget is this number (elements per image).
CONFIG_MEMORY = "budget.memory"
MISSING = "-"  # a config value that is not set (no scheme), in tables and plots
# Normal ends of a trial: ran all its epochs, or stopped early by a scheduler.
ENDED = ("TERMINATED", "STOPPED")


def is_set(value: Any) -> bool:
    """Whether a table value is set (neither null nor NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _config_value(epoch_rows: pd.DataFrame, trial_row: pd.Series | None, column: str) -> Any:
    """A trial's config value: from its summary row, else from its first epoch row."""
    if trial_row is not None and column in trial_row.index and is_set(trial_row[column]):
        return trial_row[column]
    if not epoch_rows.empty and column in epoch_rows.columns:
        return epoch_rows[column].iloc[0]
    return None


def best_epoch(epoch_rows: pd.DataFrame) -> pd.Series | None:
    """The row of the first epoch with the highest validation top-1 (None if none was evaluated).

    Ties go to the earliest epoch, as in the trainer; the test split plays
    no part in the choice.
    """
    evaluated = epoch_rows[epoch_rows["val_top1"].notna()].sort_values("epoch", kind="stable")
    if evaluated.empty:
        return None
    return evaluated.loc[evaluated["val_top1"].idxmax()]


def _epoch_mean(epoch_rows: pd.DataFrame, column: str) -> float:
    """Mean of a per-epoch metric over the trial's epoch rows that hold it; NaN if none does (or the column is absent)."""
    if column not in epoch_rows.columns:
        return math.nan
    values = pd.to_numeric(epoch_rows[column]).dropna()
    return float(values.mean()) if len(values) else math.nan


def _memory_budget_kb(memory_budget: Any, bytes_per_element: Any) -> float:
    """A memory budget (elements per image) in kB at the trial's bytes per element; NaN without a memory budget."""
    if not is_set(memory_budget) or not is_set(bytes_per_element):
        return math.nan
    return float(memory_budget) * float(bytes_per_element) / 1024


def _trial_outcome(experiment: str, trial_id: str, epoch_rows: pd.DataFrame, trial_row: pd.Series | None) -> dict[str, Any]:
    best = best_epoch(epoch_rows)
    epochs_seen = sorted(int(e) for e in epoch_rows["epoch"]) if not epoch_rows.empty else []
    status = str(trial_row["status"]) if trial_row is not None else "NO_SUMMARY"
    problems: list[str] = []
    if status == "ERROR":
        error = trial_row.get("error") if trial_row is not None else None
        problems.append(f"crashed: {error}" if is_set(error) else "crashed")
    elif status == "NO_SUMMARY":
        problems.append(f"partial: epoch rows but no {TRIALS_TABLE} row (still running, or its driver stopped)")
    elif status not in ENDED:
        problems.append(f"status {status}")
    if not epochs_seen:
        problems.append(f"no epoch rows in {EPOCHS_TABLE}")
    elif best is None:
        problems.append("no evaluated epoch, so no best epoch")
    if epochs_seen and epochs_seen != list(range(1, epochs_seen[-1] + 1)):
        gaps = sorted(set(range(1, epochs_seen[-1] + 1)) - set(epochs_seen))
        problems.append(f"epoch rows missing: {', '.join(map(str, gaps)) or 'duplicates'}")
    if best is not None and trial_row is not None and "best_epoch" in trial_row.index and is_set(trial_row["best_epoch"]):
        if int(trial_row["best_epoch"]) not in (0, int(best["epoch"])) and status in ENDED and "/seed" not in trial_id:
            problems.append(f"{TRIALS_TABLE} says best epoch {int(trial_row['best_epoch'])}, the epoch rows say {int(best['epoch'])}")
    usable = status in ENDED and best is not None
    row: dict[str, Any] = {
        "experiment": experiment,
        "trial_id": trial_id,
        "status": status,
        **{key: _config_value(epoch_rows, trial_row, key) for key in (*GROUP_KEYS, SEED_KEY)},
        "epochs_run": epochs_seen[-1] if epochs_seen else 0,
        "best_val_top1": float(best["val_top1"]) if best is not None else math.nan,
        "best_epoch": int(best["epoch"]) if best is not None else None,
        "test_top1_at_best_val": float(best["test_top1"]) if best is not None else math.nan,
        **{column: _epoch_mean(epoch_rows, column) for column in MEMORY_METRICS},
        "usable": usable,
        "problem": "; ".join(problems) if problems else None,
    }
    if not epoch_rows.empty:
        for amount in BUDGET_AMOUNTS:
            if amount in epoch_rows.columns:
                row[amount] = epoch_rows[amount].iloc[-1]
    elif not is_set(row["memory_budget"]):  # crashed before an epoch: its config still names a memory budget
        row["memory_budget"] = _config_value(epoch_rows, trial_row, CONFIG_MEMORY)
    row["memory_budget_kb"] = _memory_budget_kb(row["memory_budget"], _config_value(epoch_rows, trial_row, BYTES_PER_ELEMENT))
    return row


def trial_outcomes(experiments: Experiments) -> pd.DataFrame:
    """One row per trial of any table: its config keys, best epoch by validation, usability.

    Columns: ``experiment``, ``trial_id``, ``status`` (``TERMINATED``,
    ``STOPPED`` early by a scheduler, ``ERROR``, or ``NO_SUMMARY`` when
    only epoch rows exist), the
    :data:`GROUP_KEYS` and the seed, ``epochs_run`` (the last epoch
    row: the stopping epoch), ``best_val_top1``, ``best_epoch``,
    ``test_top1_at_best_val``, ``memory_budget_kb`` (the memory budget in
    kB), the means over the trial's epochs of :data:`MEMORY_METRICS`
    (``memory_used`` in elements per image, ``memory_used_kb``,
    ``activation_sparsity_pct``; NaN when its table has none), ``usable``
    (ended normally with a best epoch) and ``problem`` (why not, or a
    warning; None if all is well).
    """
    epochs, trials = experiments.epochs, experiments.trials
    by_trial = {key: rows for key, rows in epochs.groupby(list(TRIAL_KEY), sort=False)} if not epochs.empty else {}
    summaries = {(row["experiment"], row["trial_id"]): row for _, row in trials.iterrows()} if not trials.empty else {}
    empty = epochs.iloc[0:0] if not epochs.empty else pd.DataFrame(columns=list(EPOCH_COLUMNS))
    keys = list(dict.fromkeys([*summaries, *by_trial]))
    rows = [_trial_outcome(str(k[0]), str(k[1]), by_trial.get(k, empty), summaries.get(k)) for k in keys]
    columns = [
        *TRIAL_KEY,
        "status",
        *GROUP_KEYS,
        SEED_KEY,
        "epochs_run",
        "best_val_top1",
        "best_epoch",
        "test_top1_at_best_val",
        "memory_budget_kb",
        *MEMORY_METRICS,
        "usable",
        "problem",
    ]
    outcomes = pd.DataFrame(rows, columns=columns)
    for key in GROUP_KEYS:
        if key not in BUDGET_AMOUNTS:
            outcomes[key] = outcomes[key].map(lambda v: str(v) if is_set(v) else MISSING)
    for amount in BUDGET_AMOUNTS:
        outcomes[amount] = pd.array([int(v) if is_set(v) else None for v in outcomes[amount]], dtype="Int64")
    for column in ("memory_budget_kb", *MEMORY_METRICS):
        outcomes[column] = outcomes[column].astype(float)
    outcomes["best_epoch"] = pd.array(outcomes["best_epoch"].tolist(), dtype="Int64")
    outcomes["usable"] = outcomes["usable"].astype(bool)
    return outcomes


# --- the study's table ----------------------------------------------------------
def _std(values: pd.Series) -> float:
    """Sample standard deviation (n - 1); NaN for fewer than two values."""
    return float(values.std(ddof=1)) if len(values) >= 2 else math.nan


def _join(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values)


def trial_configs(experiments: Experiments) -> pd.DataFrame:
    """Every trial's resolved config (the dotted columns of its first epoch row), indexed by experiment and trial id.

    List values become their text, so that configs can be compared.
    """
    epochs = experiments.epochs
    if epochs.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=list(TRIAL_KEY)))
    first = epochs.sort_values("epoch", kind="stable").groupby(list(TRIAL_KEY), sort=False).head(1).set_index(list(TRIAL_KEY))
    configs = first[[c for c in first.columns if "." in c]]
    return configs.apply(lambda column: column.map(lambda v: str(list(v)) if isinstance(v, list | tuple | np.ndarray) else v))


def _mixed_settings(trials: pd.DataFrame, configs: pd.DataFrame) -> str:
    """The config keys, besides the row's keys and the seed, on which the trials of one table row differ."""
    keys = [(e, t) for e, t in zip(trials["experiment"], trials["trial_id"], strict=True) if (e, t) in configs.index]
    if len(keys) < 2:
        return ""
    rows = configs.loc[keys]
    varied = [c for c in rows.columns if c not in (*GROUP_KEYS, SEED_KEY) and rows[c].astype(str).nunique(dropna=False) > 1]
    return ", ".join(varied)


def _mean(values: pd.Series) -> float:
    """Mean of the values that are set; NaN if none is."""
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def _table_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by model, then parameter budgets before memory budgets, by amount, then scheme, unit, initialization, policy."""
    is_memory = table["budget_params"].isna() & table["memory_budget"].notna()
    order = pd.DataFrame(
        {
            "model": table["model.name"],
            "kind": is_memory.astype(int),
            "amount": table["budget_params"].where(~is_memory, table["memory_budget"]),
            **{key: table[key] for key in ("budget.scheme", "budget.unit", "budget.initialization", "budget.policy")},
        }
    )
    return table.loc[order.sort_values(list(order.columns), kind="stable").index].reset_index(drop=True)


def study_table(outcomes: pd.DataFrame, configs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The study's table: one row per (model, scheme, unit, budget, initialization, policy).

    The budget is ``budget_params`` for a parameter budget or
    ``memory_budget`` (elements per image) for a memory budget; the other
    is null, and so is ``budget.unit`` (``-``) in tables older than memory
    budgets. Rows run by model, then parameter budgets before memory
    budgets, each by amount. Usable trials are aggregated over seeds: best
    validation top-1, test top-1 at the best validation epoch and the
    stopping epoch (epochs run) as mean and sample standard deviation (NaN
    for one seed), the best epochs and seeds listed in seed order,
    ``n_seeds`` usable trials and ``n_excluded`` trials of the row left out
    (see problems). A row whose trials were all excluded stays in the table
    with ``n_seeds`` 0. ``memory_budget_kb`` is the memory budget in kB.
    ``memory_used_mean`` (elements per image), ``memory_used_kb_mean`` and
    ``activation_sparsity_pct_mean`` are the mean over seeds of each
    trial's mean over its epochs, so a dynamic policy's memory counts every
    epoch it trained; they are measured for parameter budgets too, and NaN
    where the tables hold no memory metrics.
    Given the trials' ``configs`` (:func:`trial_configs`), ``mixed_settings``
    names the other config keys on which a row's trials differ (an Optuna
    search's learning rates, say), so that such rows are not mistaken for
    seed repeats.
    """
    columns = [
        *GROUP_KEYS, "n_seeds", "seeds", "best_val_top1_mean", "best_val_top1_std", "best_epochs",
        "test_top1_mean", "test_top1_std", "stop_epoch_mean", "stop_epoch_std", "memory_budget_kb",
        *(f"{metric}_mean" for metric in MEMORY_METRICS), "n_excluded", "mixed_settings",
    ]  # fmt: skip
    known = outcomes[outcomes["budget_params"].notna() | outcomes["memory_budget"].notna() | outcomes["usable"]]
    rows = []
    for key, group in known.groupby(list(GROUP_KEYS), sort=False, dropna=False):
        used = group[group["usable"]].sort_values([SEED_KEY, "experiment", "trial_id"], kind="stable")
        rows.append(
            {
                **dict(zip(GROUP_KEYS, key, strict=True)),
                "n_seeds": len(used),
                "seeds": _join(used[SEED_KEY].tolist()),
                "best_val_top1_mean": float(used["best_val_top1"].mean()) if len(used) else math.nan,
                "best_val_top1_std": _std(used["best_val_top1"]),
                "best_epochs": _join(used["best_epoch"].tolist()),
                "test_top1_mean": float(used["test_top1_at_best_val"].mean()) if len(used) else math.nan,
                "test_top1_std": _std(used["test_top1_at_best_val"]),
                "stop_epoch_mean": float(used["epochs_run"].mean()) if len(used) else math.nan,
                "stop_epoch_std": _std(used["epochs_run"].astype(float)),
                "memory_budget_kb": _mean(group["memory_budget_kb"]),
                **{f"{metric}_mean": _mean(used[metric]) for metric in MEMORY_METRICS},
                "n_excluded": int((~group["usable"]).sum()),
                "mixed_settings": _mixed_settings(used, configs) if configs is not None else "",
            }
        )
    table = pd.DataFrame(rows, columns=columns)
    if table.empty:
        return table
    for amount in BUDGET_AMOUNTS:
        table[amount] = table[amount].astype("Int64")
    return _table_order(table)


# --- Pareto front ---------------------------------------------------------------
def pareto_front(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The usable trials on the Pareto front of test top-1 (max) versus budget (min), by budget."""
    used = outcomes[outcomes["usable"] & outcomes["budget_params"].notna()]
    front = used[cost_score_mask(used["budget_params"].astype(float).tolist(), used["test_top1_at_best_val"].tolist())]
    columns = [*TRIAL_KEY, *GROUP_KEYS, SEED_KEY, "best_epoch", "best_val_top1", "test_top1_at_best_val"]
    return front.sort_values(["budget_params", "test_top1_at_best_val"], kind="stable")[columns].reset_index(drop=True)


def pareto_memory_front(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The usable trials on the Pareto front of test top-1 (max) versus measured memory (min), by memory.

    The memory of a trial is its ``memory_used``, the mean over its epochs
    (elements per image), so trials of parameter and of memory budgets
    compete on one front; trials that report no memory are left out.
    """
    used = outcomes[outcomes["usable"] & outcomes["memory_used"].notna()]
    front = used[cost_score_mask(used["memory_used"].tolist(), used["test_top1_at_best_val"].tolist())]
    columns = [
        *TRIAL_KEY,
        *GROUP_KEYS,
        "memory_budget_kb",
        SEED_KEY,
        "best_epoch",
        "best_val_top1",
        "test_top1_at_best_val",
        *MEMORY_METRICS,
    ]
    return front.sort_values(["memory_used", "test_top1_at_best_val"], kind="stable")[columns].reset_index(drop=True)


def analyze(experiments: Experiments) -> Analysis:
    """The per-trial outcomes, the study's table, the Pareto front(s) and the problems.

    The front by measured memory is computed when some trial has a memory budget.
    """
    outcomes = trial_outcomes(experiments)
    problems = outcomes[outcomes["problem"].notna()][[*TRIAL_KEY, "status", *GROUP_KEYS, SEED_KEY, "usable", "problem"]]
    return Analysis(
        outcomes=outcomes,
        table=study_table(outcomes, trial_configs(experiments)),
        pareto=pareto_front(outcomes),
        problems=problems.rename(columns={"usable": "in_table"}).reset_index(drop=True),
        pareto_memory=pareto_memory_front(outcomes) if outcomes["memory_budget"].notna().any() else None,
    )
