"""Reading experiments' result tables into one :class:`~neqtune.results.model.Experiments`.

Owns the tables' names and the columns the analysis needs of them, reading Parquet tables
(a directory of part files, or one file of an older experiment) from a local disk or a URI,
and splitting a trial trained with seed repeats into one trial per seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from neqtune.results.model import AnalysisInputError, Experiments

# The tables neqtune.search.tables writes (importing the search package would pull in Ray and torch: seconds per command).
EPOCHS_TABLE = "epochs.parquet"
TRIALS_TABLE = "trials.parquet"
SEED_KEY = "training.seed"
TRIAL_KEY = ("experiment", "trial_id")
EPOCH_COLUMNS = (
    "experiment", "trial_id", "epoch", "val_top1", "test_top1", "budget_params",
    "model.name", "budget.scheme", "budget.initialization", "budget.policy", SEED_KEY,
)  # fmt: skip
TRIAL_COLUMNS = ("experiment", "trial_id", "status")
# A trial with seed repeats (``search.repeats`` > 1) reports the mean under the usual names and each seed's
# value in ``<metric>_seeds``, its seeds in ``seeds``: the analysis splits it into one trial per seed.
REPEAT_SEEDS = "seeds"
PER_SEED = {"val_top1": "val_top1_seeds", "test_top1": "test_top1_seeds"}


def is_uri(location: Path | str) -> bool:
    """Whether ``location`` is a URI (``s3://...``) rather than a local path."""
    return "://" in str(location)


def _filesystem(location: Path | str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's file system and path of a local directory or a URI (``s3://...``, with its query options)."""
    if not is_uri(location):
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
