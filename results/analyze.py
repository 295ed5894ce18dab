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
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from neqtune.results.model import Analysis, AnalysisInputError, Experiments
from neqtune.search.pareto import cost_score_mask

# The tables neqtune.search.tables writes (importing the search package would pull in Ray and torch: seconds per command).
EPOCHS_TABLE = "epochs.parquet"
TRIALS_TABLE = "trials.parquet"
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
SEED_KEY = "training.seed"
TRIAL_KEY = ("experiment", "trial_id")
EPOCH_COLUMNS = (
    "experiment", "trial_id", "epoch", "val_top1", "test_top1", "budget_params",
    "model.name", "budget.scheme", "budget.initialization", "budget.policy", SEED_KEY,
)  # fmt: skip
TRIAL_COLUMNS = ("experiment", "trial_id", "status")
MISSING = "-"  # a config value that is not set (no scheme), in tables and plots
# Normal ends of a trial: ran all its epochs, or stopped early by a scheduler.
ENDED = ("TERMINATED", "STOPPED")
# A trial with seed repeats (``search.repeats`` > 1) reports the mean under the usual names and each seed's
# value in ``<metric>_seeds``, its seeds in ``seeds``: the analysis splits it into one trial per seed.
REPEAT_SEEDS = "seeds"
PER_SEED = {"val_top1": "val_top1_seeds", "test_top1": "test_top1_seeds"}


# --- reading -----------------------------------------------------------------
def _is_uri(location: Path | str) -> bool:
    return "://" in str(location)


def _filesystem(location: Path | str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's file system and path of a local directory or a URI (``s3://...``, with its query options)."""
    if not _is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(str(location))
        return fs, str(path)
    except (pa.ArrowException, ValueError, OSError) as error:
        raise AnalysisInputError(f"{location}: not a storage URI pyarrow can open ({str(error).splitlines()[0]})") from None


def _table_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """A table's Parquet files: the part files of its directory (neqtune's tables), or the file itself (older tables)."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type != pafs.FileType.Directory:
        return []
    found = fs.get_file_info(pafs.FileSelector(path))
    return sorted(i.path for i in found if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith((".", "_")))


def _read_table(path: Path | str, required: Sequence[str], fs: pafs.FileSystem | None = None) -> pa.Table:
    try:
        fs = fs or pafs.LocalFileSystem()
        files = _table_files(fs, str(path))
        if isinstance(fs, pafs.LocalFileSystem):
            schema = pa.unify_schemas([pq.read_schema(f, filesystem=fs) for f in files], promote_options="permissive") if files else pa.schema([])
            table = ds.dataset(files, schema=schema, filesystem=fs, format="parquet").to_table()
        else:  # object storage: each part in one request (a running search may replace its newest part meanwhile)
            parts = []
            for file in files:
                with fs.open_input_stream(file) as stream:
                    parts.append(pq.read_table(pa.BufferReader(stream.read())))
            table = pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})
    except (OSError, pa.ArrowException) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AnalysisInputError(f"{path}: not a readable Parquet table ({first_line})") from error
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise AnalysisInputError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def _concat(tables: list[pa.Table]) -> pd.DataFrame:
    if not tables:
        return pd.DataFrame()
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def _seed_list(value: Any) -> list[Any] | None:
    return list(value) if isinstance(value, list | tuple | np.ndarray) and len(value) > 1 else None


def split_seed_repeats(epochs: pd.DataFrame, trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One trial per seed for trials trained with seed repeats.

    A repeated trial's rows carry the seeds (``seeds``) and each seed's
    validation and test top-1 (``val_top1_seeds``, ``test_top1_seeds``);
    it becomes one trial per seed, ``<trial id>/seed<s>``, whose
    ``training.seed``, ``val_top1`` and ``test_top1`` are that seed's
    (other metrics stay the means over the seeds). Tables without these
    columns are returned unchanged.
    """
    if epochs.empty or REPEAT_SEEDS not in epochs.columns or not set(PER_SEED.values()) <= set(epochs.columns):
        return epochs, trials
    seeds_of: dict[tuple[str, str], list[Any]] = {}
    rows = []
    for _, epoch_row in epochs.iterrows():
        seeds = _seed_list(epoch_row[REPEAT_SEEDS])
        if seeds is None:
            rows.append(epoch_row)
            continue
        seeds_of[(epoch_row["experiment"], epoch_row["trial_id"])] = seeds
        for i, seed in enumerate(seeds):
            split = epoch_row.copy()
            split["trial_id"], split[SEED_KEY] = f"{epoch_row['trial_id']}/seed{seed}", seed
            for column, per_seed in PER_SEED.items():
                values = epoch_row[per_seed]
                split[column] = float(values[i]) if values is not None and len(values) > i else math.nan
            rows.append(split)
    split_trials = []
    for _, trial_row in trials.iterrows():
        seeds = seeds_of.get((trial_row["experiment"], trial_row["trial_id"]))
        for seed in seeds or [None]:
            split = trial_row.copy()
            if seed is not None:
                split["trial_id"], split[SEED_KEY] = f"{trial_row['trial_id']}/seed{seed}", seed
            split_trials.append(split)
    return pd.DataFrame(rows).reset_index(drop=True), pd.DataFrame(split_trials, columns=trials.columns).reset_index(drop=True)


def load_experiments(directories: Sequence[Path | str]) -> Experiments:
    """Read and merge the tables of the experiment directories (local paths or URIs).

    Every directory must hold ``epochs.parquet`` or ``trials.parquet`` (a
    running experiment may have the first only; one whose trials all
    failed before an epoch, the second only). Each table is a directory of
    Parquet part files, or one Parquet file (tables written before neqtune
    kept them as datasets).

    Raises:
        AnalysisInputError: a directory is missing, given twice or has no
            table; a table is unreadable or lacks a needed column; two
            directories hold the same trial.
    """
    if not directories:
        raise AnalysisInputError("no experiment directory given")
    epochs_tables: list[pa.Table] = []
    trials_tables: list[pa.Table] = []
    seen: dict[str, Path | str] = {}
    owner: dict[tuple[str, str], Path | str] = {}
    for directory in directories:
        fs, resolved = _filesystem(directory)
        if fs.get_file_info(resolved).type != pafs.FileType.Directory:
            raise AnalysisInputError(f"{directory}: not a directory")
        if resolved in seen:
            raise AnalysisInputError(f"{directory}: given twice")
        seen[resolved] = directory
        epochs_path, trials_path = f"{resolved}/{EPOCHS_TABLE}", f"{resolved}/{TRIALS_TABLE}"
        has_epochs, has_trials = (fs.get_file_info(p).type != pafs.FileType.NotFound for p in (epochs_path, trials_path))
        if not has_epochs and not has_trials:
            raise AnalysisInputError(f"{directory}: no {EPOCHS_TABLE} or {TRIALS_TABLE} (not an experiment directory?)")
        keys: set[tuple[str, str]] = set()
        if has_epochs:
            epochs = _read_table(epochs_path, EPOCH_COLUMNS, fs)
            epochs_tables.append(epochs)
            keys |= set(zip(epochs["experiment"].to_pylist(), epochs["trial_id"].to_pylist(), strict=True))
        if has_trials:
            trials = _read_table(trials_path, TRIAL_COLUMNS, fs)
            trials_tables.append(trials)
            keys |= set(zip(trials["experiment"].to_pylist(), trials["trial_id"].to_pylist(), strict=True))
        for key in keys:
            if key in owner:
                raise AnalysisInputError(f"{directory}: trial {key[0]}/{key[1]} is also in {owner[key]}")
            owner[key] = directory
    epochs, trials = split_seed_repeats(_concat(epochs_tables), _concat(trials_tables))
    return Experiments(epochs=epochs, trials=trials, sources=tuple(directories))


# --- per trial ----------------------------------------------------------------
def _is_set(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _config_value(epoch_rows: pd.DataFrame, trial_row: pd.Series | None, column: str) -> Any:
    """A trial's config value: from its summary row, else from its first epoch row."""
    if trial_row is not None and column in trial_row.index and _is_set(trial_row[column]):
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
    if not _is_set(memory_budget) or not _is_set(bytes_per_element):
        return math.nan
    return float(memory_budget) * float(bytes_per_element) / 1024


def _trial_outcome(experiment: str, trial_id: str, epoch_rows: pd.DataFrame, trial_row: pd.Series | None) -> dict[str, Any]:
    best = best_epoch(epoch_rows)
    epochs_seen = sorted(int(e) for e in epoch_rows["epoch"]) if not epoch_rows.empty else []
    status = str(trial_row["status"]) if trial_row is not None else "NO_SUMMARY"
    problems: list[str] = []
    if status == "ERROR":
        error = trial_row.get("error") if trial_row is not None else None
        problems.append(f"crashed: {error}" if _is_set(error) else "crashed")
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
    if best is not None and trial_row is not None and "best_epoch" in trial_row.index and _is_set(trial_row["best_epoch"]):
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
    elif not _is_set(row["memory_budget"]):  # crashed before an epoch: its config still names a memory budget
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
            outcomes[key] = outcomes[key].map(lambda v: str(v) if _is_set(v) else MISSING)
    for amount in BUDGET_AMOUNTS:
        outcomes[amount] = pd.array([int(v) if _is_set(v) else None for v in outcomes[amount]], dtype="Int64")
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


# --- text -----------------------------------------------------------------------
def mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std``; ``-`` for an undefined mean or standard deviation (one seed)."""
    if math.isnan(mean):
        return MISSING
    return f"{mean:.{digits}f} ± {MISSING if math.isnan(std) else f'{std:.{digits}f}'}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: Any, spec: str = ",") -> str:
    """A number in the given format; ``-`` when it is not set (null or NaN)."""
    return format(value, spec) if _is_set(value) and value is not pd.NA else MISSING


def _budget_text(r: pd.Series) -> str:
    """A row's budget in words: ``1,000 params``, ``20.0 kB memory`` or (without bytes per element) ``5,120 memory elements``."""
    if _number(r["budget_params"]) != MISSING:
        return f"{r['budget_params']:,} params"
    if _number(r.get("memory_budget_kb")) != MISSING:
        return f"{r['memory_budget_kb']:,.1f} kB memory"
    memory = r.get("memory_budget")
    return f"{memory:,} memory elements" if _number(memory) != MISSING else "no budget"


def _reports_memory(table: pd.DataFrame) -> bool:
    """Whether some row has a memory budget or measured memory (tables older than memory budgets have neither)."""
    return bool(table["memory_budget"].notna().any() or table["memory_used_kb_mean"].notna().any())


def table_markdown(table: pd.DataFrame) -> str:
    """The study's table as Markdown (accuracies in %, mean ± sample std over seeds).

    When some row reports memory, it also shows the unit, the memory budget
    and the mean memory used in kB, and the mean activation sparsity (%);
    otherwise it is the table of the study, as before memory budgets.
    """
    memory = _reports_memory(table)
    header = [
        "model", "scheme", *(["unit"] if memory else []), "budget (params)", *(["memory budget (kB)"] if memory else []),
        "init", "policy", "best val top-1 (%)", "best at epoch", "test top-1 at best val (%)", "stopping epoch",
        *(["memory used (kB)", "activation sparsity (%)"] if memory else []), "seeds", "n",
    ]  # fmt: skip
    rows = [
        [
            r["model.name"], r["budget.scheme"], *([r["budget.unit"]] if memory else []), _number(r["budget_params"]),
            *([_number(r["memory_budget_kb"], ",.1f")] if memory else []), r["budget.initialization"], r["budget.policy"],
            mean_std(r["best_val_top1_mean"], r["best_val_top1_std"]), r["best_epochs"] or MISSING,
            mean_std(r["test_top1_mean"], r["test_top1_std"]), mean_std(r["stop_epoch_mean"], r["stop_epoch_std"], 1),
            *([_number(r["memory_used_kb_mean"], ",.1f"), _number(r["activation_sparsity_pct_mean"], ".1f")] if memory else []),
            r["seeds"] or MISSING, f"{r['n_seeds']}" + (f" (+{r['n_excluded']} excluded)" if r["n_excluded"] else ""),
        ]
        for _, r in table.iterrows()
    ]  # fmt: skip
    text = _markdown(header, rows, "lllrrllrlrrrrlr" if memory else "llrllrlrrlr")
    mixed = [
        f"- row {i + 1} ({r['budget.policy']}, {_budget_text(r)}): {r['mixed_settings']}"
        for i, r in table.iterrows()
        if r["mixed_settings"]
    ]
    if mixed:
        text += "\n\nRows whose trials differ in more than the seed (not pure seed repeats):\n\n" + "\n".join(mixed)
    return text


def pareto_markdown(pareto: pd.DataFrame) -> str:
    """The Pareto front as Markdown, by increasing budget."""
    header = ["budget (params)", "test top-1 (%)", "best val top-1 (%)", "policy", "init", "scheme", "model", "seed", "trial"]
    rows = [
        [
            f"{r['budget_params']:,}", f"{r['test_top1_at_best_val']:.2f}", f"{r['best_val_top1']:.2f}", r["budget.policy"],
            r["budget.initialization"], r["budget.scheme"], r["model.name"], r[SEED_KEY], f"{r['experiment']}/{r['trial_id']}",
        ]
        for _, r in pareto.iterrows()
    ]  # fmt: skip
    return _markdown(header, rows, "rrrllllrl")


def pareto_memory_markdown(pareto: pd.DataFrame) -> str:
    """The Pareto front by measured memory as Markdown, by increasing memory (kB, mean over each trial's epochs)."""
    header = [
        "memory used (kB)", "test top-1 (%)", "best val top-1 (%)", "activation sparsity (%)", "policy", "init", "unit",
        "budget", "scheme", "model", "seed", "trial",
    ]  # fmt: skip
    rows = [
        [
            _number(r["memory_used_kb"], ",.1f"), f"{r['test_top1_at_best_val']:.2f}", f"{r['best_val_top1']:.2f}",
            _number(r["activation_sparsity_pct"], ".1f"), r["budget.policy"], r["budget.initialization"], r["budget.unit"],
            _budget_text(r), r["budget.scheme"], r["model.name"], r[SEED_KEY], f"{r['experiment']}/{r['trial_id']}",
        ]
        for _, r in pareto.iterrows()
    ]  # fmt: skip
    return _markdown(header, rows, "rrrrllllllrl")


def problems_markdown(problems: pd.DataFrame) -> str:
    """The problem trials as Markdown (or a line saying there are none)."""
    if problems.empty:
        return "No missing or partial data: every trial ended normally with a best epoch."
    budget = "budget" if problems["memory_budget"].notna().any() else "budget (params)"
    header = ["trial", "status", "policy", budget, "seed", "in table", "problem"]
    rows = [
        [
            f"{r['experiment']}/{r['trial_id']}", r["status"], r["budget.policy"],
            _number(r["budget_params"]) if _number(r["memory_budget"]) == MISSING else f"{r['memory_budget']:,} memory elements",
            r[SEED_KEY] if _is_set(r[SEED_KEY]) else MISSING, "yes" if r["in_table"] else "no", r["problem"],
        ]
        for _, r in problems.iterrows()
    ]  # fmt: skip
    return _markdown(header, rows, "lllrrll")


def report_markdown(analysis: Analysis, experiments: Experiments, plots: Sequence[str]) -> str:
    """The whole report: sources, the study's table, the Pareto front(s), problems, plot files."""
    outcomes = analysis.outcomes
    sources = ", ".join(str(s) for s in experiments.sources)
    memory_front = (
        []
        if analysis.pareto_memory is None
        else [
            "## Pareto front: test top-1 versus memory used\n\nTrials that no other trial beats on both (higher test top-1, "
            "less memory used: weight + activation elements per image, mean over the trial's epochs), whatever their budget.\n\n"
            + pareto_memory_markdown(analysis.pareto_memory)
        ]
    )
    parts = [
        f"# Analysis of {sources}",
        f"{len(outcomes)} trials: {int(outcomes['usable'].sum())} in the table, {int((~outcomes['usable']).sum())} excluded.",
        "## The study's table\n\nMean ± sample standard deviation (n - 1) over seeds; `-`: undefined (one seed). "
        "Best epoch chosen by validation top-1; stopping epoch: epochs run.\n\n" + table_markdown(analysis.table),
        "## Pareto front: test top-1 versus budget\n\nTrials that no other trial beats on both (higher test top-1, smaller budget).\n\n"
        + pareto_markdown(analysis.pareto),
        *memory_front,
        "## Missing or partial data\n\n" + problems_markdown(analysis.problems),
        "## Plots\n\n" + ("\n".join(f"- `{name}`" for name in plots) if plots else "None (no trial in the table)."),
    ]
    return "\n\n".join(parts) + "\n"


# --- writing --------------------------------------------------------------------
def _excel_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Nullable and object columns in plain Python values openpyxl accepts."""
    out = frame.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.api.extensions.ExtensionDtype) and out[column].dtype.kind in "iub":
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out


def write_outputs(analysis: Analysis, experiments: Experiments, out_dir: Path) -> list[Path]:
    """Write tables, plots and report into ``out_dir``; return the files written.

    Everything is written into a staging directory first and then moved
    into place file by file, so an error leaves earlier outputs whole.
    """
    from neqtune.results.plots import write_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".analysis-", dir=out_dir))
    try:
        plots = write_plots(analysis, experiments, staging)
        report = report_markdown(analysis, experiments, [p.name for p in plots])
        (staging / "report.md").write_text(report)
        (staging / "table.md").write_text(table_markdown(analysis.table) + "\n")
        analysis.table.to_csv(staging / "table.csv", index=False)
        analysis.pareto.to_csv(staging / "pareto.csv", index=False)
        if analysis.pareto_memory is not None:
            analysis.pareto_memory.to_csv(staging / "pareto_memory.csv", index=False)
        analysis.outcomes.to_csv(staging / "trials.csv", index=False)
        analysis.problems.to_csv(staging / "problems.csv", index=False)
        with pd.ExcelWriter(staging / "table.xlsx", engine="openpyxl") as excel:
            for sheet, frame in (
                ("table", analysis.table),
                ("pareto", analysis.pareto),
                *([("pareto_memory", analysis.pareto_memory)] if analysis.pareto_memory is not None else []),
                ("trials", analysis.outcomes),
                ("problems", analysis.problems),
            ):
                _excel_frame(frame).to_excel(excel, sheet_name=sheet, index=False)
        written = []
        for path in sorted(staging.iterdir()):
            target = out_dir / path.name
            os.replace(path, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def default_out_dir(directories: Sequence[Path | str]) -> Path:
    """``<experiment>/analysis`` for one experiment; ``<parent>/analysis-<a>+<b>...`` for several.

    The outputs stay on the local disk: for an experiment under a URI, the
    experiment's directory is ``results/<experiment>`` (where the search
    keeps its TensorBoard files).
    """
    local = [Path("results") / _uri_name(d) if _is_uri(d) else Path(d) for d in directories]
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
        type=lambda text: text if _is_uri(text) else Path(text),
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
