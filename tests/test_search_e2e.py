"""End to end: run_search.py with real Ray Tune, Optuna, Parquet and TensorBoard files."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.search  # every test here runs a real search or a Ray cluster (make test-fast leaves them out)

ROOT = Path(__file__).resolve().parent.parent


def tiny_space(search: dict[str, Any]) -> dict[str, Any]:
    return {
        "experiment": "tiny",
        "data": {"name": "digits", "image_size": 16, "batch_size": 64},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": 2, "lr": 0.1, "momentum": 0.9},
        "budget": {"policy": "velocity", "initialization": "random", "scheme": "mbv2-w0.35_scheme_3"},
        "search": {"max_concurrent": 2, "cpus_per_trial": 1, **search},
    }


def run_search(tmp_path: Path, space: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], Path]:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(space))
    done = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), "--space", str(path), "--results", str(tmp_path / "results"), "--name", "e2e"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done, tmp_path / "results" / "e2e"


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    space = tiny_space({"algorithm": "grid", "num_samples": 1, "params": {"budget.policy": {"choice": ["velocity", "random"]}}})
    return run_search(tmp_path_factory.mktemp("grid"), space)


def test_grid_writes_one_row_per_trial_epoch(grid_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, experiment = grid_run
    epochs = pq.read_table(experiment / "epochs.parquet")
    frame = epochs.to_pandas()
    assert len(frame) == 4
    assert sorted(frame["budget.policy"].unique()) == ["random", "velocity"]
    assert frame.groupby("trial_id")["epoch"].apply(list).tolist() == [[1, 2], [1, 2]]
    columns = epochs.column_names
    # config columns first, then the metrics
    assert columns[:3] == ["schema_version", "experiment", "trial_id"]
    assert columns.index("budget.scheme") < columns.index("epoch")
    assert epochs.schema.field("training.lr").type == pa.float64()
    assert epochs.schema.field("training.no_wd_keys").type == pa.list_(pa.string())
    assert epochs.schema.field("layer_frozen_pct").type == pa.list_(pa.float64())
    assert epochs.schema.field("budget.ratio").type == pa.float64()  # all null here, still typed
    assert (frame["experiment"] == "e2e").all()
    assert (frame["budget_params"] == 55_920).all()
    assert (frame["params_updated"] <= frame["budget_params"]).all()
    assert epochs.schema.field("params_outside_budget").type == pa.float64()
    assert (frame["params_outside_budget"] == 26_890).all()  # mbv2-w0.35's norms and classifier (test_accounting counts them)
    assert frame["node_id"].notna().all()
    assert frame["layer_frozen_pct"].map(len).eq(52).all()
    assert "best trial" in done.stdout and "test top-1 at that epoch" in done.stdout


def test_grid_trials_table_and_saved_configs(grid_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, experiment = grid_run
    trials = pd.read_parquet(experiment / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()
    assert trials["best_val_top1"].map(math.isfinite).all()
    assert trials["layer_names"].map(len).eq(52).all()
    epochs = pd.read_parquet(experiment / "epochs.parquet")
    for _, trial in trials.iterrows():
        last = epochs[(epochs.trial_id == trial.trial_id) & (epochs.epoch == 2)].iloc[0]
        assert trial.best_val_top1 == last.best_val_top1
        assert trial.test_top1_at_best_val == last.test_top1_at_best_val
        saved = yaml.safe_load((Path(trial.path) / "resolved_config.yaml").read_text())
        assert saved["budget"]["policy"] == trial["budget.policy"]
        assert saved["training"]["epochs"] == 2
    space = yaml.safe_load((experiment / "space.yaml").read_text())
    assert space["search"]["params"] == {"budget.policy": {"choice": ["velocity", "random"]}}


def test_tensorboard_events_hold_the_curves(grid_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, experiment = grid_run
    epochs = pd.read_parquet(experiment / "epochs.parquet")
    runs = sorted((experiment / "tensorboard").iterdir())
    trial_of = {run.name: run.name.rpartition(",trial=")[2] for run in runs}
    assert sorted(trial_of.values()) == sorted(epochs.trial_id.unique())
    policy_of = epochs.groupby("trial_id")["budget.policy"].first()
    for run in runs:  # a legend tells the trials apart: policy, scheme, first mask, seed
        assert run.name == f"{policy_of[trial_of[run.name]]},mbv2-w0.35_scheme_3,init=random,seed=0,trial={trial_of[run.name]}"
    for run in runs:
        events = EventAccumulator(str(run))
        events.Reload()
        tags = events.Tags()["scalars"]
        expected = epochs[epochs.trial_id == trial_of[run.name]].sort_values("epoch")
        assert {"train_loss", "val_top1", "test_top1", "lr", "frozen_pct", "params_updated"} <= set(tags)
        assert "updated_pct_by_layer/features.0.0" in tags
        assert "flops_saved_by_layer/features.0.0" in tags
        updated = [e.value for e in events.Scalars("updated_pct_by_layer/features.0.0")]
        frozen = [row[0] for row in expected.layer_frozen_pct]  # features.0.0 is the first conv
        assert updated == pytest.approx([100.0 - f for f in frozen], rel=1e-6)
        val = [(e.step, e.value) for e in events.Scalars("val_top1")]
        assert [s for s, _ in val] == [1, 2]
        assert [v for _, v in val] == pytest.approx(expected.val_top1.tolist(), rel=1e-6)


def test_optuna_search_samples_the_space(tmp_path: Path) -> None:
    space = tiny_space(
        {
            "algorithm": "optuna",
            "num_samples": 2,
            "seed": 3,
            "params": {"budget.policy": {"choice": ["velocity", "random", "su", "full"]}, "training.lr": {"loguniform": [0.01, 0.3]}},
        }
    )
    done, experiment = run_search(tmp_path, space)
    trials = pd.read_parquet(experiment / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()
    assert trials["training.lr"].between(0.01, 0.3).all()
    assert trials["training.lr"].nunique() == 2
    assert len(pd.read_parquet(experiment / "epochs.parquet")) == 4
    assert "2 trials (0 failed)" in done.stdout
