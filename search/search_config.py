"""The ``search`` section of a space file: what to search over and how.

:class:`SearchConfig` holds the algorithm, trial counts, resources,
objectives, early stopping (:class:`AshaConfig`) and repeats; its ``params``
map dotted trial-config keys to a :class:`ParamSpec` each (a choice list or a
numeric range). Parsed with :func:`~neqtune.trainables.config.from_mapping`
and validated section by section, as the trial sections are; what only the
whole space can tell is checked by :mod:`neqtune.search.space`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from neqtune.trainables.config import LEGACY_OPTIONS, ConfigError, TrialConfig, iter_leaf_keys
from neqtune.trainables.metrics import metric_names


@dataclass
class ParamSpec:
    """One searched key: exactly one of a choice list or a numeric range."""

    choice: list[Any] | None = None
    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    randint: list[int] | None = None

    def validate(self, path: str) -> None:
        given = [kind for kind in ("choice", "uniform", "loguniform", "randint") if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ConfigError(path, "give exactly one of choice, uniform, loguniform, randint")
        if self.choice is not None and not self.choice:
            raise ConfigError(f"{path}.choice", "the choice list is empty")
        for kind in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, kind)
            if bounds is None:
                continue
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise ConfigError(f"{path}.{kind}", f"expected [low, high] with low < high, got {bounds}")
            if kind == "loguniform" and bounds[0] <= 0:
                raise ConfigError(f"{path}.{kind}", f"bounds must be > 0, got {bounds}")

    @property
    def kind(self) -> str:
        """``choice``, ``uniform``, ``loguniform`` or ``randint``."""
        return next(k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    def representatives(self) -> list[Any]:
        """Values that stand for the whole distribution when checking: the choices or the bounds."""
        if self.choice is not None:
            return list(self.choice)
        low, high = getattr(self, self.kind)
        return [low, high - 1] if self.kind == "randint" else [low, high]


def _is_policy_option(key: str) -> bool:
    """``budget.options.<policy>.<key>``: a policy's own option, checked by that policy when the trials are checked."""
    parts = key.split(".")
    return len(parts) >= 4 and parts[:2] == ["budget", "options"] and all(parts[2:])


# Per-epoch metrics a search or a scheduler may steer by (all numeric, reported every epoch).
Mode = Literal["max", "min"]


def _is_test_metric(metric: str) -> bool:
    return metric.startswith("test_")


@dataclass
class AshaConfig:
    """Early stopping with Ray Tune's ASHA scheduler (``search.scheduler: asha``).

    A trial reaching a rung (``grace_period * reduction_factor**i`` epochs,
    below ``max_epochs``) continues only if its ``metric`` is in the top
    ``1 / reduction_factor`` of the trials that reached that rung so far.
    ``max_epochs`` null: the trials' own epoch count (warm-up included).
    """

    metric: str = "best_val_top1"
    mode: Mode = "max"
    grace_period: int = 1
    reduction_factor: float = 3.0
    max_epochs: int | None = None

    def validate(self, path: str) -> None:
        if self.metric not in metric_names(objective=True):
            raise ConfigError(f"{path}.metric", f"unknown metric {self.metric!r}; known: {', '.join(metric_names(objective=True))}")
        if _is_test_metric(self.metric):
            raise ConfigError(f"{path}.metric", f"early stopping must not look at the test split, got {self.metric!r}")
        if self.grace_period < 1:
            raise ConfigError(f"{path}.grace_period", f"must be >= 1 epoch, got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"{path}.reduction_factor", f"must be > 1, got {self.reduction_factor}")
        if self.max_epochs is not None and self.max_epochs < self.grace_period:
            raise ConfigError(f"{path}.max_epochs", f"must be >= grace_period ({self.grace_period}), got {self.max_epochs}")


@dataclass
class SearchConfig:
    """How to search: algorithm, trial counts, resources, objectives, early stopping, repeats.

    ``num_samples`` is the number of trials for ``optuna``, and the number of
    repeats of the whole grid for ``grid`` (seeds belong in the grid as
    ``training.seed``). ``metric`` is reported by every epoch; the default
    maximises the best validation top-1. A single objective never steers by
    test accuracy. ``metric`` and ``mode`` may be lists of equal length (a
    multi-objective search: Optuna's sampler gets every objective, and the
    Pareto set is saved); there a test metric is allowed, at the user's risk.
    ``sampler``: ``tpe`` (multi-objective TPE when there are several
    objectives), ``nsga2`` (NSGA-II, ``population_size`` per generation) or
    ``random``. ``max_concurrent: auto`` runs as many trials at once as the
    CPUs, the GPUs and the memory allow (see :func:`neqtune.search.resources.auto_concurrency`);
    ``gpus_per_trial``: a fraction shares a GPU (0.25: four trials on one),
    ``auto`` uses the cluster's GPUs where it has any, with the packing rule
    of :func:`neqtune.search.resources.auto_gpus_per_trial` (0 without GPUs);
    ``max_failures``: restarts of a failed trial from its last checkpoint.
    ``max_trial_epochs``: a budget for the whole search; once its trials ran
    that many epochs in total (each reported epoch counts), running trials
    stop and no new one starts (null: no budget).
    ``checkpoint_interval_s``: a trial saves its full state (for restarts
    and ``--resume``) after an epoch once this many seconds passed since its
    last save; 0 saves after every epoch. A restart repeats at most that much
    work, and exactly (the epochs it repeats report the same numbers).
    ``table_flush_s``: the longest time between two writes of the Parquet
    tables while the search runs (they are always written at its end).
    ``scheduler: asha`` stops bad trials early (see
    :class:`AshaConfig`). ``repeats``: every configuration runs under that
    many seeds in lockstep and is scored by the mean. ``reuse_actors``:
    trials reuse Ray worker processes (and their cached data sets).
    """

    algorithm: Literal["optuna", "grid"] = "optuna"
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    population_size: int = 8
    startup_trials: int = 4
    num_samples: int = 8
    max_concurrent: int | Literal["auto"] = "auto"
    max_failures: int = 2
    max_trial_epochs: int | None = None
    checkpoint_interval_s: float = 10.0
    table_flush_s: float = 10.0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | Literal["auto"] = 0.0
    seed: int = 0
    metric: str | list[str] = "best_val_top1"
    mode: Mode | list[Mode] = "max"
    scheduler: Literal["fifo", "asha"] = "fifo"
    asha: AshaConfig = field(default_factory=AshaConfig)
    repeats: int = 1
    reuse_actors: bool = True
    params: dict[str, ParamSpec] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        """The objectives' metrics, as a list (one for a single objective)."""
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[Mode]:
        """The objectives' modes, as a list."""
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)

    @property
    def multi_objective(self) -> bool:
        """Whether the search has more than one objective."""
        return len(self.metrics) > 1

    def _validate_objectives(self, path: str) -> None:
        metrics, modes = self.metrics, self.modes
        if not metrics:
            raise ConfigError(f"{path}.metric", "give at least one metric")
        if isinstance(self.metric, str) != isinstance(self.mode, str) or len(metrics) != len(modes):
            raise ConfigError(f"{path}.mode", f"give one mode per metric: metric {self.metric!r}, mode {self.mode!r}")
        if len(set(metrics)) != len(metrics):
            raise ConfigError(f"{path}.metric", f"objectives repeat a metric: {metrics}")
        for metric in metrics:
            if metric not in metric_names(objective=True):
                raise ConfigError(f"{path}.metric", f"unknown metric {metric!r}; known: {', '.join(metric_names(objective=True))}")
        if len(metrics) == 1 and _is_test_metric(metrics[0]):
            raise ConfigError(f"{path}.metric", f"a single objective must not steer by the test split, got {metrics[0]!r}; use best_val_top1")

    def validate(self, path: str) -> None:
        for key, value in (
            ("num_samples", self.num_samples),
            ("max_concurrent", 1 if self.max_concurrent == "auto" else self.max_concurrent),
            ("startup_trials", self.startup_trials),
        ):
            if value < 1:
                raise ConfigError(f"{path}.{key}", f"must be >= 1 (or auto), got {value}" if key == "max_concurrent" else f"must be >= 1, got {value}")
        if self.max_failures < 0:
            raise ConfigError(f"{path}.max_failures", f"must be >= 0, got {self.max_failures}")
        if self.max_trial_epochs is not None and self.max_trial_epochs < 1:
            raise ConfigError(f"{path}.max_trial_epochs", f"must be >= 1 epoch (or null: no budget), got {self.max_trial_epochs}")
        if not self.checkpoint_interval_s >= 0:
            raise ConfigError(f"{path}.checkpoint_interval_s", f"must be >= 0 seconds, got {self.checkpoint_interval_s}")
        if not self.table_flush_s > 0:
            raise ConfigError(f"{path}.table_flush_s", f"must be > 0 seconds, got {self.table_flush_s}")
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"{path}.cpus_per_trial", f"must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial != "auto":
            if self.gpus_per_trial < 0:
                raise ConfigError(f"{path}.gpus_per_trial", f"must be >= 0 (or auto), got {self.gpus_per_trial}")
            if self.gpus_per_trial > 1 and not float(self.gpus_per_trial).is_integer():
                raise ConfigError(f"{path}.gpus_per_trial", f"above 1 must be a whole number of GPUs (Ray shares only fractions of one), got {self.gpus_per_trial}")
        self._validate_objectives(path)
        if self.population_size < 2:
            raise ConfigError(f"{path}.population_size", f"must be >= 2, got {self.population_size}")
        if self.repeats < 1:
            raise ConfigError(f"{path}.repeats", f"must be >= 1, got {self.repeats}")
        if self.repeats > 1 and "training.seed" in self.params:
            raise ConfigError(f"{path}.repeats", "repeats run seeds training.seed, +1, ...; do not also search training.seed")
        if self.algorithm == "grid" and not self.params:
            raise ConfigError(f"{path}.params", "the grid is empty: give at least one key with a choice list (seeds: training.seed)")
        known = set(iter_leaf_keys(TrialConfig)) | {f"budget.{old}" for old in LEGACY_OPTIONS}
        for key, spec in self.params.items():
            if key not in known and not _is_policy_option(key):
                raise ConfigError(f"{path}.params.{key}", "not a config key (expected a dotted key such as training.lr)")
            if self.algorithm == "grid" and spec.kind != "choice":
                raise ConfigError(f"{path}.params.{key}", f"a grid takes choice lists only, got {spec.kind}")
