"""Seed repeats: one configuration trained under k seeds in lockstep, scored by the mean.

:func:`train_repeats` builds one :class:`~neqtune.trainables.trainer.BudgetedRun` per
seed (the trial's ``training.seed``, ``+1``, ..., ``+k-1``) and steps them
epoch by epoch: after every epoch it hands ``report`` one record in which the
metrics are the means over the seeds, so a search algorithm and an early
stopping scheduler see the mean and never one lucky seed. The spread and
the per-seed values travel along (``<metric>_std``, ``<metric>_seeds``).

Each run keeps its own global random state (torch, Python, NumPy), swapped
in around each of its steps, so seed ``s`` inside a repeat gives exactly the
numbers of a single run with seed ``s``. The checkpoint holds every run's
state; resuming continues all of them exactly.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from neqtune.trainables.config import TrialConfig
from neqtune.trainables.metrics import metric_names, per_seed_names, std_names
from neqtune.trainables.trainer import BudgetedRun, Metrics, Reporter, run_epoch

# How the seeds combine each metric is declared once in trainables/metrics.py (asked when merging: a plug-in may
# declare more). Kept per seed (``<key>_seeds``); the accuracies also get a sample std (``<key>_std``).
SEED_KEYS = per_seed_names()
STD_KEYS = std_names()


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    """The seeds of a repeated trial: ``seed, seed + 1, ..., seed + repeats - 1``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    return [seed + i for i in range(repeats)]


def with_seed(config: TrialConfig, seed: int) -> TrialConfig:
    """``config`` with ``training.seed`` replaced."""
    return dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed))


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); NaN for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def aggregate(per_seed: Sequence[Metrics], seeds: Sequence[int]) -> Metrics:
    """One epoch record from the records of every seed (same epoch).

    Means under the usual metric names (what the search steers by), the sample
    std and the per-seed values of the accuracies, the latest best epoch over
    the seeds, and summed times. Other values (epoch, lr, budget, names) are
    equal across seeds and taken from the first.
    """
    first = per_seed[0]
    merged: Metrics = dict(first)

    def reported(keys: Sequence[str]) -> list[str]:
        # a metric of the schema that this trial does not report, or reports as null (another policy's own, a
        # plug-in's), is left out: the merged row keeps the first seed's value
        return [key for key in keys if first.get(key) is not None]

    for key in reported(metric_names(seeds="mean")):
        merged[key] = _mean([float(m[key]) for m in per_seed])
    for key in reported(metric_names(seeds="list_mean")):
        merged[key] = [float(v) for v in np.mean(np.array([m[key] for m in per_seed], dtype=float), axis=0)]
    for key in reported(SEED_KEYS):
        merged[f"{key}_seeds"] = [m[key] for m in per_seed]
    for key in reported(STD_KEYS):
        merged[f"{key}_std"] = _std([float(m[key]) for m in per_seed])
    merged["best_epoch"] = max(int(m["best_epoch"]) for m in per_seed)
    for key in reported(metric_names(seeds="sum")):  # the wall time of the epoch is that of all its seeds
        merged[key] = float(sum(float(m[key]) for m in per_seed))
    merged["seeds"] = list(seeds)
    merged["repeats"] = len(per_seed)
    return merged


@dataclasses.dataclass
class _GlobalRng:
    """A snapshot of the process-wide random states a run consumes (dropout, shuffles)."""

    torch_state: torch.Tensor
    python_state: Any
    numpy_state: Any

    @classmethod
    def capture(cls) -> _GlobalRng:
        return cls(torch.get_rng_state(), random.getstate(), np.random.get_state())

    def restore(self) -> None:
        torch.set_rng_state(self.torch_state)
        random.setstate(self.python_state)
        np.random.set_state(self.numpy_state)


class LockstepRuns:
    """k runs of one configuration under different seeds, stepped epoch by epoch."""

    def __init__(self, config: TrialConfig, seeds: Sequence[int]) -> None:
        self.seeds = list(seeds)
        self.runs: list[BudgetedRun] = []
        self._rng: list[_GlobalRng] = []
        outer = _GlobalRng.capture()
        for seed in self.seeds:
            self.runs.append(BudgetedRun(with_seed(config, seed)))  # seeds the globals itself
            self._rng.append(_GlobalRng.capture())
        outer.restore()

    @contextmanager
    def _own_rng(self, index: int) -> Iterator[BudgetedRun]:
        """Run ``index`` with its own global random state swapped in."""
        outer = _GlobalRng.capture()
        self._rng[index].restore()
        try:
            yield self.runs[index]
        finally:
            self._rng[index] = _GlobalRng.capture()
            outer.restore()

    @property
    def epoch(self) -> int:
        """Epochs completed (equal for every seed)."""
        return self.runs[0].epoch

    def step(self) -> Metrics:
        """One epoch of every seed; the aggregated record."""
        per_seed = []
        for index in range(len(self.runs)):
            with self._own_rng(index) as run:
                per_seed.append(run_epoch(run))
        return aggregate(per_seed, self.seeds)

    def state_dict(self) -> dict[str, Any]:
        """Every run's resumable state, each with its own random state."""
        states = []
        for index in range(len(self.runs)):
            with self._own_rng(index) as run:
                states.append(run.state_dict())
        return {"seeds": list(self.seeds), "runs": states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` output (the seeds must match)."""
        if list(state["seeds"]) != self.seeds:
            raise ValueError(f"checkpoint holds seeds {list(state['seeds'])}, this trial runs {self.seeds}")
        for index, run_state in enumerate(state["runs"]):
            with self._own_rng(index) as run:
                run.load_state_dict(run_state)  # sets the run's global random state


def train_repeats(
    config: TrialConfig | Mapping[str, Any],
    repeats: int,
    report: Reporter | None = None,
    *,
    resume: Mapping[str, Any] | None = None,
) -> Metrics:
    """Train ``config`` under ``repeats`` seeds in lockstep; ``report`` gets the mean per epoch.

    Args:
        config: a :class:`TrialConfig` or its nested dict; its ``training.seed`` is the first seed.
        repeats: how many seeds (consecutive from the config's seed).
        report: called after every epoch with the aggregated metrics and a
            function returning a resumable state of all seeds.
        resume: a state from a previous ``report`` to continue from.

    Returns:
        The aggregated metrics of the last epoch.
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    runs = LockstepRuns(cfg, repeat_seeds(cfg.training.seed, repeats))
    if resume is not None:
        runs.load_state_dict(resume)
    metrics: Metrics = {}
    while runs.epoch < cfg.training.total_epochs:
        metrics = runs.step()
        if report is not None:
            report(metrics, runs.state_dict)
    return metrics
