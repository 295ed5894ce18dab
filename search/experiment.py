"""Building and running the Ray Tune experiment of a space."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from search.recorder import ResultRecorder
from search.space import ParamSpec, SearchConfig, Space
from trainables.tune_adapter import budgeted_trainable

# Our recorder writes the tables and TensorBoard files and prints progress;
# Ray's own CSV and TensorBoardX loggers would only duplicate them (a JSON log
# is added back below) and its status tables would flood the terminal.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Keeping one checkpoint per trial forces an experiment snapshot per epoch; at
# our epoch lengths that is cheap, so Ray's warning about it is noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


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
    """

    experiment_dir: Path
    best: dict[str, Any] | None
    num_trials: int
    errors: int
    wall_time_s: float


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


def build_searcher(search: SearchConfig) -> Any:
    """OptunaSearch with a seeded sampler (TPE or random); None for a grid."""
    if search.algorithm == "grid":
        return None
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler: optuna.samplers.BaseSampler
    if search.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=search.seed)
    return OptunaSearch(sampler=sampler)


def start_ray(address: str | None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start Ray on this machine."""
    import ray

    if ray.is_initialized():
        return
    # Trials report through Tune, and failures land in their error files and the
    # trials table; forwarding worker logs would only repeat Ray's INFO lines.
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False, "log_to_driver": False}
    if address is None and "RAY_ADDRESS" not in os.environ:
        kwargs["num_cpus"] = os.cpu_count() or 1
    else:
        kwargs.pop("include_dashboard")
    ray.init(address=address, **kwargs)


def experiment_name(space: Space, name: str | None) -> str:
    """``name`` if given, else the space's experiment name with a timestamp."""
    return name or f"{space.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_search(space: Space, *, results_dir: Path, name: str | None = None, address: str | None = None, echo: Any = print) -> SearchOutcome:
    """Run the search of ``space`` with Ray Tune and record its results.

    Args:
        space: a validated space (:func:`search.load_space`).
        results_dir: parent of the experiment directory.
        name: experiment directory name (default: space name + timestamp).
        address: a Ray cluster to join (``auto`` or ``host:port``).
        echo: where progress lines go.
    """
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    started = time.monotonic()
    experiment = experiment_name(space, name)
    experiment_dir = results_dir.resolve() / experiment
    search = space.search
    echo(
        f"neqtune: experiment {experiment}: {space.num_trials()} trials ({search.algorithm}), "
        f"{search.max_concurrent} at a time, {search.cpus_per_trial:g} CPU each; results in {experiment_dir}"
    )
    start_ray(address)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    (experiment_dir / "space.yaml").write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))

    grid = search.algorithm == "grid"
    param_space = {key: tune_domain(spec, grid=grid) for key, spec in search.params.items()}
    trainable = tune.with_resources(
        tune.with_parameters(budgeted_trainable, base=space.base, threads=max(1, int(search.cpus_per_trial))),
        {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial},
    )
    recorder = ResultRecorder(experiment_dir, experiment, space.base, searched=list(search.params), echo=echo)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            search_alg=build_searcher(search),
            num_samples=search.num_samples,
            max_concurrent_trials=search.max_concurrent,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=str(results_dir.resolve()),
            callbacks=[recorder, JsonLoggerCallback()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )
    results = tuner.fit()
    rows = [row for row in recorder.trials.table().to_pylist() if row["experiment"] == experiment]
    finished = [
        row
        for row in rows
        if row["status"] == "TERMINATED" and isinstance(row.get(search.metric), (int, float)) and not math.isnan(row[search.metric])
    ]
    sign = 1 if search.mode == "max" else -1
    best = max(finished, key=lambda row: sign * row[search.metric]) if finished else None
    return SearchOutcome(
        experiment_dir=experiment_dir,
        best=best,
        num_trials=len(results),
        errors=results.num_errors,
        wall_time_s=time.monotonic() - started,
    )
