"""What the analysis reads and computes: the merged tables of experiments and the analysis of them.

A module of its own so that the analysis, the plots and the comparison with the papers share these types without
importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


class AnalysisInputError(ValueError):
    """Input that cannot be analysed; the message is one line naming the file or directory."""


@dataclass(frozen=True)
class Experiments:
    """The merged tables of one or several experiments.

    Attributes:
        epochs: the rows of every ``epochs.parquet`` (one per trial-epoch).
        trials: the rows of every ``trials.parquet`` (one per ended trial).
        sources: the experiment directories (paths or URIs), in the order given.
    """

    epochs: pd.DataFrame
    trials: pd.DataFrame
    sources: tuple[Path | str, ...]


@dataclass(frozen=True)
class Analysis:
    """Everything the analysis computes from :class:`Experiments`.

    Attributes:
        outcomes: one row per trial (see :func:`~neqtune.results.outcomes.trial_outcomes`).
        table: the study's table (see :func:`~neqtune.results.outcomes.study_table`).
        pareto: the non-dominated trials (see :func:`~neqtune.results.outcomes.pareto_front`).
        problems: the trials kept out of the table, with the reason.
        pareto_memory: the non-dominated trials by measured memory (see
            :func:`~neqtune.results.outcomes.pareto_memory_front`); None when no trial has a memory budget.
    """

    outcomes: pd.DataFrame
    table: pd.DataFrame
    pareto: pd.DataFrame
    problems: pd.DataFrame
    pareto_memory: pd.DataFrame | None = None
