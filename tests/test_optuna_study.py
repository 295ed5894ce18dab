"""optuna.db: a real small search keeps its trials in an Optuna RDB study, and Optuna's own tools read it.

One ``run_search.py`` grid (2 policies x 2 learning rates, 2 epochs on digits) is run in a subprocess, as a
user runs it (Ray's token-authentication notice must not be printed); the study file is read while it runs and
after it ends, with Optuna's API, its fANOVA importances and its plotting functions, and through
``python -m neqtune.results.analyze``. Resuming a search keeps the same study current (``test_faults``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from neqtune.search.search_config import ParamSpec
from neqtune.search.study import OPTUNA_DB, param_distributions
from neqtune.search.tables import EPOCHS_TABLE, rows_to_table, write_atomic

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parent.parent
SPACE: dict[str, Any] = {
    "experiment": "study",
    "data": {"name": "digits", "image_size": 16, "batch_size": 64},
    "model": {"name": "mbv2-w0.35"},
    "training": {"epochs": 2, "lr": 0.1, "momentum": 0.9},
    "budget": {"policy": "velocity", "initialization": "random", "scheme": "mbv2-w0.35_scheme_3"},
    "search": {
        "algorithm": "grid",
        "num_samples": 1,
        "max_concurrent": 2,
        "cpus_per_trial": 1,
        "params": {"budget.policy": {"choice": ["velocity", "random"]}, "training.lr": {"choice": [0.03, 0.3]}},
    },
}


def load(db: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=None, storage=f"sqlite:///{db}")


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, int]:
    """The search's output, its experiment directory, and how many trials the study held while the driver still ran."""
    tmp = tmp_path_factory.mktemp("study")
    (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # as a user runs it: Ray picks token auth itself
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_search.py"), "--space", "space.yaml", "--name", "study"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp, env=env,
    )  # fmt: skip
    db = tmp / "results" / "study" / OPTUNA_DB
    seen_running = 0
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if db.is_file() and not seen_running:
            try:
                trials = load(db).get_trials(deepcopy=False)
            except Exception:  # the file is being created: read it again
                trials = []
            if any(t.intermediate_values for t in trials) and proc.poll() is None:
                seen_running = len(trials)
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out, tmp / "results" / "study", seen_running


@pytest.mark.search
def test_the_study_is_written_while_the_search_runs(search: tuple[str, Path, int]) -> None:
    out, experiment, seen_running = search
    assert seen_running >= 1, "optuna.db had no trial with an epoch while the driver ran"
    assert "Token authentication is enabled" not in out  # the notice of the local Ray neqtune started itself
    assert f"view the curves: tensorboard --logdir {experiment.parent}" in out  # absolute


@pytest.mark.search
def test_every_trial_with_its_values_states_and_epochs(search: tuple[str, Path, int]) -> None:
    _, experiment, _ = search
    study = load(experiment / OPTUNA_DB)
    assert study.study_name == "study" and study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.metric_names == ["best_val_top1"]
    trials = pd.read_parquet(experiment / "trials.parquet").set_index("trial_id")
    epochs = pd.read_parquet(experiment / "epochs.parquet")
    frozen = study.get_trials()
    assert len(frozen) == 4 and {t.state for t in frozen} == {TrialState.COMPLETE}
    assert sorted(t.user_attrs["tune_trial_id"] for t in frozen) == sorted(trials.index)
    for trial in frozen:
        row = trials.loc[trial.user_attrs["tune_trial_id"]]
        assert trial.params == {"budget.policy": row["budget.policy"], "training.lr": row["training.lr"]}
        assert trial.value == pytest.approx(row["best_val_top1"])
        curve = epochs[epochs.trial_id == row.name].sort_values("epoch")
        assert trial.intermediate_values == pytest.approx(dict(zip(curve.epoch, curve.best_val_top1, strict=True)))
        assert trial.user_attrs["epochs_run"] == 2
        assert trial.distributions["budget.policy"] == CategoricalDistribution(["velocity", "random"])
    assert sorted((t.params["budget.policy"], t.params["training.lr"]) for t in frozen) == sorted(
        (p, lr) for p in ("velocity", "random") for lr in (0.03, 0.3)
    )


@pytest.mark.search
def test_optunas_own_importances_and_plots_work_on_it(search: tuple[str, Path, int]) -> None:
    _, experiment, _ = search
    study = load(experiment / OPTUNA_DB)
    shares = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert set(shares) == {"budget.policy", "training.lr"} and sum(shares.values()) == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = optuna.visualization.matplotlib.plot_intermediate_values(study)
        assert len(axes.get_lines()) == 4  # one curve per trial
        axes = optuna.visualization.matplotlib.plot_param_importances(study)
        assert sorted(label.get_text() for label in axes.get_yticklabels()) == ["budget.policy", "training.lr"]


@pytest.mark.search
def test_analyze_prints_and_saves_the_importances(search: tuple[str, Path, int], tmp_path: Path) -> None:
    _, experiment, _ = search
    done = subprocess.run(
        [sys.executable, "-m", "neqtune.results.analyze", str(experiment), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "## Hyperparameter importances (Optuna fANOVA)" in done.stdout
    assert "**study**, objective `best_val_top1`, 4 complete trials:" in done.stdout
    table = pd.read_csv(tmp_path / "out" / "importance.csv")
    assert sorted(table.param) == ["budget.policy", "training.lr"]
    assert table.importance.sum() == pytest.approx(1.0) and (table.n_trials == 4).all()
    expected = optuna.importance.get_param_importances(
        load(experiment / OPTUNA_DB), evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    assert dict(zip(table.param, table.importance, strict=True)) == pytest.approx(expected)  # Optuna's numbers, not ours
    assert (tmp_path / "out" / "importance.md").read_text().startswith("## Hyperparameter importances (Optuna fANOVA)")


def test_an_experiment_without_a_study_gets_a_note(tmp_path: Path) -> None:
    from neqtune.results.importance import parameter_importances

    found = parameter_importances([tmp_path, "s3://bucket/exp"])
    assert found.table.empty
    assert found.notes[0] == f"{tmp_path}: no {OPTUNA_DB} (written by searches since neqtune kept one), so no importances"
    assert "stays in the driver's local experiment directory, not found at results/exp" in found.notes[1]


def test_distributions_follow_the_space() -> None:
    distributions = param_distributions(
        {
            "budget.policy": ParamSpec(choice=["velocity", "su"]),
            "training.lr": ParamSpec(loguniform=[0.01, 0.2]),
            "training.momentum": ParamSpec(uniform=[0.0, 0.9]),
            "training.epochs": ParamSpec(randint=[2, 6]),
            "training.no_wd_keys": ParamSpec(choice=[["norm"], ["norm", "bias"]]),
        }
    )
    assert distributions["budget.policy"] == CategoricalDistribution(["velocity", "su"])
    assert distributions["training.lr"] == FloatDistribution(0.01, 0.2, log=True)
    assert distributions["training.momentum"] == FloatDistribution(0.0, 0.9)
    assert distributions["training.epochs"] == IntDistribution(2, 5)  # Tune's randint leaves the upper bound out
    assert distributions["training.no_wd_keys"] == CategoricalDistribution(["['norm']", "['norm', 'bias']"])


def test_a_resumed_recorder_reopens_the_study_and_fails_the_trials_tune_forgot(tmp_path: Path) -> None:
    import pickle

    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from neqtune.search.study import StudyRecorder

    def stub(trial_id: str, lr: float) -> Trial:
        storage = StorageContext(storage_path=str(tmp_path / "ray"), experiment_dir_name="exp", trial_dir_name=f"trial_{trial_id}")
        return Trial("neqtune", config={"training.lr": lr}, trial_id=trial_id, stub=True, storage=storage)

    def recorder() -> StudyRecorder:
        return StudyRecorder(
            tmp_path, "exp", params={"training.lr": ParamSpec(loguniform=[0.01, 0.3])}, metrics=["best_val_top1"], modes=["max"],
            base={"training": {"epochs": 2}},
        )  # fmt: skip

    first = recorder()
    a, b, c = stub("a", 0.05), stub("b", 0.1), stub("c", 0.2)
    first.on_trial_start(0, [a], a)
    first.on_trial_result(0, [a], a, {"epoch": 1, "best_val_top1": 40.0})
    first.on_trial_start(0, [a, c], c)
    first.on_trial_result(0, [a, c], c, {"epoch": 1, "best_val_top1": 30.0})  # c's epoch 2 reaches only its result.json
    first.on_trial_start(0, [a, b, c], b)  # the driver dies here; Tune's saved state knows a and c, and c as ended
    logs = tmp_path / "location" / "trial_c"
    logs.mkdir(parents=True)
    (logs / "result.json").write_text(
        "\n".join(json.dumps({"trial_id": "c", "epoch": e, "best_val_top1": v}) for e, v in ((1, 30.0), (2, 35.0))) + "\n"
    )
    # ... and its epoch 3 only the epochs table (written before the log caught up).
    write_atomic(
        rows_to_table([{"experiment": "exp", "trial_id": "c", "epoch": 3, "best_val_top1": 36.0}]), tmp_path / "location" / EPOCHS_TABLE
    )
    resumed = pickle.loads(pickle.dumps(recorder()))  # Tune pickles its callbacks with the experiment
    resumed.backfill(str(tmp_path / "location"))
    resumed.on_trial_result(0, [a], a, {"epoch": 1, "best_val_top1": 41.0})  # a resumed trial reports epoch 1 again
    resumed.on_trial_result(0, [a], a, {"epoch": 2, "best_val_top1": 45.0})
    a.status = c.status = Trial.TERMINATED
    resumed.on_trial_complete(0, [a, c], a)
    resumed.on_experiment_end([a, c])  # Tune never hands c's end to the resumed driver
    trials = {t.user_attrs["tune_trial_id"]: t for t in load(tmp_path / OPTUNA_DB).get_trials()}
    assert set(trials) == {"a", "b", "c"}
    assert trials["c"].state == TrialState.COMPLETE and trials["c"].value == 36.0
    assert trials["c"].intermediate_values == {1: 30.0, 2: 35.0, 3: 36.0}
    assert trials["a"].state == TrialState.COMPLETE and trials["a"].value == 45.0
    assert trials["a"].intermediate_values == {1: 41.0, 2: 45.0} and trials["a"].params == {"training.lr": 0.05}
    assert trials["b"].state == TrialState.FAIL and "driver died" in trials["b"].user_attrs["fail_reason"]


def test_openers_racing_to_create_a_new_database_all_get_it(tmp_path: Path) -> None:
    """The driver and a watcher (optuna-dashboard, a notebook) opening a new optuna.db at the same moment."""
    import threading

    from neqtune.search.study import open_storage

    failures: list[BaseException] = []
    for n in range(8):
        url = f"sqlite:///{tmp_path / f'race{n}.db'}"
        start = threading.Barrier(4)

        def open_it(url: str = url, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                storage = open_storage(url)
                optuna.create_study(storage=storage, study_name="s", load_if_exists=True)
            except BaseException as err:  # collected: a thread's exception would not fail the test
                failures.append(err)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))] == ["s"]
    assert failures == []
