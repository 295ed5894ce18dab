"""Which searched keys matter: Optuna's fANOVA importances from each experiment's ``optuna.db``.

Every search keeps its trials in an Optuna study (``<experiment>/optuna.db``,
see :mod:`neqtune.search.study`). For each objective, Optuna's
:class:`~optuna.importance.FanovaImportanceEvaluator` (a random forest over
the searched keys, seeded) splits the variance of the objective over the
``COMPLETE`` trials into the share each key explains; the shares sum to 1.
Trials stopped early (``PRUNED``) or crashed are left out, as Optuna does.
``python -m neqtune.results.analyze`` prints the table and writes it as
``importance.csv`` and ``importance.md``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Callable

    from optuna.trial import FrozenTrial

OPTUNA_DB = "optuna.db"  # neqtune.search.study's file (importing the search package would pull in Ray and torch)
IMPORTANCE_SEED = 0
COLUMNS = ("experiment", "objective", "param", "importance", "n_trials")


@dataclass(frozen=True)
class Importances:
    """The importances of every experiment given, and what could not be computed.

    Attributes:
        table: one row per (experiment, objective, searched key): the
            ``importance`` (share of the objective's variance, summing to 1
            per experiment and objective) and ``n_trials`` (complete trials used).
        notes: per experiment without importances, why (no ``optuna.db``,
            fewer than two complete trials, nothing varied).
    """

    table: pd.DataFrame
    notes: tuple[str, ...]


def _study_rows(directory: Path) -> tuple[list[dict[str, object]], str | None]:
    """The importance rows of one experiment directory, or a note saying why there are none."""
    import optuna

    path = directory / OPTUNA_DB
    if not path.is_file():
        return [], f"{directory}: no {OPTUNA_DB} (written by searches since neqtune kept one), so no importances"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
    rows: list[dict[str, object]] = []
    notes: list[str] = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
        if len(complete) < 2:
            notes.append(f"{directory}: {len(complete)} complete trial(s) in study {study.study_name}; importances need at least 2")
            continue
        for index, objective in enumerate(names):
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    shares = optuna.importance.get_param_importances(study, evaluator=evaluator, target=_objective(index))
            except (ValueError, RuntimeError) as error:
                notes.append(f"{directory}: no importances of {objective} ({str(error).strip().splitlines()[0]})")
                continue
            rows += [
                {"experiment": study.study_name, "objective": objective, "param": param, "importance": float(share), "n_trials": len(complete)}
                for param, share in shares.items()
            ]
    storage.remove_session()
    return rows, "; ".join(notes) or None


def _objective(index: int) -> Callable[[FrozenTrial], float]:
    """The importance target: a trial's ``index``-th objective value."""

    def value(trial: FrozenTrial) -> float:
        return float(trial.values[index])

    return value


def parameter_importances(directories: Sequence[Path | str]) -> Importances:
    """The fANOVA importances of the searched keys for every objective of each experiment's study.

    For an experiment given as a URI (``s3://...``), whose ``optuna.db``
    stays in the driver's local experiment directory, the study is read from
    ``results/<experiment>/optuna.db`` (where the search kept its TensorBoard
    files), or a note says it is not there.
    """
    rows: list[dict[str, object]] = []
    notes: list[str] = []
    for directory in directories:
        local = Path(directory)
        if "://" in str(directory):
            local = Path("results") / str(directory).partition("?")[0].rstrip("/").rpartition("/")[2]
            if not (local / OPTUNA_DB).is_file():
                notes.append(f"{directory}: {OPTUNA_DB} stays in the driver's local experiment directory, not found at {local}; give that directory")
                continue
        found, note = _study_rows(local)
        rows += found
        if note:
            notes.append(note)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    if not table.empty:
        table = table.sort_values(["experiment", "objective", "importance"], ascending=[True, True, False], kind="stable")
    return Importances(table=table.reset_index(drop=True), notes=tuple(notes))


def importance_markdown(importances: Importances) -> str:
    """The importances as a Markdown section: one table per experiment and objective, then the notes."""
    parts = [
        "## Hyperparameter importances (Optuna fANOVA)\n\n"
        "Share of the objective's variance over the complete trials that each searched key explains (sums to 1)."
    ]
    for (experiment, objective), group in importances.table.groupby(["experiment", "objective"], sort=False):
        lines = [f"**{experiment}**, objective `{objective}`, {int(group['n_trials'].iloc[0])} complete trials:", "", "| key | importance |", "|---|---:|"]
        lines += [f"| `{row.param}` | {row.importance:.3f} |" for row in group.itertuples()]
        parts.append("\n".join(lines))
    if importances.table.empty and not importances.notes:
        parts.append("No experiment given.")
    parts += [f"- {note}" for note in importances.notes]
    return "\n\n".join(parts) + "\n"


def write_importances(importances: Importances, out_dir: Path) -> list[Path]:
    """Write ``importance.csv`` and ``importance.md`` into ``out_dir`` (each through a temporary file and a rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("importance.csv", importances.table.to_csv(index=False)), ("importance.md", importance_markdown(importances))):
        temporary = out_dir / f".{name}.{os.getpid()}.partial"  # opened like any file: the umask sets its mode
        temporary.write_text(text)
        os.replace(temporary, out_dir / name)
        written.append(out_dir / name)
    return written
