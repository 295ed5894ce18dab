"""Every trial of a search in an Optuna RDB storage: ``optuna.db`` (SQLite) in the experiment directory.

Ray Tune's Optuna searcher keeps its study in memory and a grid has none, so
a driver-side Tune callback, :class:`StudyRecorder`, writes one Optuna study
per experiment (named after it) with Optuna's own storage API as the search
runs: a trial is created ``RUNNING`` with its searched values when it starts,
gets the first objective of every epoch as an intermediate value (step =
epoch), and ends ``COMPLETE`` with its objective values (``PRUNED`` when a
scheduler stopped it early, ``FAIL`` when it crashed). Each write is
committed at once, so the file is current while the search runs. On
``--resume`` the same file is opened again: trials are found by their Tune
trial id (user attribute ``tune_trial_id``), epochs that resumed trials
report again overwrite their values, and trials the dead driver never saw
end are completed from Tune's restored state and their ``result.json`` logs
(:meth:`StudyRecorder.backfill`); a trial the dead driver had
just started but Tune's saved state never recorded ends ``FAIL`` (the
resumed search runs another in its place).

Optuna's tools then work on the file::

    optuna-dashboard sqlite:///results/<experiment>/optuna.db
    study = optuna.load_study(study_name=None, storage="sqlite:///results/<experiment>/optuna.db")
    optuna.importance.get_param_importances(study)

The searched keys are the parameters, with distributions from the space
(``choice``: categorical, ``uniform`` / ``loguniform``: float, ``randint``:
int, upper bound excluded as in Tune).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.experiment import Trial

from neqtune.pareto import finite
from neqtune.search.recorder import read_results
from neqtune.search.search_config import ParamSpec
from neqtune.search.tables import EPOCHS_TABLE, join_location, read_table
from neqtune.search.trainable import INVALID_CONFIG, PLANNED_EPOCHS, resolve_trial_config

OPTUNA_DB = "optuna.db"
TUNE_TRIAL_ID = "tune_trial_id"
# SQLite waits this long for a reader (optuna-dashboard, a notebook) to release the file before a write fails.
SQLITE_TIMEOUT_S = 30
# Opening a new optuna.db while another process creates its schema fails once; so many tries in all.
OPEN_ATTEMPTS = 5
Categorical = None | bool | int | float | str


def storage_url(experiment_dir: Path) -> str:
    """The SQLAlchemy URL of the experiment's ``optuna.db`` (absolute, so it works from any directory)."""
    return f"sqlite:///{experiment_dir.resolve() / OPTUNA_DB}"


def open_storage(url: str, attempts: int = OPEN_ATTEMPTS) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, waiting for readers of a SQLite file instead of failing at once.

    Whoever opens a new file first creates Optuna's schema in it; two
    opening it at the same moment (the driver, and optuna-dashboard or a
    notebook watching for the file) race, and the loser's insert of the
    schema version fails. It then opens the file again, now complete.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
        except (IntegrityError, OperationalError):
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _categorical(value: Any) -> Categorical:
    """A choice as Optuna stores it: None, bool, int, float and str as they are, anything else (a list) as its text."""
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def param_distributions(params: Mapping[str, ParamSpec]) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every searched key."""
    distributions: dict[str, BaseDistribution] = {}
    for key, spec in params.items():
        if spec.choice is not None:
            distributions[key] = CategoricalDistribution([_categorical(v) for v in spec.choice])
        elif spec.uniform is not None:
            distributions[key] = FloatDistribution(float(spec.uniform[0]), float(spec.uniform[1]))
        elif spec.loguniform is not None:
            distributions[key] = FloatDistribution(float(spec.loguniform[0]), float(spec.loguniform[1]), log=True)
        else:
            assert spec.randint is not None
            distributions[key] = IntDistribution(int(spec.randint[0]), int(spec.randint[1]) - 1)
    return distributions


class StudyRecorder(Callback):  # type: ignore[misc]
    """A Tune callback that mirrors the search's trials into an Optuna study in ``optuna.db``.

    Args:
        experiment_dir: the local experiment directory (``optuna.db`` goes there,
            also when the tables go to a URI).
        experiment: the study's name.
        params: the searched keys and their distributions in the space.
        metrics: the objectives (the first one's value per epoch is the
            intermediate value).
        modes: ``max`` / ``min`` per objective.
        base: the space's nested trial config; with a trial's sampled values
            it gives the epochs the trial plans to run (one that ran fewer
            ended early: ``PRUNED``).
    """

    def __init__(
        self,
        experiment_dir: Path,
        experiment: str,
        *,
        params: Mapping[str, ParamSpec],
        metrics: Sequence[str],
        modes: Sequence[str],
        base: Mapping[str, Any],
    ) -> None:
        self.url = storage_url(experiment_dir)
        self.experiment = experiment
        self.distributions = param_distributions(params)
        self.metrics = list(metrics)
        self.modes = list(modes)
        self.base = dict(base)
        self._storage: optuna.storages.RDBStorage | None = None
        self._study_id = -1
        self._trial_ids: dict[str, int] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._logged: dict[str, dict[int, float]] = {}  # epochs from the result logs of a resumed search

    def __getstate__(self) -> dict[str, Any]:
        # Tune saves its callbacks with the experiment; a database connection does not pickle.
        return {**self.__dict__, "_storage": None, "_trial_ids": {}}

    # --- the study ---------------------------------------------------------
    def _open(self) -> optuna.storages.RDBStorage:
        """The storage, with the study created or found and the known trials mapped by Tune trial id."""
        if self._storage is not None:
            return self._storage
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study created
        storage = open_storage(self.url)
        directions = [optuna.study.StudyDirection.MAXIMIZE if mode == "max" else optuna.study.StudyDirection.MINIMIZE for mode in self.modes]
        study = optuna.create_study(storage=storage, study_name=self.experiment, directions=directions, load_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(self.metrics)
        self._study_id = storage.get_study_id_from_name(self.experiment)
        for frozen in storage.get_all_trials(self._study_id, deepcopy=False):
            tune_id = frozen.user_attrs.get(TUNE_TRIAL_ID)
            if isinstance(tune_id, str):
                self._trial_ids[tune_id] = storage.get_trial_id_from_study_id_trial_number(self._study_id, frozen.number)
        self._storage = storage
        return storage

    def _trial_id(self, trial: Trial) -> int:
        """The Optuna trial of a Tune trial, created ``RUNNING`` with its searched values when new."""
        storage = self._open()
        if trial.trial_id not in self._trial_ids:
            template = optuna.trial.create_trial(
                state=TrialState.RUNNING,
                params={key: self._param(key, trial.config.get(key)) for key in self.distributions},
                distributions=self.distributions,
                user_attrs={TUNE_TRIAL_ID: trial.trial_id},
            )
            self._trial_ids[trial.trial_id] = storage.create_new_trial(self._study_id, template_trial=template)
        return self._trial_ids[trial.trial_id]

    def _param(self, key: str, value: Any) -> Any:
        if isinstance(self.distributions[key], CategoricalDistribution):
            return _categorical(value)
        return value

    def _is_finished(self, trial_id: int) -> bool:
        return self._open().get_trial(trial_id).state.is_finished()

    def _finish(self, trial: Trial, state: TrialState) -> None:
        trial_id = self._trial_id(trial)
        if self._is_finished(trial_id):
            return
        storage = self._open()
        known = storage.get_trial(trial_id).intermediate_values
        for epoch, value in self._logged.get(trial.trial_id, {}).items():
            if epoch not in known:
                storage.set_trial_intermediate_value(trial_id, epoch, value)
        last = self._last.get(trial.trial_id) or dict(trial.last_result or {})
        values = [last.get(metric) for metric in self.metrics]
        if "epoch" in last:
            storage.set_trial_user_attr(trial_id, "epochs_run", int(last["epoch"]))
        if state == TrialState.COMPLETE and not all(finite(v) for v in values):
            storage.set_trial_user_attr(trial_id, "fail_reason", f"objective values {values} are not finite numbers")
            state = TrialState.FAIL
        complete = state == TrialState.COMPLETE
        storage.set_trial_state_values(trial_id, state=state, values=[float(v) for v in values if v is not None] if complete else None)

    def _ended_state(self, trial: Trial) -> TrialState:
        """``COMPLETE`` for a trial that ran all its epochs, ``PRUNED`` for one stopped early, ``FAIL`` for one that refused its config."""
        if INVALID_CONFIG in (trial.last_result or {}):
            return TrialState.FAIL
        last = self._last.get(trial.trial_id) or dict(trial.last_result or {})
        ran = int(last.get("epoch", 0) or 0)
        planned = last.get(PLANNED_EPOCHS)
        if not isinstance(planned, int):  # reports from before trials sent it: resolve the sampled values
            planned = resolve_trial_config(self.base, dict(trial.config)).training.total_epochs
        return TrialState.PRUNED if ran < planned else TrialState.COMPLETE

    # --- resume --------------------------------------------------------------
    def backfill(self, location: str) -> None:
        """Read what the trials reported from their ``result.json`` logs and the epochs table under ``location``.

        For a resumed search. A trial that ended just before its driver was
        killed is ``TERMINATED`` in Tune's restored state, but Tune hands the
        new driver neither its last result nor its end; the logs and the table
        (which may hold an epoch the log lost) give its objective values and
        any epoch the study lacks, written when the trial is finished here.
        """
        table = read_table(join_location(location, EPOCHS_TABLE), columns=["experiment", "trial_id", "epoch", *self.metrics])
        # A killed driver may have written an epoch's row before Ray's log reached the disk with it.
        rows = [r for r in table.to_pylist() if r.get("experiment") == self.experiment] if table is not None else []
        for result in [*read_results(location), *rows]:
            trial_id, epoch = result.get("trial_id"), result.get("epoch")
            if not isinstance(trial_id, str) or not isinstance(epoch, int):
                continue
            last = self._last.get(trial_id)
            if last is None or int(last.get("epoch", 0)) <= epoch:
                self._last[trial_id] = result
            value = result.get(self.metrics[0])
            if isinstance(value, int | float) and finite(value):
                self._logged.setdefault(trial_id, {})[epoch] = float(value)

    # --- Tune callback hooks -----------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._trial_id(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any) -> None:
        if "epoch" not in result:
            return
        self._last[trial.trial_id] = result
        trial_id = self._trial_id(trial)
        value = result.get(self.metrics[0])
        if isinstance(value, int | float) and finite(value) and not self._is_finished(trial_id):
            self._open().set_trial_intermediate_value(trial_id, int(result["epoch"]), float(value))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, self._ended_state(trial))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, TrialState.FAIL)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # Trials that ended while no driver watched (a resumed search) or that a search budget
        # stopped end here with the state Tune restored for them.
        for trial in trials:
            if trial.status == Trial.TERMINATED:
                self._finish(trial, self._ended_state(trial))
            elif trial.status == Trial.ERROR:
                self._finish(trial, TrialState.FAIL)
        self._fail_unknown(trials)
        if self._storage is not None:
            self._storage.remove_session()

    def _fail_unknown(self, trials: list[Trial]) -> None:
        """Mark ``FAIL`` the running trials of the study that Tune does not know.

        A driver killed right after a trial started leaves it ``RUNNING`` here
        while the experiment state Tune saved before never heard of it; the
        resumed search runs a new trial instead, and the old one would stay
        ``RUNNING`` for ever.
        """
        storage = self._open()
        known = {trial.trial_id for trial in trials}
        for tune_id, trial_id in self._trial_ids.items():
            if tune_id not in known and not self._is_finished(trial_id):
                storage.set_trial_user_attr(
                    trial_id, "fail_reason", "its driver died before Tune's experiment state recorded it; the resumed search ran another"
                )
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
