"""Running the Ray Tune experiment of a space: :func:`run_search`, :func:`resume_search` and :func:`finish_search`.

The pieces they put together have modules of their own: the Tuner's searcher, scheduler, stopper
and callbacks (:mod:`neqtune.search.tuner`), GPUs and concurrency (:mod:`neqtune.search.resources`),
where results live (:mod:`neqtune.search.storage`), joining or starting Ray
(:mod:`neqtune.search.ray_cluster`) and Ctrl-C (:mod:`neqtune.search.interrupts`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from neqtune.pareto import PARETO_TABLE, pareto_front
from neqtune.search.checkpoints import fill_missing_checkpoints
from neqtune.search.interrupts import SearchInterrupted, StopOnInterrupt
from neqtune.search.ray_cluster import ClusterError, start_ray, starts_local_ray
from neqtune.search.recorder import ResultRecorder
from neqtune.search.resources import resolve_concurrency, resolve_gpus
from neqtune.search.space import Space, build_space
from neqtune.search.storage import check_cluster_storage, storage_errors, storage_root, write_text
from neqtune.search.tables import (
    config_column_types,
    is_uri,
    join_location,
    location_name,
    resolve_location,
    rows_to_table,
    write_atomic,
)
from neqtune.search.trainable import budgeted_trainable

# Tune pickles the searcher and the stopper into the experiment's tuner.pkl by module and class name. An
# experiment saved before they moved to neqtune.search.tuner names them here, and --resume must still load it
# (TrialEpochBudget, which resume_search uses, comes in with the Tuner's other pieces).
from neqtune.search.tuner import RefusingOptunaSearch as RefusingOptunaSearch
from neqtune.search.tuner import (
    TrialEpochBudget,
    build_scheduler,
    build_searcher,
    build_stopper,
    reported_epochs,
    study_recorder,
    tune_callbacks,
    tune_domain,
)
from neqtune.trainables.config import TrialConfig

# Our recorder writes the tables and TensorBoard files and prints progress;
# Ray's own CSV and TensorBoardX loggers would only duplicate them (a JSON log
# is added back: neqtune.search.tuner.tune_callbacks) and its status tables would flood the terminal.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Keeping one checkpoint per trial forces an experiment snapshot per epoch; at
# our epoch lengths that is cheap, so Ray's warning about it is noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# A trial whose config is invalid reports its reason as its only result, without metrics, and ends
# (Ray would retry a raised error max_failures times); Tune's check that every result carries the
# searcher's metrics would turn that report into an error of the whole run. Every epoch's report
# carries all the metrics (neqtune.trainables.metrics), so the check has nothing else to catch.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")

SPACE_FILE = "space.yaml"


@dataclass(frozen=True)
class SearchOutcome:
    """What a finished search produced.

    Attributes:
        experiment_dir: where its tables and trial directories are.
        best: the best trial's row of the trials table (by the search
            metric), or None if no trial finished.
        num_trials: trials run.
        errors: trials that failed.
        wall_time_s: seconds from start to end, Ray start included.
        pareto: for several objectives, the trials no other trial
            dominates (also in ``pareto.parquet``); None otherwise.
        objectives: the metrics the search optimised.
        searched: the dotted keys the search varied.
        location: where the tables and trial directories are (a path or a
            URI; ``experiment_dir`` holds the TensorBoard files).
    """

    experiment_dir: Path
    best: dict[str, Any] | None
    num_trials: int
    errors: int
    wall_time_s: float
    pareto: list[dict[str, Any]] | None = None
    objectives: tuple[str, ...] = ()
    searched: tuple[str, ...] = ()
    location: str = ""


def final_rows(recorder: ResultRecorder, experiment: str, metrics: list[str]) -> list[dict[str, Any]]:
    """The trials table's rows of ``experiment``, with any objective it lacks taken from the trial's last epoch."""
    rows = [row for row in recorder.trials.table().to_pylist() if row["experiment"] == experiment]
    missing = [m for m in metrics if rows and m not in rows[0]]
    if missing:
        last: dict[str, dict[str, Any]] = {}
        for row in recorder.epochs.table(columns=["experiment", "trial_id", "epoch", *missing]).to_pylist():
            if row["experiment"] == experiment and row["epoch"] >= last.get(row["trial_id"], {}).get("epoch", -1):
                last[row["trial_id"]] = row
        for row in rows:
            row.update({m: last.get(row["trial_id"], {}).get(m) for m in missing})
    return rows


def _has_metrics(row: dict[str, Any], metrics: list[str]) -> bool:
    return all(isinstance(row.get(m), (int, float)) and not math.isnan(row[m]) for m in metrics)


def experiment_name(space: Space, name: str | None) -> str:
    """``name`` if given, else the space's experiment name with a timestamp."""
    return name or f"{space.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_trainable(space: Space, gpus_per_trial: float) -> Any:
    """The Tune trainable of ``space``: the budgeted trainable with its base config and resources (``gpus_per_trial`` resolved)."""
    from ray import tune

    search = space.search
    return tune.with_resources(
        tune.with_parameters(
            budgeted_trainable,
            base=space.base,
            plugins=space.plugins,
            threads=max(1, int(search.cpus_per_trial)),
            repeats=search.repeats,
            checkpoint_interval_s=search.checkpoint_interval_s,
        ),
        {"cpu": search.cpus_per_trial, "gpu": gpus_per_trial},
    )


def run_search(
    space: Space,
    *,
    results_dir: Path,
    name: str | None = None,
    address: str | None = None,
    echo: Any = print,
    storage: str | None = None,
    shared_storage: bool = False,
    stop: StopOnInterrupt | None = None,
) -> SearchOutcome:
    """Run the search of ``space`` with Ray Tune and record its results.

    Args:
        space: a validated space (:func:`search.load_space`).
        results_dir: parent of the experiment directory (TensorBoard files
            always go there; tables and checkpoints too unless ``storage``).
        name: experiment directory name (default: space name + timestamp).
        address: a Ray cluster to join (``auto`` or ``host:port``).
        echo: where progress lines go.
        storage: where tables, trial directories and checkpoints go: a local
            path or a URI (``s3://...``, ``gs://...``); default ``results_dir``.
        shared_storage: the local ``storage`` path is on a file system every
            node mounts (see :func:`~neqtune.search.storage.check_shared_storage`).
        stop: the Ctrl-C handling the command line installed (see :class:`~neqtune.search.interrupts.StopOnInterrupt`).

    Raises:
        ClusterError: unreachable cluster, unusable storage (before any trial runs).
        StorageError: the results or the storage location filled up or turned read-only.
        SearchInterrupted: Ctrl-C.
    """
    experiment = experiment_name(space, name)
    root = storage_root(storage, results_dir)
    location = join_location(root, experiment)
    with storage_errors(location):
        return _run_search(space, results_dir, experiment, root, location, address=address, echo=echo, shared_storage=shared_storage, stop=stop)


def _run_search(
    space: Space,
    results_dir: Path,
    experiment: str,
    root: str,
    location: str,
    *,
    address: str | None,
    echo: Any,
    shared_storage: bool,
    stop: StopOnInterrupt | None,
) -> SearchOutcome:
    from ray import tune

    started = time.monotonic()
    experiment_dir = results_dir.resolve() / experiment if is_uri(root) else Path(location)
    search = space.search
    echo(
        f"neqtune: experiment {experiment}: {space.num_trials()} trials ({search.algorithm}), "
        f"{search.max_concurrent} at a time, {search.cpus_per_trial:g} CPU each; results in {location}"
    )
    start_ray(address)
    check_cluster_storage(root, shared_storage)
    gpus_per_trial = resolve_gpus(space, echo=echo)
    max_concurrent = resolve_concurrency(space, local=starts_local_ray(address), gpus_per_trial=gpus_per_trial, echo=echo)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    write_text(join_location(location, SPACE_FILE), yaml.safe_dump(space.to_dict(), sort_keys=False))

    grid = search.algorithm == "grid"
    param_space = {key: tune_domain(spec, grid=grid) for key, spec in search.params.items()}
    recorder = ResultRecorder(experiment_dir, experiment, space.base, searched=list(search.params), flush_every_s=search.table_flush_s, echo=echo, tables_dir=location)
    tuner = tune.Tuner(
        build_trainable(space, gpus_per_trial),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(search),  # the searcher and the scheduler carry their own metrics
            scheduler=build_scheduler(space),
            reuse_actors=search.reuse_actors,
            num_samples=search.num_samples,
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=root,
            callbacks=tune_callbacks(recorder, study_recorder(space, experiment_dir, experiment)),
            stop=build_stopper(space),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            verbose=0,
        ),
    )
    return finish_search(tuner, recorder, space, experiment_dir=experiment_dir, started=started, stop=stop)


def resume_search(
    location: str,
    *,
    results_dir: Path | None = None,
    address: str | None = None,
    echo: Any = print,
    shared_storage: bool = False,
    stop: StopOnInterrupt | None = None,
) -> SearchOutcome:
    """Continue a search whose driver died or was stopped: ``Tuner.restore`` of ``results/<experiment>`` (or a URI).

    Finished trials stay finished, unfinished ones continue from their last
    checkpoint, the Optuna searcher keeps its state (saved with the
    experiment), and the tables are reopened and backfilled so that every
    trial-epoch ends in them exactly once.

    Args:
        location: the experiment directory (local path or URI).
        results_dir: where TensorBoard files go for a URI ``location``
            (default: ``./results``).
        stop: the Ctrl-C handling the command line installed (see :class:`~neqtune.search.interrupts.StopOnInterrupt`).

    Raises:
        ClusterError: ``location`` holds no experiment; unreachable cluster; unusable storage.
        StorageError: the storage location filled up or turned read-only.
        SearchInterrupted: Ctrl-C.
    """
    from ray import tune

    started = time.monotonic()
    try:
        fs, path = resolve_location(location)
    except ValueError as err:
        raise ClusterError(f"--resume {err}") from None
    location = storage_root(location, Path(path)) if fs is not None else path
    space_file = join_location(location, SPACE_FILE)
    import pyarrow.fs as pafs

    filesystem, space_path = (fs, path.rstrip("/") + f"/{SPACE_FILE}") if fs is not None else (pafs.LocalFileSystem(), space_file)
    if not tune.Tuner.can_restore(location) or filesystem.get_file_info(space_path).type != pafs.FileType.File:
        raise ClusterError(f"--resume {location}: no experiment to resume there (expected {SPACE_FILE}, tuner.pkl and experiment_state-*.json)")
    with filesystem.open_input_stream(space_path) as stream:
        text = stream.read().decode()
    try:
        space = build_space(yaml.safe_load(text), space_file)
    except ValueError as err:
        raise ClusterError(f"--resume {str(err).splitlines()[0]}") from None
    experiment = location_name(location)
    experiment_dir = Path(location) if fs is None else (results_dir or Path("results")).resolve() / experiment
    echo(f"neqtune: resuming experiment {experiment} from {location}")
    with storage_errors(location):
        start_ray(address)
        check_cluster_storage(location, shared_storage)
        recorder = ResultRecorder(experiment_dir, experiment, space.base, searched=list(space.search.params), flush_every_s=space.search.table_flush_s, echo=echo, tables_dir=location)
        added = recorder.backfill(location)
        echo(f"neqtune: {len(recorder.epochs.previous_keys())} trial-epochs in the tables, {added} recovered from the trials' result logs")
        filled = fill_missing_checkpoints(location)
        tuner = tune.Tuner.restore(location, trainable=build_trainable(space, resolve_gpus(space, echo=echo)), resume_unfinished=True, resume_errored=False)
        # The recorder saved with the experiment belongs to the dead driver; supply the callbacks again.
        internal = tuner._local_tuner  # Tuner has no public setter for the restored run config
        assert internal is not None, "resuming through Ray Client is not supported"
        study = study_recorder(space, experiment_dir, experiment)
        study.backfill(location)  # the last results of trials that ended just before the driver died
        internal.get_run_config().callbacks = tune_callbacks(recorder, study)
        budget = internal.get_run_config().stop
        if isinstance(budget, TrialEpochBudget):  # the budget counts what the dead driver's trials spent
            budget.spent = reported_epochs(location)
        try:
            return finish_search(tuner, recorder, space, experiment_dir=experiment_dir, started=started, stop=stop)
        finally:
            storage = resolve_location(location)[0] or pafs.LocalFileSystem()
            for directory in filled:  # the stand-ins served their purpose (Tune has newer checkpoints now)
                if storage.get_file_info(directory).type == pafs.FileType.Directory:
                    storage.delete_dir(directory)


def finish_search(
    tuner: Any, recorder: ResultRecorder, space: Space, *, experiment_dir: Path, started: float, stop: StopOnInterrupt | None = None
) -> SearchOutcome:
    """Run ``tuner`` to the end and summarise the experiment from its tables.

    Raises:
        StorageError: a write failed on a full or read-only disk (the recorder's, or a trial's checkpoint).
        SearchInterrupted: Ctrl-C stopped the trials (``stop``).
    """
    search = space.search
    experiment = recorder.experiment
    if stop is not None:
        stop.location, stop.in_fit = recorder.tables_dir, True
    try:
        results = tuner.fit()
    except Exception as err:
        if recorder.storage_error is not None:
            raise recorder.storage_error from err
        raise
    finally:
        if stop is not None:
            stop.in_fit = False
    if recorder.storage_error is not None:  # raised inside Tune's clean-up, which went on
        raise recorder.storage_error
    if stop is not None and stop.requested:
        raise SearchInterrupted(recorder.tables_dir, forced=False)
    rows = final_rows(recorder, experiment, search.metrics)
    finished = [row for row in rows if row["status"] in ("TERMINATED", "STOPPED") and _has_metrics(row, search.metrics)]
    pareto: list[dict[str, Any]] | None = None
    if search.multi_objective:
        pareto = pareto_front(finished, search.metrics, search.modes)
        write_atomic(rows_to_table(pareto, config_column_types(TrialConfig)), f"{recorder.tables_dir}/{PARETO_TABLE}")
    sign = 1 if search.modes[0] == "max" else -1
    best = max(finished, key=lambda row: sign * row[search.metrics[0]]) if finished else None
    return SearchOutcome(
        experiment_dir=experiment_dir,
        best=best,
        num_trials=len(results),
        errors=results.num_errors + recorder.invalid_trials,
        wall_time_s=time.monotonic() - started,
        pareto=pareto,
        objectives=tuple(search.metrics),
        searched=tuple(search.params),
        location=recorder.tables_dir,
    )
