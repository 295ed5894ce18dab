"""The pieces of the Ray Tune ``Tuner`` a search builds from its space.

Owns the search-space domains, the seeded Optuna sampler and searcher, the ASHA scheduler,
the trial-epoch budget (a Tune stopper) and the driver's callbacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from neqtune.search.recorder import ResultRecorder, read_results
from neqtune.search.search_config import ParamSpec, SearchConfig
from neqtune.search.space import Space
from neqtune.search.study import StudyRecorder
from neqtune.search.trainable import INVALID_CONFIG


def tune_domain(spec: ParamSpec, *, grid: bool) -> Any:
    """The Ray Tune search-space object for one searched key."""
    from ray import tune

    if grid:
        return tune.grid_search(list(spec.choice or []))
    if spec.choice is not None:
        return tune.choice(list(spec.choice))
    if spec.uniform is not None:
        return tune.uniform(*spec.uniform)
    if spec.loguniform is not None:
        return tune.loguniform(*spec.loguniform)
    assert spec.randint is not None
    return tune.randint(spec.randint[0], spec.randint[1])


def build_sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler named in the space.

    TPE handles several objectives itself (multi-objective TPE); NSGA-II
    evolves generations of ``population_size`` trials; random ignores the objectives.
    """
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.startup_trials)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=search.population_size)
    return optuna.samplers.RandomSampler(seed=search.seed)


class RefusingOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, told of trials that refused their config (:data:`~neqtune.search.trainable.INVALID_CONFIG`).

    Such a trial's one result carries no metric: it is not an intermediate
    value (Ray's searcher would look the metric up), and it ends the Optuna
    trial as failed, not as pruned.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if INVALID_CONFIG not in result:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        refused = INVALID_CONFIG in (result or {})
        super().on_trial_complete(trial_id, None if refused else result, error=error or refused)  # no values: FAIL (one objective or several)


def build_searcher(search: SearchConfig) -> Any:
    """Optuna over the space's objectives (one metric, or lists of metrics and modes); None for a grid."""
    if search.algorithm == "grid":
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric: str | list[str] = search.metrics if search.multi_objective else search.metrics[0]
    mode: str | list[str] = list(search.modes) if search.multi_objective else search.modes[0]
    return RefusingOptunaSearch(sampler=build_sampler(search), metric=metric, mode=mode)


def build_scheduler(space: Space) -> Any:
    """Ray Tune's ASHA scheduler over epochs (``training_iteration``) for ``scheduler: asha``; None for FIFO."""
    search = space.search
    if search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    asha = search.asha
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=asha.metric,
        mode=asha.mode,
        max_t=space.asha_max_epochs(),
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )


class TrialEpochBudget(Stopper):  # type: ignore[misc]
    """A Tune stopper that ends the search once its trials ran ``limit`` epochs in total.

    Every reported epoch counts, the ones a restarted trial repeats too (they
    were spent). When the budget is reached, running trials stop (they are
    recorded as ``STOPPED``, having run fewer epochs than planned) and no new
    trial starts. ``spent`` starts from the epochs an interrupted run already
    reported when a search is resumed.
    """

    def __init__(self, limit: int, spent: int = 0) -> None:
        self.limit = limit
        self.spent = spent
        self._last_epoch: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        # Tune hands a finished trial's last result in once more; an epoch counts once per report.
        epoch = result.get("epoch")
        if isinstance(epoch, int) and self._last_epoch.get(trial_id) != epoch:
            self._last_epoch[trial_id] = epoch
            self.spent += 1
        return False

    def stop_all(self) -> bool:
        return self.spent >= self.limit


def reported_epochs(location: str) -> int:
    """Epoch reports in the trials' ``result.json`` logs under ``location`` (an experiment directory or URI)."""
    return sum(1 for result in read_results(location) if "epoch" in result)


def build_stopper(space: Space) -> TrialEpochBudget | None:
    """The search's trial-epoch budget as a Tune stopper, or None without one."""
    limit = space.search.max_trial_epochs
    return None if limit is None else TrialEpochBudget(limit)


def study_recorder(space: Space, experiment_dir: Path, experiment: str) -> StudyRecorder:
    """The callback that keeps the experiment's trials in ``optuna.db`` (see :mod:`neqtune.search.study`)."""
    search = space.search
    return StudyRecorder(experiment_dir, experiment, params=search.params, metrics=search.metrics, modes=search.modes, base=space.base)


def tune_callbacks(recorder: ResultRecorder, study: StudyRecorder) -> list[Any]:
    """The driver's Tune callbacks: our recorder, the study in ``optuna.db``, Ray's ``result.json`` log (a resume backfills from it)."""
    from ray.tune.logger import JsonLoggerCallback

    return [recorder, study, JsonLoggerCallback()]
