"""results.analyze on synthetic experiments with known values, in the real Parquet layout."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import search.tables
from results import analyze as analyze_module
from results.analyze import (
    AnalysisInputError,
    analyze,
    best_epoch,
    default_out_dir,
    load_experiments,
    main,
    mean_std,
    pareto_mask,
    table_markdown,
)
from search.tables import EPOCHS_TABLE, SCHEMA_VERSION, TRIALS_TABLE, rows_to_table, write_atomic

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["features.0.0", "features.1.conv.0.0", "classifier.conv"]
TYPES = {
    "layer_frozen_pct": pa.list_(pa.float64()),
    "layer_names": pa.list_(pa.string()),
    "budget.scheme": pa.string(),
    "error": pa.string(),
}


@dataclass
class FakeTrial:
    """One synthetic trial: its key config values and per-epoch validation / test top-1."""

    trial_id: str
    policy: str
    budget: int
    seed: int
    val: list[float]
    test: list[float]
    scheme: str | None = "s1"
    init: str = "random"
    lr: float = 0.1
    status: str | None = "TERMINATED"  # None: no trials.parquet row (still running)
    error: str | None = None
    frozen: list[list[float]] = field(default_factory=list)  # per epoch, per layer (default: static)


def write_experiment(directory: Path, name: str, trials: list[FakeTrial]) -> Path:
    """``directory/name`` with epochs.parquet and trials.parquet, as the recorder writes them."""
    epoch_rows, trial_rows = [], []
    for t in trials:
        config = {
            "model.name": "mbv2-w0.35", "training.lr": t.lr, "training.seed": t.seed, "training.no_wd_keys": ["norm", "bias"],
            "budget.policy": t.policy, "budget.initialization": t.init, "budget.scheme": t.scheme,
        }  # fmt: skip
        for i, (val, test) in enumerate(zip(t.val, t.test, strict=True)):
            frozen = t.frozen[i] if t.frozen else [50.0, 50.0, 0.0]
            epoch_rows.append(
                {
                    "schema_version": SCHEMA_VERSION, "experiment": name, "trial_id": t.trial_id, **config,
                    "epoch": i + 1, "train_loss": 2.0 / (i + 1), "val_top1": val, "test_top1": test,
                    "budget_params": t.budget, "total_conv_params": 10_000, "layer_frozen_pct": frozen,
                }
            )  # fmt: skip
        if t.status is not None:
            trial_rows.append(
                {
                    "schema_version": SCHEMA_VERSION, "experiment": name, "trial_id": t.trial_id, "status": t.status, **config,
                    "epochs_run": len(t.val), "budget_params": t.budget if t.val else None, "layer_names": LAYERS, "error": t.error,
                }
            )  # fmt: skip
    path = directory / name
    if epoch_rows:
        write_atomic(rows_to_table(epoch_rows, TYPES), path / EPOCHS_TABLE)
    if trial_rows:
        write_atomic(rows_to_table(trial_rows, TYPES), path / TRIALS_TABLE)
    return path


NAN = math.nan
# velocity at 1000 params, seeds 0 / 1 / 2: best val 80 / 84 / 88 at epochs 2 / 3 / 1; test there 70 / 75 / 77; epochs run 3 / 3 / 4.
VELOCITY = [
    FakeTrial("v0", "velocity", 1000, 0, val=[60, 80, 79], test=[90, 70, 95], frozen=[[0, 100, 0], [100, 0, 0], [50, 50, 0]]),
    FakeTrial("v1", "velocity", 1000, 1, val=[50, NAN, 84], test=[99, NAN, 75], frozen=[[0, 100, 0], [100, 0, 0], [50, 50, 0]]),
    FakeTrial("v2", "velocity", 1000, 2, val=[88, 88, 70, 88], test=[77, 99, 60, 99], frozen=[[0, 100, 0]] * 2 + [[100, 0, 0]] * 2),
]
RANDOM = [
    FakeTrial("r0", "random", 1000, 0, val=[40, 60], test=[41, 61]),
    FakeTrial("r1", "random", 4000, 0, val=[70, 72], test=[71, 73]),  # one seed: std undefined
    FakeTrial("r2", "random", 4000, 1, val=[10, 20], test=[11, 21], status="ERROR", error="RuntimeError: boom"),
]
PROBLEMS = [
    FakeTrial("p0", "su", 1000, 0, val=[NAN, NAN], test=[NAN, NAN]),  # never evaluated: no best epoch
    FakeTrial("p1", "su", 1000, 1, val=[30], test=[31], status=None),  # no trials.parquet row yet
    FakeTrial("p2", "su", 2000, 0, val=[], test=[], status="ERROR", error="OSError: no data"),  # crashed before an epoch
]
FULL = [FakeTrial(f"f{s}", "full", 10_000, s, val=[90, 95], test=[91, 96 - s], scheme=None) for s in (0, 1)]


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    return write_experiment(tmp_path, "grid", VELOCITY + RANDOM + PROBLEMS)


@pytest.fixture
def full(tmp_path: Path) -> Path:
    return write_experiment(tmp_path, "full", FULL)


def row(table: pd.DataFrame, policy: str, budget: int) -> pd.Series:
    rows = table[(table["budget.policy"] == policy) & (table["budget_params"] == budget)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_exact_means_and_sample_standard_deviations(grid: Path) -> None:
    table = analyze(load_experiments([grid])).table
    velocity = row(table, "velocity", 1000)
    assert velocity["n_seeds"] == 3 and velocity["seeds"] == "0, 1, 2"
    assert velocity["best_val_top1_mean"] == pytest.approx(84.0)
    assert velocity["best_val_top1_std"] == pytest.approx(4.0)  # sqrt((16 + 0 + 16) / 2)
    assert velocity["test_top1_mean"] == pytest.approx(74.0)
    assert velocity["test_top1_std"] == pytest.approx(math.sqrt(13.0))  # sqrt((16 + 1 + 9) / 2)
    assert velocity["stop_epoch_mean"] == pytest.approx(10 / 3)
    assert velocity["stop_epoch_std"] == pytest.approx(statistics.stdev([3, 3, 4]))
    assert velocity["best_epochs"] == "2, 3, 1"
    assert velocity["mixed_settings"] == ""


def test_best_epoch_is_chosen_by_validation_not_test(grid: Path) -> None:
    outcomes = analyze(load_experiments([grid])).outcomes.set_index("trial_id")
    assert outcomes.loc["v0", "best_epoch"] == 2 and outcomes.loc["v0", "test_top1_at_best_val"] == 70  # test peaks at 95 in epoch 3
    assert outcomes.loc["v1", "best_epoch"] == 3  # epoch 2 was not evaluated
    assert outcomes.loc["v2", "best_epoch"] == 1 and outcomes.loc["v2", "test_top1_at_best_val"] == 77  # ties: the first epoch
    epochs = pd.DataFrame({"epoch": [3, 1, 2], "val_top1": [5.0, 5.0, NAN], "test_top1": [9.0, 1.0, 50.0]})
    best = best_epoch(epochs)
    assert best is not None and best["epoch"] == 1 and best["test_top1"] == 1.0
    assert best_epoch(epochs.assign(val_top1=NAN)) is None


def test_single_seed_and_empty_rows_are_shown_honestly(grid: Path) -> None:
    table = analyze(load_experiments([grid])).table
    single = row(table, "random", 4000)
    assert single["n_seeds"] == 1 and single["n_excluded"] == 1  # r2 crashed
    assert single["test_top1_mean"] == 73.0 and math.isnan(single["test_top1_std"]) and math.isnan(single["best_val_top1_std"])
    su = row(table, "su", 1000)  # p0 never evaluated, p1 has no summary row: both excluded, the row stays
    assert su["n_seeds"] == 0 and su["n_excluded"] == 2 and math.isnan(su["test_top1_mean"])
    text = table_markdown(table)
    assert "| 73.00 ± - |" in text and "| 1 (+1 excluded) |" in text
    assert "| 84.00 ± 4.00 |" in text
    assert mean_std(NAN, NAN) == "-" and mean_std(1.234, 0.5) == "1.23 ± 0.50"


def test_missing_and_partial_data_are_reported(grid: Path) -> None:
    problems = analyze(load_experiments([grid])).problems.set_index("trial_id")
    assert sorted(problems.index) == ["p0", "p1", "p2", "r2"]
    assert "crashed: RuntimeError: boom" in problems.loc["r2", "problem"]
    assert "no best epoch" in problems.loc["p0", "problem"]
    assert "no trials.parquet row" in problems.loc["p1", "problem"] and problems.loc["p1", "status"] == "NO_SUMMARY"
    assert "crashed: OSError: no data" in problems.loc["p2", "problem"] and "no epoch rows" in problems.loc["p2", "problem"]
    assert not problems["in_table"].any()


def test_reads_the_files_the_recorder_writes() -> None:
    assert (analyze_module.EPOCHS_TABLE, analyze_module.TRIALS_TABLE) == (search.tables.EPOCHS_TABLE, search.tables.TRIALS_TABLE)


def test_pareto_mask_hand_cases() -> None:
    #            A     B     C     D     E     F (= E)  G
    budgets = [100, 100, 200, 300, 400, 400, 50]
    accuracy = [80, 70, 80, 90, 95, 95, 10]
    # B loses to A (same budget, lower); C to A (larger budget, equal accuracy); E and F tie, neither dominates.
    assert pareto_mask(budgets, accuracy).tolist() == [True, False, False, True, True, True, True]
    assert pareto_mask([], []).tolist() == []


def test_pareto_front_over_all_trials(grid: Path, full: Path) -> None:
    pareto = analyze(load_experiments([grid, full])).pareto
    # usable: v0 70, v1 75, v2 77, r0 61 at 1000; r1 73 at 4000 (dominated by v2); f0 96, f1 95 at 10000
    assert list(zip(pareto["trial_id"], pareto["budget_params"], strict=True)) == [("v2", 1000), ("f0", 10_000)]


def test_merged_experiments_and_mixed_settings(tmp_path: Path, grid: Path, full: Path) -> None:
    experiments = load_experiments([grid, full])
    table = analyze(experiments).table
    assert set(table["budget.policy"]) == {"velocity", "random", "su", "full"}
    baseline = row(table, "full", 10_000)
    assert baseline["budget.scheme"] == "-" and baseline["n_seeds"] == 2
    assert baseline["test_top1_mean"] == pytest.approx(95.5) and baseline["test_top1_std"] == pytest.approx(math.sqrt(0.5))
    assert table["budget_params"].tolist() == sorted(table["budget_params"].tolist())
    lr = write_experiment(
        tmp_path, "lr", [FakeTrial("l0", "velocity", 500, 0, [1], [1], lr=0.1), FakeTrial("l1", "velocity", 500, 1, [2], [2], lr=0.2)]
    )
    mixed = analyze(load_experiments([lr])).table
    assert mixed.iloc[0]["mixed_settings"] == "training.lr"
    assert "not pure seed repeats" in table_markdown(mixed)
    with pytest.raises(AnalysisInputError, match="also in"):
        load_experiments([grid, write_experiment(tmp_path / "copy", "grid", VELOCITY[:1])])


def test_command_writes_tables_xlsx_and_plots(grid: Path, full: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([str(grid), str(full), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| mbv2-w0.35 | s1 | 1,000 | random | velocity | 84.00 ± 4.00 | 2, 3, 1 | 74.00 ± 3.61 | 3.3 ± 0.6 | 0, 1, 2 | 3 |" in printed
    assert "grid/p1" in printed and "## Pareto front" in printed
    csv = pd.read_csv(out / "table.csv")
    xlsx = pd.read_excel(out / "table.xlsx", sheet_name=None, engine="openpyxl")
    assert set(xlsx) == {"table", "pareto", "trials", "problems"}
    pd.testing.assert_frame_equal(xlsx["table"], csv, check_dtype=False)
    assert xlsx["table"].loc[xlsx["table"]["budget.policy"] == "velocity", "test_top1_std"].item() == pytest.approx(math.sqrt(13.0))
    assert sorted(xlsx["problems"]["trial_id"]) == ["p0", "p1", "p2", "r2"]
    assert pd.read_csv(out / "pareto.csv")["trial_id"].tolist() == ["v2", "f0"]
    plots = {"accuracy_vs_budget.png", "learning_curves.png", "pareto.png", "layer_updates_velocity_random_mbv2-w0.35.png"}
    assert plots <= {p.name for p in out.iterdir()}
    assert not any(p.name.startswith("layer_updates_random") for p in out.iterdir())  # random's layer shares never change here: static
    for name in plots:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert (out / "report.md").read_text().count("|") > 50 and not list(out.glob(".analysis-*"))


def test_bad_input_exits_2_with_one_line_and_writes_nothing(grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "table.md").write_text("earlier result\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / EPOCHS_TABLE).write_bytes(b"not parquet at all")
    cases = {
        str(empty): "no epochs.parquet or trials.parquet",
        str(broken): "epochs.parquet: not a readable Parquet table",
        str(tmp_path / "absent"): "absent: not a directory",
    }
    for directory, message in cases.items():
        assert main([str(grid), directory, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    write_atomic(pa.table({"experiment": ["x"], "trial_id": ["t"]}), broken / EPOCHS_TABLE)
    assert main([str(broken), "-o", str(out)]) == 2
    assert "missing column(s) epoch, val_top1" in capsys.readouterr().err
    assert main([str(grid), str(grid), "-o", str(out)]) == 2
    assert "given twice" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["table.md"] and (out / "table.md").read_text() == "earlier result\n"


def test_module_runs_as_a_command_and_exits_2_on_bad_input(grid: Path) -> None:
    # The good path runs in-process above; here the real process's exit code and its one line on stderr.
    bad = subprocess.run(
        [sys.executable, "-m", "results.analyze", str(grid), str(grid.parent / "nowhere")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip().endswith("nowhere: not a directory") and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stdout == "" and not (grid / "analysis").exists()


def test_seed_repeats_split_into_one_trial_per_seed_and_stopped_trials_count(tmp_path: Path) -> None:
    rows = [
        {
            "schema_version": SCHEMA_VERSION, "experiment": "rep", "trial_id": "t", "model.name": "m", "budget.policy": "velocity",
            "budget.initialization": "random", "budget.scheme": "s1", "training.seed": 7, "epoch": epoch, "budget_params": 100,
            "val_top1": sum(val) / 2, "test_top1": sum(test) / 2, "seeds": [7, 8], "val_top1_seeds": val, "test_top1_seeds": test,
        }
        for epoch, val, test in ((1, [50.0, 90.0], [51.0, 91.0]), (2, [60.0, 80.0], [61.0, 81.0]))
    ]  # fmt: skip
    write_atomic(rows_to_table(rows), tmp_path / "rep" / EPOCHS_TABLE)
    summary = {key: rows[-1][key] for key in ("schema_version", "experiment", "trial_id", "training.seed", "budget_params")}
    write_atomic(rows_to_table([{**summary, "status": "STOPPED", "best_epoch": 2}]), tmp_path / "rep" / TRIALS_TABLE)
    analysis = analyze(load_experiments([tmp_path / "rep"]))
    outcomes = analysis.outcomes.set_index("trial_id")
    assert list(outcomes.index) == ["t/seed7", "t/seed8"] and outcomes["usable"].all()
    assert outcomes.loc["t/seed7", "best_epoch"] == 2 and outcomes.loc["t/seed7", "test_top1_at_best_val"] == 61.0
    assert outcomes.loc["t/seed8", "best_epoch"] == 1 and outcomes.loc["t/seed8", "test_top1_at_best_val"] == 91.0
    only = analysis.table.iloc[0]
    assert only["n_seeds"] == 2 and only["seeds"] == "7, 8" and only["test_top1_mean"] == pytest.approx(76.0)
    assert analysis.problems.empty


def test_default_output_directories_and_disagreeing_tables(tmp_path: Path, grid: Path, full: Path) -> None:
    assert default_out_dir([grid]) == grid / "analysis"
    assert default_out_dir([grid, full]) == tmp_path / "analysis-grid+full"
    summary = {"schema_version": SCHEMA_VERSION, "experiment": "odd", "trial_id": "o", "status": "TERMINATED", "best_epoch": 1}
    odd = write_experiment(tmp_path, "odd", [FakeTrial("o", "velocity", 10, 0, val=[1, 2, 3], test=[1, 2, 3], status=None)])
    write_atomic(rows_to_table([summary]), odd / TRIALS_TABLE)
    problems = analyze(load_experiments([odd])).problems
    assert problems["problem"].tolist() == ["trials.parquet says best epoch 1, the epoch rows say 3"]
    assert problems["in_table"].tolist() == [True]  # a warning: the epoch rows decide


def test_output_path_that_is_a_file_is_refused(grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    assert main([str(grid), "-o", str(taken)]) == 2
    assert "taken: exists and is not a directory" in capsys.readouterr().err
    assert taken.read_text() == "keep me\n"
