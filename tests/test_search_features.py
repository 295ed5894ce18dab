"""Efficient search: several objectives and Pareto sets, ASHA early stopping, seed repeats,
actor reuse, and the search-efficiency benchmark (real Ray Tune, Optuna and Parquet files)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from neqtune.pareto import compare_policies_at_budget, cost_score_mask, dominates, finite, pareto_front
from neqtune.search.cli import main, print_pareto
from neqtune.search.space import Space, SpaceError, build_space
from neqtune.trainables.config import TrialConfig
from neqtune.trainables.repeats import aggregate, repeat_seeds, train_repeats
from neqtune.trainables.trainer import Metrics, StateFn, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the machine's cores are shared, and oversubscribed threads crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(search: dict[str, Any], **training: Any) -> dict[str, Any]:
    """A space small enough for a test: 8 px digits, one or two epochs."""
    return {
        "experiment": "features",
        "data": {"name": "digits", "image_size": 8, "batch_size": 128},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": 2, "lr": 0.1, **training},
        "budget": {"policy": "velocity", "initialization": "random", "scheme": "mbv2-w0.35_scheme_3"},
        "search": {"max_concurrent": 2, "cpus_per_trial": 1, **search},
    }


def space_of(raw: dict[str, Any]) -> Space:
    return build_space(raw, "<test>")


# --- space validation ------------------------------------------------------------


def test_two_objectives_parse_and_save() -> None:
    space = space_of(tiny({"metric": ["best_val_top1", "budget_params"], "mode": ["max", "min"], "sampler": "nsga2", "population_size": 4}))
    assert space.search.multi_objective
    assert space.search.metrics == ["best_val_top1", "budget_params"]
    assert space.search.modes == ["max", "min"]
    saved = yaml.safe_load(yaml.safe_dump(space.to_dict()))
    assert saved["search"]["metric"] == ["best_val_top1", "budget_params"]
    assert saved["search"]["asha"] == {
        "metric": "best_val_top1",
        "mode": "max",
        "grace_period": 1,
        "reduction_factor": 3.0,
        "max_epochs": None,
    }
    single = space_of(tiny({}))
    assert not single.search.multi_objective and single.search.metrics == ["best_val_top1"]


@pytest.mark.parametrize(
    ("search", "key", "words"),
    [
        ({"metric": ["best_val_top1", "budget_params"], "mode": "max"}, "search.mode", "one mode per metric"),
        ({"metric": ["best_val_top1", "budget_params"], "mode": ["max"]}, "search.mode", "one mode per metric"),
        ({"metric": ["best_val_top1", "best_val_top1"], "mode": ["max", "max"]}, "search.metric", "repeat"),
        ({"metric": "test_top1_at_best_val"}, "search.metric", "must not steer by the test split"),
        ({"metric": ["best_val_top1", "accuracy"], "mode": ["max", "max"]}, "search.metric", "unknown metric 'accuracy'"),
        ({"sampler": "nsga2", "population_size": 1}, "search.population_size", "must be >= 2"),
        ({"scheduler": "asha", "asha": {"reduction_factor": 1}}, "search.asha.reduction_factor", "must be > 1"),
        ({"scheduler": "asha", "asha": {"metric": "test_top1"}}, "search.asha.metric", "must not look at the test split"),
        ({"scheduler": "asha", "asha": {"grace_period": 5}}, "search.asha.grace_period", "exceed the trials' 2 epochs"),
        ({"scheduler": "asha", "asha": {"patience": 5}}, "search.asha.patience", "unknown key"),
        ({"scheduler": "hyperband"}, "search.scheduler", "expected one of 'fifo', 'asha'"),
        ({"repeats": 0}, "search.repeats", "must be >= 1"),
        ({"checkpoint_interval_s": -1}, "search.checkpoint_interval_s", "must be >= 0 seconds"),
        ({"max_trial_epochs": 0}, "search.max_trial_epochs", "must be >= 1 epoch"),
        ({"repeats": 2, "params": {"training.seed": {"choice": [0, 1]}}}, "search.repeats", "do not also search training.seed"),
    ],
)
def test_bad_search_settings_name_the_key(search: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(SpaceError) as caught:
        space_of(tiny(search))
    message = str(caught.value)
    assert message.startswith(f"<test>: {key}: ") and words in message and "\n" not in message


def test_cli_refuses_a_bad_objective_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mo.yaml"
    path.write_text(yaml.safe_dump(tiny({"metric": ["best_val_top1", "budget_params"], "mode": ["max"]})))
    results = tmp_path / "results"
    assert main(["--space", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: search.mode: ")
    assert not results.exists()


def test_shipped_spaces_load() -> None:
    from neqtune.search.space import load_space

    mo = load_space(ROOT / "spaces" / "digits_mo.yaml")
    assert mo.search.multi_objective and mo.search.params["budget.ratio"].loguniform == [0.01, 1.0]
    asha = load_space(ROOT / "spaces" / "digits_asha.yaml")
    assert asha.search.scheduler == "asha" and asha.search.repeats == 2 and asha.asha_max_epochs() == 15
    assert (asha.search.asha.grace_period, asha.search.asha.reduction_factor) == (2, 4)


# --- Pareto sets -----------------------------------------------------------------


def test_pareto_front_by_hand() -> None:
    rows = [
        {"id": "a", "acc": 90.0, "budget": 100},
        {"id": "b", "acc": 80.0, "budget": 50},
        {"id": "c", "acc": 85.0, "budget": 100},  # dominated by a
        {"id": "d", "acc": 80.0, "budget": 60},  # dominated by b
        {"id": "e", "acc": 95.0, "budget": 400},
        {"id": "f", "acc": 95.0, "budget": 400},  # equal to e: both kept
        {"id": "g", "acc": math.nan, "budget": 1},  # no value: left out
    ]
    front = pareto_front(rows, ["acc", "budget"], ["max", "min"])
    assert [r["id"] for r in front] == ["e", "f", "a", "b"]
    assert dominates(rows[0], rows[2], ["acc", "budget"], ["max", "min"])
    assert not dominates(rows[4], rows[5], ["acc", "budget"], ["max", "min"])
    assert not dominates(rows[0], rows[1], ["acc", "budget"], ["max", "min"])
    # flipping the modes flips the front
    assert [r["id"] for r in pareto_front(rows, ["acc", "budget"], ["min", "max"])] == ["d", "c", "e", "f"]
    with pytest.raises(ValueError, match="one mode per metric"):
        pareto_front(rows, ["acc", "budget"], ["max"])
    # the analysis's one-sort front of a cost against a score is the same set
    finite_rows = [r for r in rows if finite(r["acc"])]
    mask = cost_score_mask([r["budget"] for r in finite_rows], [r["acc"] for r in finite_rows])
    assert sorted(r["id"] for r, kept in zip(finite_rows, mask, strict=True) if kept) == sorted(r["id"] for r in front)
    assert [finite(v) for v in (1, 2.5, math.nan, math.inf, True, "3", None)] == [True, True, False, False, False, False, False]


def test_policy_comparison_at_equal_budget() -> None:
    rows = [
        {"budget.policy": "velocity", "budget_params": 100, "score": 80.0},
        {"budget.policy": "velocity", "budget_params": 100, "score": 82.0},
        {"budget.policy": "random", "budget_params": 100, "score": 81.0},
        {"budget.policy": "velocity", "budget_params": 200, "score": 70.0},
        {"budget.policy": "random", "budget_params": 200, "score": 75.0},
        {"budget.policy": "random", "budget_params": 300, "score": 90.0},  # no velocity at 300
        {"budget.policy": "su", "budget_params": 100, "score": 99.0},
    ]
    comparisons = compare_policies_at_budget(rows, first="velocity", second="random", score="score")
    assert [(c.budget, c.better, c.worse) for c in comparisons] == [(100.0, 82.0, 81.0), (200.0, 70.0, 75.0)]
    assert [c.margin > 0 for c in comparisons] == [True, False]


# --- seed repeats (trainer level, no Ray) -------------------------------------------

TRIAL: dict[str, dict[str, Any]] = {
    "data": {"name": "digits", "image_size": 8, "batch_size": 128},
    "training": {"epochs": 2, "lr": 0.1, "seed": 5},
    "budget": {"policy": "random", "initialization": "random", "ratio": 0.3},
}


def test_each_seed_of_a_repeat_equals_a_single_run() -> None:
    records: list[Metrics] = []
    last = train_repeats(TRIAL, 2, lambda metrics, state: records.append(metrics))
    assert [r["epoch"] for r in records] == [1, 2]
    assert last["seeds"] == repeat_seeds(5, 2) == [5, 6]
    singles = []
    for seed in (5, 6):
        config = TrialConfig.from_dict({**TRIAL, "training": {**TRIAL["training"], "seed": seed}})
        per_epoch: list[Metrics] = []

        def collect(metrics: Metrics, state: StateFn, out: list[Metrics] = per_epoch) -> None:
            out.append(metrics)

        train(config, collect)
        singles.append(per_epoch)
    for epoch, record in enumerate(records):
        for key in ("val_top1", "test_top1", "best_val_top1", "test_top1_at_best_val"):
            assert record[f"{key}_seeds"] == [singles[0][epoch][key], singles[1][epoch][key]]
            assert record[key] == pytest.approx((singles[0][epoch][key] + singles[1][epoch][key]) / 2)
        assert record["train_loss"] == pytest.approx((singles[0][epoch]["train_loss"] + singles[1][epoch]["train_loss"]) / 2)
        assert record["best_epoch"] == max(singles[0][epoch]["best_epoch"], singles[1][epoch]["best_epoch"])


def test_repeats_resume_exactly_from_a_checkpoint() -> None:
    states: list[dict[str, Any]] = []
    records: list[Metrics] = []

    def keep(metrics: Metrics, state: StateFn) -> None:
        records.append(metrics)
        states.append(state())

    train_repeats(TRIAL, 2, keep)
    resumed: list[Metrics] = []
    train_repeats(TRIAL, 2, lambda metrics, state: resumed.append(metrics), resume=states[0])
    assert [r["epoch"] for r in resumed] == [2]
    for key in ("val_top1_seeds", "train_loss", "params_updated", "test_top1_at_best_val"):
        assert resumed[0][key] == records[1][key]
    with pytest.raises(ValueError, match="seeds"):
        train_repeats({**TRIAL, "training": {**TRIAL["training"], "seed": 9}}, 2, resume=states[0])


def test_aggregate_by_hand() -> None:
    base = {"epoch": 3, "lr": 0.1, "budget_params": 10, "layer_names": ["a", "b"], "velocity_time_s": 0.5}
    values = {
        "train_loss": 1.0, "train_top1": 50.0, "val_top1": 60.0, "test_top1": 55.0, "best_val_top1": 60.0,
        "test_top1_at_best_val": 55.0, "params_updated": 10, "budget_gap": 0, "neurons_updated": 4, "frozen_pct": 50.0,
        "flops_saved": 100.0, "flops_saved_pct": 10.0, "best_epoch": 3, "epoch_time_s": 2.0,
        "layer_frozen_pct": [0.0, 100.0], "layer_flops_saved": [0.0, 100.0],
    }  # fmt: skip
    one = {**base, **values}
    two = {**base, **values, "val_top1": 70.0, "best_val_top1": 70.0, "best_epoch": 2, "layer_frozen_pct": [50.0, 50.0]}
    merged = aggregate([one, two], [0, 1])
    assert merged["val_top1"] == 65.0 and merged["val_top1_seeds"] == [60.0, 70.0]
    assert merged["val_top1_std"] == pytest.approx(math.sqrt(50.0))  # sample std of 60 and 70
    assert merged["best_epoch"] == 3 and merged["best_epoch_seeds"] == [3, 2]
    assert merged["layer_frozen_pct"] == [25.0, 75.0]
    assert merged["epoch_time_s"] == 4.0 and merged["velocity_time_s"] == 1.0
    assert merged["lr"] == 0.1 and merged["repeats"] == 2 and merged["seeds"] == [0, 1]


# --- real Ray Tune searches ---------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    import ray

    from neqtune.search.ray_cluster import start_ray

    start_ray(None)
    yield
    ray.shutdown()


@pytest.mark.search
def test_two_objective_search_with_repeats_returns_the_pareto_set(
    ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from neqtune.search import recorder, study
    from neqtune.search.experiment import run_search

    # The driver takes every trial's resolved config and planned epochs from the trial's reports: it parses none itself.
    parsed: list[str] = []
    for module in (recorder, study):
        original = module.resolve_trial_config
        monkeypatch.setattr(module, "resolve_trial_config", lambda base, sampled, o=original, m=module: parsed.append(m.__name__) or o(base, sampled))

    space = space_of(
        tiny(
            {
                "algorithm": "optuna",
                "sampler": "tpe",
                "startup_trials": 2,
                "num_samples": 4,
                "seed": 1,
                "metric": ["best_val_top1", "budget_params"],
                "mode": ["max", "min"],
                "repeats": 2,
                "params": {"budget.policy": {"choice": ["velocity", "random"]}, "budget.ratio": {"loguniform": [0.01, 1.0]}},
            },
            epochs=1,
        )
    )
    outcome = run_search(space, results_dir=tmp_path, name="mo", echo=lambda line: None)
    assert outcome.errors == 0 and outcome.num_trials == 4
    assert parsed == []
    trials = pd.read_parquet(outcome.experiment_dir / "trials.parquet")
    assert trials["training.epochs"].tolist() == [1] * 4 and trials["budget.unit"].tolist() == ["neuron"] * 4  # resolved, whole
    assert trials["budget.ratio"].between(0.01, 1.0).all() and trials["budget.ratio"].nunique() == 4
    saved = pd.read_parquet(outcome.experiment_dir / "pareto.parquet")
    assert outcome.pareto is not None and sorted(saved.trial_id) == sorted(r["trial_id"] for r in outcome.pareto)
    rows = trials.to_dict("records")
    metrics, modes = ["best_val_top1", "budget_params"], ["max", "min"]
    on_front = set(saved.trial_id)
    for row in rows:  # the front is exactly the non-dominated trials
        dominated = any(dominates(other, row, metrics, modes) for other in rows)
        assert (row["trial_id"] in on_front) == (not dominated)
    assert {"budget.policy", "budget.ratio", "training.lr", "test_top1_at_best_val"} <= set(saved.columns)
    # seed repeats: the mean steers, the spread and per-seed values are kept
    assert (trials.repeats == 2).all() and trials.seeds.map(lambda seeds: list(seeds) == [0, 1]).all()
    assert trials.best_val_top1_seeds.map(len).eq(2).all()
    for _, trial in trials.iterrows():
        assert trial.best_val_top1 == pytest.approx(sum(trial.best_val_top1_seeds) / 2)
        assert trial.best_val_top1_std == pytest.approx(abs(trial.best_val_top1_seeds[0] - trial.best_val_top1_seeds[1]) / math.sqrt(2))
    epochs = pq.read_table(outcome.experiment_dir / "epochs.parquet")
    assert epochs.schema.field("val_top1_seeds").type == pa.list_(pa.float64())
    assert all(len(values) == 2 for values in epochs.column("val_top1_seeds").to_pylist())
    # actor reuse: four trials on two slots ran in at most two worker processes
    assert epochs.to_pandas().pid.nunique() <= 2
    print_pareto(outcome.pareto, searched=list(space.search.params), metrics=metrics)
    printed = capsys.readouterr().out
    assert f"Pareto set ({len(outcome.pareto)} trials" in printed
    assert all(trial_id in printed for trial_id in on_front)


@pytest.mark.search
def test_asha_stops_worse_trials_and_marks_them(ray_session: None, tmp_path: Path) -> None:
    """A grid run one trial at a time, so ASHA's decisions are fixed: the first trial sets each rung's cutoff."""
    from neqtune.search.experiment import run_search

    space = space_of(
        tiny(
            {
                "algorithm": "grid",
                "num_samples": 1,
                "max_concurrent": 1,
                "scheduler": "asha",
                # budget_params is known from the first epoch on, so the ranking does not depend on training noise
                "asha": {"metric": "budget_params", "mode": "min", "grace_period": 1, "reduction_factor": 2},
                "params": {"budget.ratio": {"choice": [0.05, 0.5, 0.9]}},
            },
            epochs=3,
        )
    )
    outcome = run_search(space, results_dir=tmp_path, name="asha", echo=lambda line: None)
    trials = pd.read_parquet(outcome.experiment_dir / "trials.parquet").sort_values("budget.ratio")
    assert trials.status.tolist() == ["TERMINATED", "STOPPED", "STOPPED"]
    assert trials.epochs_run.tolist() == [3, 1, 1]
    epochs = pd.read_parquet(outcome.experiment_dir / "epochs.parquet")
    assert len(epochs) == 5
    assert outcome.best is not None and outcome.best["status"] in ("TERMINATED", "STOPPED")
    assert (trials.wall_time_s >= trials.train_time_s).all()


def test_checkpoint_clock_saves_once_the_interval_passed() -> None:
    from neqtune.search.checkpoints import CheckpointClock

    now = [100.0]
    clock = CheckpointClock(10.0, clock=lambda: now[0])
    decisions = []
    for step in (4.0, 4.0, 4.0, 4.0, 7.0, 0.5):
        now[0] += step
        decisions.append(clock.due())
    assert decisions == [False, False, True, False, True, False]  # 12 s after the start, then 11 s after that save
    always = CheckpointClock(0.0, clock=lambda: now[0])
    assert [always.due() for _ in range(3)] == [True, True, True]


@pytest.mark.search
@pytest.mark.parametrize(("interval_s", "saved"), [(0.0, ["checkpoint_000002"]), (1e6, [])])
def test_checkpoint_interval_sets_which_epochs_save_state(ray_session: None, tmp_path: Path, interval_s: float, saved: list[str]) -> None:
    """Every epoch reports; the state is saved after every epoch at interval 0 (Tune keeps the newest, the third), never at a long one."""
    from neqtune.search.experiment import run_search

    space = space_of(tiny({"algorithm": "grid", "num_samples": 1, "checkpoint_interval_s": interval_s, "params": {"training.seed": {"choice": [3]}}}, epochs=3))
    outcome = run_search(space, results_dir=tmp_path, name="ckpt", echo=lambda line: None)
    (trial_dir,) = outcome.experiment_dir.glob("trial_*")
    assert sorted(p.name for p in trial_dir.glob("checkpoint_*")) == saved
    assert len(pd.read_parquet(outcome.experiment_dir / "epochs.parquet")) == 3
    assert (trial_dir / "resolved_config.yaml").is_file()


def test_trial_epoch_budget_counts_each_report_once() -> None:
    from neqtune.search.tuner import TrialEpochBudget

    budget = TrialEpochBudget(limit=6)
    for trial_id, epoch in [("a", 1), ("a", 2), ("a", 2), ("b", 1), ("a", 3), ("a", 2), ("a", 3)]:
        assert budget(trial_id, {"epoch": epoch}) is False
        assert not budget.stop_all() or budget.spent >= 6
    # a's repeated last result (Tune's final copy) did not count; its restart from epoch 1 repeated 2 and 3, which did
    assert budget.spent == 6 and budget.stop_all()
    assert not TrialEpochBudget(limit=10, spent=9).stop_all() and TrialEpochBudget(limit=10, spent=10).stop_all()


def test_a_resumed_budget_counts_the_epochs_already_reported(tmp_path: Path) -> None:
    from neqtune.search.tuner import reported_epochs

    for trial, epochs in (("trial_a", [1, 2, 3]), ("trial_b", [1, 2, 1, 2])):  # b restarted from scratch once
        (tmp_path / trial).mkdir()
        lines = [json.dumps({"trial_id": trial, "epoch": e}) for e in epochs]
        (tmp_path / trial / "result.json").write_text("\n".join(lines) + "\n")
    (tmp_path / "trial_c").mkdir()  # started, nothing reported yet
    assert reported_epochs(str(tmp_path)) == 7



@pytest.mark.parametrize("name", ["RefusingOptunaSearch", "TrialEpochBudget"])
def test_an_experiment_saved_before_the_tuner_module_still_unpickles(name: str) -> None:
    """tuner.pkl names the searcher's and the stopper's classes by module; experiments saved before they moved name experiment."""
    import pickle

    from neqtune.search import tuner

    assert pickle.loads(f"cneqtune.search.experiment\n{name}\n.".encode()) is getattr(tuner, name)

@pytest.mark.search
def test_trial_epoch_budget_ends_the_search(ray_session: None, tmp_path: Path) -> None:
    """One trial at a time, 3 epochs each, a budget of 5 trial-epochs: the second trial stops after 2, no third starts."""
    from neqtune.search.experiment import run_search

    grid = {"training.seed": {"choice": [0, 1, 2, 3]}}
    space = space_of(tiny({"algorithm": "grid", "num_samples": 1, "max_concurrent": 1, "max_trial_epochs": 5, "params": grid}, epochs=3))
    outcome = run_search(space, results_dir=tmp_path, name="budget", echo=lambda line: None)
    trials = pd.read_parquet(outcome.experiment_dir / "trials.parquet").sort_values("training.seed")
    assert trials["training.seed"].tolist() == [0, 1]
    assert trials.status.tolist() == ["TERMINATED", "STOPPED"]
    assert trials.epochs_run.tolist() == [3, 2]
    assert len(pd.read_parquet(outcome.experiment_dir / "epochs.parquet")) == 5


@pytest.mark.search
def test_benchmark_quick_writes_its_tables(ray_session: None, tmp_path: Path) -> None:
    """The quick pipeline, in two runs: the grid and the Pareto search, then ``add`` the epoch-budgeted TPE+ASHA.

    Plain ``tpe``, ``tpe+asha``, ``tpe+asha, fewer trials`` and ``no actor reuse`` are left out: each is the same Tune
    run as the budgeted one with an option changed (no scheduler, no epoch budget, fewer samples, ``reuse_actors``), and
    every search costs seconds here. The added method is measured against the grid row of the first run.
    """
    from benchmarks.search_efficiency import BUDGETED, QUICK, Setting, run_benchmark

    first = Setting(**{**QUICK.__dict__, "image_size": 8, "epochs": 1, "grace_period": 1, "methods": ("grid", "pareto")})
    out = tmp_path / "out"
    table = run_benchmark(first, out_dir=out, results_dir=tmp_path / "results", echo=lambda line: None)
    assert table.method.tolist() == ["grid"]
    note = (out / "search_efficiency.md").read_text().split("Velocity against random.")[1]
    second = Setting(**{**first.__dict__, "methods": (BUDGETED,)})
    table = run_benchmark(second, out_dir=out, results_dir=tmp_path / "results", echo=lambda line: None, add=True)
    assert table.method.tolist() == ["grid", BUDGETED]
    # a budget of a third of the grid's 2 trial-epochs (at least 1); a trial running beside the last counted one may add its epoch
    assert table.set_index("method").trial_epochs[BUDGETED] <= 1 + first.max_concurrent - 1
    saved = pd.read_parquet(out / "search_efficiency.parquet")
    assert saved.method.tolist() == table.method.tolist()
    assert saved.configurations.tolist()[0] == 2
    assert saved.trial_epochs.iloc[0] == first.grid_size * first.epochs
    assert saved.epochs_vs_grid.iloc[0] == 1.0 and saved.epochs_vs_grid.map(math.isfinite).all()
    # the grid's own incumbent ends at its best, so it reaches "its best - 1 point" within its epochs
    assert 1 <= saved.epochs_to_grid_best_minus_1.iloc[0] <= saved.trial_epochs.iloc[0]
    for column in (
        "best_val_top1", "test_top1_of_best", "wall_s", "train_s", "overhead_per_trial_s", "steady_overhead_per_trial_s",
        "in_trial_overhead_median_s", "start_in_worker_s", "driver_per_trial_s",
    ):  # fmt: skip
        assert saved[column].map(math.isfinite).all(), column
    assert (saved.wall_s > 0).all() and (saved.train_s > 0).all() and (saved.start_in_worker_s >= 0).all()
    pareto = pq.read_table(out / "search_efficiency.pareto.parquet")
    assert pareto.num_rows >= 1 and set(pareto.column("budget.policy").to_pylist()) <= {"velocity", "random"}
    text = (out / "search_efficiency.md").read_text()
    assert "| grid | 2 |" in text and f"| {BUDGETED} |" in text
    assert text.split("Velocity against random.")[1] == note  # the earlier Pareto result is kept


def test_asha_rungs_are_tunes() -> None:
    """The rungs the benchmark states are those Ray Tune's ASHA compares at."""
    from ray.tune.schedulers import ASHAScheduler

    from benchmarks.search_efficiency import Setting

    for epochs, grace, factor in [(15, 2, 4.0), (15, 2, 3.0), (6, 1, 4.0), (10, 1, 3.0), (2, 2, 2.0)]:
        setting = Setting(epochs=epochs, grace_period=grace, reduction_factor=factor)
        asha = ASHAScheduler(
            time_attr="training_iteration", metric="m", mode="max", max_t=epochs, grace_period=grace, reduction_factor=factor
        )
        assert setting.asha_rungs() == sorted(int(m) for m, _ in asha._brackets[0]._rungs), (epochs, grace, factor)


def test_dominance_note_picks_each_policy_by_validation() -> None:
    from benchmarks.search_efficiency import dominance_note

    def trial(tid: str, policy: str, budget: int, val: float, test: float) -> dict[str, Any]:
        return {"trial_id": tid, "budget.policy": policy, "budget_params": budget, "best_val_top1": val, "test_top1_at_best_val": test}

    trials = pd.DataFrame(
        [
            trial("a", "velocity", 100, 90.0, 80.0),  # best velocity by validation at 100: its test (80) counts, not b's 95
            trial("b", "velocity", 100, 85.0, 95.0),
            trial("c", "random", 100, 70.0, 82.0),
            trial("d", "random", 300, 95.0, 90.0),
            trial("e", "velocity", 300, 96.0, 93.0),
            trial("f", "random", 50, 40.0, 40.0),  # no velocity trial at 50: no comparison there
        ]
    )
    note = dominance_note(trials, ["best_val_top1", "budget_params"], ["max", "min"])
    assert "100 params: velocity 80.00 (val 90.00) vs random 82.00 (val 70.00)" in note
    assert "300 params: velocity 93.00 (val 96.00) vs random 90.00 (val 95.00)" in note
    assert "velocity beats random at 1 of 2 shared budgets, so it does NOT dominate here" in note
    # c (100, 70) is dominated by a; d (300, 95) by e; f (50 params) by none
    assert "dominates 2 of the 3 random trials" in note and "the Pareto set holds 3 trials, 1 of them random" in note


def test_benchmark_cli_refuses_bad_arguments_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.search_efficiency import main as bench_main

    out = tmp_path / "out"
    assert bench_main(["--quick", "--out", str(out), "--results", str(tmp_path / "r"), "--method", "bogus"]) == 2
    assert "--method: unknown ['bogus']" in capsys.readouterr().out
    assert bench_main(["--quick", "--out", str(out), "--results", str(tmp_path / "r"), "--add"]) == 2
    assert f"error: --add: {out / 'search_efficiency.parquet'}: no earlier table" in capsys.readouterr().out
    assert bench_main(["--out", str(out), "--render"]) == 2
    assert f"error: --render: {out / 'search_efficiency.parquet'}: no earlier table" in capsys.readouterr().out
    assert not out.exists() and not (tmp_path / "r").exists()
