"""neqtune.results.analyze on synthetic experiments with known values, in the real Parquet layout."""

from __future__ import annotations

import io
import math
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import neqtune.search.tables
from neqtune.pareto import cost_score_mask
from neqtune.results import loading
from neqtune.results.analyze import default_out_dir, main
from neqtune.results.loading import load_experiments
from neqtune.results.model import AnalysisInputError
from neqtune.results.outcomes import MISSING, analyze, best_epoch, pareto_memory_front
from neqtune.results.report import mean_std, table_markdown
from neqtune.search.tables import EPOCHS_TABLE, SCHEMA_VERSION, TRIALS_TABLE, rows_to_table, write_atomic

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["features.0.0", "features.1.conv.0.0", "classifier.conv"]
TYPES = {
    "layer_frozen_pct": pa.list_(pa.float64()),
    "layer_names": pa.list_(pa.string()),
    "budget.scheme": pa.string(),
    "error": pa.string(),
    "budget.unit": pa.string(),
    "budget.memory": pa.int64(),
    "budget_params": pa.int64(),
    "memory_budget": pa.int64(),
}


@dataclass
class FakeTrial:
    """One synthetic trial: its key config values and per-epoch validation / test top-1.

    With ``memory`` (elements per image, per epoch) the trial is written as
    after memory budgets: ``budget.unit``, ``budget.memory`` and
    ``budget.bytes_per_element`` config columns and the memory metric
    columns; with ``memory_budget`` too, its budget is that memory and
    ``budget_params`` is null. Without, it has none of these columns (an
    older experiment).
    """

    trial_id: str
    policy: str
    budget: int | None
    seed: int
    val: list[float]
    test: list[float]
    scheme: str | None = "s1"
    init: str = "random"
    lr: float = 0.1
    status: str | None = "TERMINATED"  # None: no trials.parquet row (still running)
    error: str | None = None
    frozen: list[list[float]] = field(default_factory=list)  # per epoch, per layer (default: static)
    unit: str = "neuron"
    memory_budget: int | None = None
    memory: list[float] = field(default_factory=list)  # memory_used per epoch (elements per image); empty: an older table
    sparsity: list[float] = field(default_factory=list)  # activation_sparsity_pct per epoch
    bytes_per_element: float = 4.0

    def memory_config(self) -> dict[str, object]:
        """The config columns added with memory budgets (none for an older trial)."""
        if not self.memory and self.memory_budget is None:
            return {}
        return {"budget.unit": self.unit, "budget.memory": self.memory_budget, "budget.bytes_per_element": self.bytes_per_element}

    def memory_metrics(self, epoch: int) -> dict[str, object]:
        """The memory metric columns of one epoch row (index ``epoch``; none for an older trial)."""
        if not self.memory:
            return {}
        used = self.memory[epoch]
        return {
            "memory_budget": self.memory_budget, "memory_used": int(used), "memory_used_kb": used * self.bytes_per_element / 1024,
            "weight_elements_updated": int(used) // 4, "activation_elements_kept": int(used) - int(used) // 4,
            "activation_sparsity_pct": self.sparsity[epoch], "wgrad_flops_saved_pct": self.sparsity[epoch],
        }  # fmt: skip


def write_experiment(directory: Path, name: str, trials: list[FakeTrial]) -> Path:
    """``directory/name`` with epochs.parquet and trials.parquet, as the recorder writes them."""
    epoch_rows, trial_rows = [], []
    for t in trials:
        config = {
            "model.name": "mbv2-w0.35", "training.lr": t.lr, "training.seed": t.seed, "training.no_wd_keys": ["norm", "bias"],
            "budget.policy": t.policy, "budget.initialization": t.init, "budget.scheme": t.scheme, **t.memory_config(),
        }  # fmt: skip
        for i, (val, test) in enumerate(zip(t.val, t.test, strict=True)):
            frozen = t.frozen[i] if t.frozen else [50.0, 50.0, 0.0]
            epoch_rows.append(
                {
                    "schema_version": SCHEMA_VERSION, "experiment": name, "trial_id": t.trial_id, **config,
                    "epoch": i + 1, "train_loss": 2.0 / (i + 1), "val_top1": val, "test_top1": test,
                    "budget_params": t.budget, "total_conv_params": 10_000, "layer_frozen_pct": frozen, **t.memory_metrics(i),
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
# Written after memory budgets (4 bytes per element: 256 elements = 1 kB). Means over each trial's epochs, then over seeds:
# velocity at 1,000 params: best val 80 / 75 at epoch 2; test there 81 / 70; memory 55 / 45 kB; sparsity 45 / 58 %.
# random on input channels at 5,120 elements (20 kB): best val 55 / 58 / 62 at epochs 2 / 1 / 2, test there 54 / 60 / 58;
# memory 4,992 / 4,864 / 5,120 elements (19.5 / 19.0 / 20.0 kB); sparsity 81 / 82 / 79 %; rx and ry crashed.
MEMORY = [
    FakeTrial("vp0", "velocity", 1000, 0, val=[60, 80], test=[61, 81], memory=[12_800, 15_360], sparsity=[50, 40]),
    FakeTrial("vp1", "velocity", 1000, 1, val=[70, 75], test=[72, 70], memory=[10_240, 12_800], sparsity=[60, 56]),
    *[
        FakeTrial(f"ri{s}", "random", None, s, val=val, test=test, scheme=None, unit="input_channel", memory_budget=5120,
                  memory=memory, sparsity=sparsity)
        for s, val, test, memory, sparsity in (
            (0, [50, 55], [52, 54], [5120, 4864], [80, 82]),
            (1, [58, 57], [60, 66], [4608, 5120], [84, 80]),
            (2, [40, 62], [45, 58], [5120, 5120], [79, 79]),
        )
    ],
    FakeTrial("rx", "random", None, 3, val=[10], test=[10], scheme=None, unit="input_channel", memory_budget=5120, memory=[5000],
              sparsity=[80], status="ERROR", error="RuntimeError: out of memory"),
    FakeTrial("ry", "random", None, 4, val=[], test=[], scheme=None, unit="input_channel", memory_budget=5120, status="ERROR",
              error="ValueError: bad mask"),  # crashed before an epoch: its budget only in its config
    FakeTrial("rj0", "random", None, 0, val=[70, 72], test=[71, 74], scheme=None, unit="input_channel", memory_budget=20_480,
              memory=[20_480, 19_968], sparsity=[40, 42]),
    FakeTrial("vm0", "velocity", None, 0, val=[65, 66], test=[63, 59], scheme=None, memory_budget=5120, memory=[4096, 5120],
              sparsity=[85, 81]),
    FakeTrial("fm0", "full", 10_000, 0, val=[90, 92], test=[91, 93], scheme=None, memory=[51_200, 51_200], sparsity=[0, 0]),
]  # fmt: skip


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    return write_experiment(tmp_path, "grid", VELOCITY + RANDOM + PROBLEMS)


@pytest.fixture
def full(tmp_path: Path) -> Path:
    return write_experiment(tmp_path, "full", FULL)


@pytest.fixture
def memory(tmp_path: Path) -> Path:
    return write_experiment(tmp_path, "memory", MEMORY)


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
    assert (loading.EPOCHS_TABLE, loading.TRIALS_TABLE) == (neqtune.search.tables.EPOCHS_TABLE, neqtune.search.tables.TRIALS_TABLE)


def test_pareto_mask_hand_cases() -> None:
    #            A     B     C     D     E     F (= E)  G
    budgets = [100, 100, 200, 300, 400, 400, 50]
    accuracy = [80, 70, 80, 90, 95, 95, 10]
    # B loses to A (same budget, lower); C to A (larger budget, equal accuracy); E and F tie, neither dominates.
    assert cost_score_mask(budgets, accuracy).tolist() == [True, False, False, True, True, True, True]
    assert cost_score_mask([], []).tolist() == []


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
        [sys.executable, "-m", "neqtune.results.analyze", str(grid), str(grid.parent / "nowhere")],
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


# --- memory budgets -------------------------------------------------------------
def memory_row(table: pd.DataFrame, policy: str, memory_budget: int) -> pd.Series:
    rows = table[(table["budget.policy"] == policy) & (table["memory_budget"] == memory_budget)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_memory_budgets_group_their_own_rows_with_exact_means(memory: Path) -> None:
    table = analyze(load_experiments([memory])).table
    keys = list(zip(table["budget.policy"], table["budget.unit"], table["budget_params"], table["memory_budget"], strict=True))
    # By model, then parameter budgets before memory budgets, each by amount; at one amount, by scheme, then unit.
    assert keys == [
        ("velocity", "neuron", 1000, pd.NA),
        ("full", "neuron", 10_000, pd.NA),
        ("random", "input_channel", pd.NA, 5120),
        ("velocity", "neuron", pd.NA, 5120),
        ("random", "input_channel", pd.NA, 20_480),
    ]
    random = memory_row(table, "random", 5120)
    assert random["n_seeds"] == 3 and random["n_excluded"] == 2 and random["seeds"] == "0, 1, 2" and random["best_epochs"] == "2, 1, 2"
    assert random["best_val_top1_mean"] == pytest.approx(175 / 3)
    assert random["best_val_top1_std"] == pytest.approx(statistics.stdev([55, 58, 62]))
    assert random["test_top1_mean"] == pytest.approx(172 / 3) and random["test_top1_std"] == pytest.approx(statistics.stdev([54, 60, 58]))
    assert random["memory_budget_kb"] == pytest.approx(20.0)
    # Mean over each trial's epochs (4,992 / 4,864 / 5,120 elements), then over the seeds; the crashed rx and ry count in neither.
    assert random["memory_used_mean"] == pytest.approx(4992.0) and random["memory_used_kb_mean"] == pytest.approx(19.5)
    assert random["activation_sparsity_pct_mean"] == pytest.approx((81 + 82 + 79) / 3)
    velocity = row(table, "velocity", 1000)  # a parameter budget: today's numbers, and its measured memory
    assert pd.isna(velocity["memory_budget"]) and math.isnan(velocity["memory_budget_kb"])
    assert velocity["test_top1_mean"] == pytest.approx(75.5) and velocity["test_top1_std"] == pytest.approx(math.sqrt(60.5))
    assert velocity["memory_used_mean"] == pytest.approx(12_800.0) and velocity["memory_used_kb_mean"] == pytest.approx(50.0)
    assert velocity["activation_sparsity_pct_mean"] == pytest.approx(51.5)
    text = table_markdown(table)
    assert text.splitlines()[0] == (
        "| model | scheme | unit | budget (params) | memory budget (kB) | init | policy | best val top-1 (%) | best at epoch "
        "| test top-1 at best val (%) | stopping epoch | memory used (kB) | activation sparsity (%) | seeds | n |"
    )
    assert (
        "| mbv2-w0.35 | s1 | neuron | 1,000 | - | random | velocity | 77.50 ± 3.54 | 2, 2 | 75.50 ± 7.78 | 2.0 ± 0.0 | 50.0 | 51.5 | 0, 1 | 2 |"
        in text
    )
    assert (
        "| mbv2-w0.35 | - | input_channel | - | 20.0 | random | random | 58.33 ± 3.51 | 2, 1, 2 | 57.33 ± 3.06 | 2.0 ± 0.0 | 19.5 | 80.7 "
        "| 0, 1, 2 | 3 (+2 excluded) |"
    ) in text
    problems = analyze(load_experiments([memory])).problems
    assert problems["trial_id"].tolist() == ["rx", "ry"]
    assert problems["budget_params"].isna().all() and problems["memory_budget"].tolist() == [5120, 5120]


# The study's table of grid + full as analyze wrote it before memory budgets existed.
OLD_TABLE_MD = """\
| model | scheme | budget (params) | init | policy | best val top-1 (%) | best at epoch | test top-1 at best val (%) | stopping epoch | seeds | n |
|---|---|---:|---|---|---:|---|---:|---:|---|---:|
| mbv2-w0.35 | s1 | 1,000 | random | random | 60.00 ± - | 2 | 61.00 ± - | 2.0 ± - | 0 | 1 |
| mbv2-w0.35 | s1 | 1,000 | random | su | - | - | - | - | - | 0 (+2 excluded) |
| mbv2-w0.35 | s1 | 1,000 | random | velocity | 84.00 ± 4.00 | 2, 3, 1 | 74.00 ± 3.61 | 3.3 ± 0.6 | 0, 1, 2 | 3 |
| mbv2-w0.35 | s1 | 4,000 | random | random | 72.00 ± - | 2 | 73.00 ± - | 2.0 ± - | 0 | 1 (+1 excluded) |
| mbv2-w0.35 | - | 10,000 | random | full | 95.00 ± 0.00 | 2, 2 | 95.50 ± 0.71 | 2.0 ± 0.0 | 0, 1 | 2 |"""
OLD_TABLE_CSV = """\
model.name,budget.scheme,budget_params,budget.initialization,budget.policy,n_seeds,seeds,best_val_top1_mean,best_val_top1_std,best_epochs,test_top1_mean,test_top1_std,stop_epoch_mean,stop_epoch_std,n_excluded,mixed_settings
mbv2-w0.35,s1,1000,random,random,1,0,60.0,,2,61.0,,2.0,,0,
mbv2-w0.35,s1,1000,random,su,0,,,,,,,,,2,
mbv2-w0.35,s1,1000,random,velocity,3,"0, 1, 2",84.0,4.0,"2, 3, 1",74.0,3.605551275463989,3.3333333333333335,0.5773502691896258,0,
mbv2-w0.35,s1,4000,random,random,1,0,72.0,,2,73.0,,2.0,,1,
mbv2-w0.35,-,10000,random,full,2,"0, 1",95.0,0.0,"2, 2",95.5,0.7071067811865476,2.0,0.0,0,
"""


def test_experiments_older_than_memory_budgets_give_the_same_table(grid: Path, full: Path) -> None:
    analysis = analyze(load_experiments([grid, full]))
    table = analysis.table
    assert table_markdown(table) == OLD_TABLE_MD
    old = pd.read_csv(io.StringIO(OLD_TABLE_CSV))
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(table[list(old.columns)].to_csv(index=False))), old)
    assert (table["budget.unit"] == "-").all() and table["memory_budget"].isna().all()  # missing columns read as not set
    assert table[["memory_budget_kb", "memory_used_mean", "memory_used_kb_mean", "activation_sparsity_pct_mean"]].isna().all().all()
    assert analysis.pareto_memory is None and "memory" not in analysis.outcomes["problem"].dropna().str.cat()


def test_memory_pareto_front_over_measured_memory(grid: Path, memory: Path) -> None:
    # usable, mean memory (elements) and test top-1: vm0 4,608 59; ri1 4,864 60; ri0 4,992 54; ri2 5,120 58;
    # vp1 11,520 70; vp0 14,080 81; rj0 20,224 74; fm0 51,200 93. The grid's trials report no memory: not on it.
    analysis = analyze(load_experiments([grid, memory]))
    front = analysis.pareto_memory
    assert front is not None
    assert front["trial_id"].tolist() == ["vm0", "ri1", "vp1", "vp0", "fm0"]
    assert front["memory_used"].tolist() == [4608.0, 4864.0, 11_520.0, 14_080.0, 51_200.0]
    assert front["memory_used_kb"].tolist() == [18.0, 19.0, 45.0, 55.0, 200.0]
    assert front["test_top1_at_best_val"].tolist() == [59.0, 60.0, 70.0, 81.0, 93.0]
    # The front by parameters keeps the parameter budgets only (vp0's 81 beats the grid's v2, 77, at 1,000).
    assert analysis.pareto["trial_id"].tolist() == ["vp0", "fm0"]
    # Old and new experiments merged: an old trial's unit is not set, so it keeps its own row, numbers, and no memory.
    velocity = analysis.table[(analysis.table["budget.policy"] == "velocity") & (analysis.table["budget_params"] == 1000)]
    assert velocity["budget.unit"].tolist() == ["-", "neuron"] and velocity["n_seeds"].tolist() == [3, 2]
    assert velocity["test_top1_mean"].tolist() == pytest.approx([74.0, 75.5])
    assert velocity["memory_used_kb_mean"].isna().tolist() == [True, False]
    # Hand cases: a trial without memory is left out; equal points both stay; an equal memory with less accuracy loses.
    outcomes = pd.DataFrame(
        {
            "experiment": "e", "trial_id": ["a", "b", "c", "d", "e"], "usable": [True, True, True, False, True],
            "memory_used": [100.0, 100.0, 50.0, 10.0, NAN], "test_top1_at_best_val": [80.0, 80.0, 70.0, 99.0, 99.0],
            **{key: MISSING for key in ("data.label", "model.name", "budget.scheme", "budget.unit", "budget.initialization", "budget.policy")},
            "budget_params": pd.array([None] * 5, dtype="Int64"), "memory_budget": pd.array([100] * 5, dtype="Int64"),
            "training.seed": 0, "best_epoch": 1, "best_val_top1": 1.0, "memory_used_kb": 1.0, "activation_sparsity_pct": 1.0,
            "memory_budget_kb": 0.4,
        }
    )  # fmt: skip
    assert pareto_memory_front(outcomes)["trial_id"].tolist() == ["c", "a", "b"]
    assert pareto_memory_front(outcomes.assign(test_top1_at_best_val=[80.0, 79.0, 70.0, 99.0, 99.0]))["trial_id"].tolist() == ["c", "a"]


def test_command_writes_the_memory_front_and_the_memory_plot(memory: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([str(memory), "-o", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"accuracy_vs_memory.png", "accuracy_vs_budget.png", "pareto.png", "pareto_memory.csv", "learning_curves.png"} <= names
    data = (out / "accuracy_vs_memory.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert pd.read_csv(out / "pareto_memory.csv")["trial_id"].tolist() == ["vm0", "ri1", "vp1", "vp0", "fm0"]
    assert "pareto_memory" in pd.read_excel(out / "table.xlsx", sheet_name=None, engine="openpyxl")
    report = (out / "report.md").read_text()
    assert "## Pareto front: test top-1 versus memory used" in report
    assert "| 19.0 | 60.00 | 58.00 | 82.0 | random | random | input_channel | 20.0 kB memory | - | mbv2-w0.35 | 1 | memory/ri1 |" in report
    assert "| trial | status | policy | budget | seed | in table | problem |" in report
    assert "| memory/ry | ERROR | random | 5,120 memory elements |" in report
    for table in re.findall(r"(?:^\|.*\|\n)+", report, flags=re.MULTILINE):  # every table: as many cells in each line
        assert len({line.count(" | ") for line in table.splitlines() if not line.startswith("|-")}) == 1, table
        header, rule = table.splitlines()[:2]
        assert rule.count("|") == header.count("|"), table


def test_memory_plot_only_when_some_trial_reports_memory(grid: Path, tmp_path: Path) -> None:
    only_memory = write_experiment(tmp_path, "only", [t for t in MEMORY if t.memory_budget is not None])
    assert main([str(only_memory), "-o", str(tmp_path / "a")]) == 0
    names = {p.name for p in (tmp_path / "a").iterdir()}
    # No trial with a parameter budget: no plot against parameters; the learning curves have memory-budget panels.
    assert {"accuracy_vs_memory.png", "learning_curves.png", "pareto_memory.csv"} <= names
    assert not {"accuracy_vs_budget.png", "pareto.png"} & names
    assert main([str(grid), "-o", str(tmp_path / "b")]) == 0
    names = {p.name for p in (tmp_path / "b").iterdir()}
    assert "accuracy_vs_budget.png" in names and not {"accuracy_vs_memory.png", "pareto_memory.csv"} & names
    assert "memory used" not in (tmp_path / "b" / "report.md").read_text()  # (the directory names hold "memory")
