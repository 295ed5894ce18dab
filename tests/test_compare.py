"""neqtune.results.compare: the papers' tables as shipped data, and neqtune's runs beside them, on synthetic experiments.

The experiments are written in the real Parquet layout with known final test top-1 values, so every mean, std,
difference and claim below is checked against numbers worked out by hand.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from neqtune.results.compare import PAPERS_DIR, SEVEN, compare, comparison_markdown, load_paper, main, paper_names
from neqtune.results.loading import load_experiments
from neqtune.search.tables import EPOCHS_TABLE, SCHEMA_VERSION, TRIALS_TABLE, rows_to_table, write_atomic

ROOT = Path(__file__).resolve().parent.parent
TYPES = {"budget.scheme": pa.string(), "error": pa.string(), "budget_params": pa.int64(), "memory_budget": pa.int64()}


def trial(trial_id: str, *, data: str, model: str, policy: str, init: str, scheme: str | None, budget: int, seed: int,
          final: float, best_val_test: float = 50.0, status: str = "TERMINATED", epochs: int = 120, lr: float = 0.025,
          memory: int | None = None, unit: str = "neuron") -> dict[str, Any]:  # fmt: skip
    return {"trial_id": trial_id, "data.name": data, "model.name": model, "budget.policy": policy, "budget.initialization": init,
            "budget.scheme": scheme, "budget_params": budget, "training.seed": seed, "final": final, "best_val_test": best_val_test,
            "status": status, "training.epochs": epochs, "training.lr": lr, "memory_budget": memory, "budget.unit": unit}  # fmt: skip


def write_experiment(root: Path, name: str, trials: list[dict[str, Any]]) -> Path:
    """Two epochs per trial: epoch 1 is the best by validation (test ``best_val_test``), epoch 2 ends with test ``final``."""
    epochs, summaries = [], []
    for t in trials:
        config = {k: v for k, v in t.items() if "." in k}
        head = {"schema_version": SCHEMA_VERSION, "experiment": name, "trial_id": t["trial_id"], **config}
        budgets = {"budget_params": t["budget_params"], "memory_budget": t["memory_budget"]}
        for epoch, (val, test) in enumerate([(80.0, t["best_val_test"]), (70.0, t["final"])], start=1):
            epochs.append({**head, "epoch": epoch, "val_top1": val, "test_top1": test, **budgets})
        summaries.append({**head, "status": t["status"], "epochs_run": 2, "budget_params": t["budget_params"], "error": None})
    write_atomic(rows_to_table(epochs, TYPES), root / name / EPOCHS_TABLE)
    write_atomic(rows_to_table(summaries, TYPES), root / name / TRIALS_TABLE)
    return root / name


MBV2 = {"data": "c10", "model": "mbv2", "scheme": "mbv2_scheme_1", "budget": 192_311}
WACV_RUNS = [
    *(trial(f"v{s}", **MBV2, policy="velocity", init="su", seed=s, final=f) for s, f in ((0, 95.0), (42, 95.5), (100, 96.0))),
    *(trial(f"r{s}", **MBV2, policy="random", init="su", seed=s, final=f) for s, f in ((0, 96.5), (42, 96.1))),
    trial("vs", **MBV2, policy="velocity", init="su", seed=7, final=10.0, status="STOPPED"),  # stopped early: no final epoch
    # ResNet18 at neqtune's int(P * ratio) of mbv2_scheme_3, 2,369,618 against the paper's 2,369,480 (0.006 % apart)
    trial(
        "res",
        data="c10",
        model="resnet18",
        policy="velocity",
        init="random",
        scheme="mbv2_scheme_3",
        budget=2_369_618,
        seed=0,
        final=95.0,
        epochs=200,
        lr=0.125,
    ),
    trial(
        "dig",
        data="digits",
        model="mbv2-w0.35",
        policy="velocity",
        init="random",
        scheme="mbv2-w0.35_scheme_1",
        budget=22_410,
        seed=0,
        final=88.0,
    ),
]


@pytest.fixture
def wacv_experiment(tmp_path: Path) -> Path:
    return write_experiment(tmp_path, "wacv-run", WACV_RUNS)


def cell(cells: pd.DataFrame, **keys: Any) -> pd.Series:
    rows = cells
    for key, value in keys.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_the_papers_tables_ship_as_data_with_their_source() -> None:
    # Every shipped table is listed and loads with its source, claims and recipe (a new one needs no edit here).
    assert paper_names() == sorted(p.stem for p in PAPERS_DIR.glob("*.csv")) and {"medyate", "trady", "wacv2024"} <= set(paper_names())
    for name in paper_names():
        paper = load_paper(name)
        assert (PAPERS_DIR / f"{name}.csv").read_text().startswith("# source: ")
        assert paper.source and paper.claims and "training.lr" in paper.recipe
    assert all(load_paper(name).recipe["training.lr"] == 0.125 for name in ("medyate", "trady", "wacv2024"))
    wacv = load_paper("wacv2024").table
    assert len(wacv) == 231 and set(wacv["dataset"]) == set(SEVEN) and set(wacv["model"]) == {"mbv2", "resnet18", "resnet50"}
    assert set(wacv["table"]) == {"1", "2"} and (wacv[wacv["table"] == "1"]["model"] == "mbv2").all()
    assert cell(wacv, table="1", dataset="c10", policy="velocity", budget_params=192_311)[["mean", "std"]].tolist() == [95.25, 0.29]
    assert cell(wacv, dataset="cub", model="resnet50", policy="full")[["mean", "std"]].tolist() == [72.93, 0.41]
    trady = load_paper("trady").table
    cnn = trady[trady["model"] != "swin_t"]
    assert len(cnn) == 3 * (3 * 5 + 1) + 3 * 3 * 3 and set(cnn["dataset"]) == {"avg7"} and (cnn["note"] == "").all()
    assert cell(trady, model="mcunet-in1", policy="trady", budget_mem=15_936)[["mean", "std"]].tolist() == [77.37, 0.74]
    assert cell(trady, model="mbv2-w0.35-zoo", policy="velocity", budget_mem=27_946)["budget_params"] == 22_410  # its weight part
    assert cell(trady, model="proxyless-w0.3", policy="s-det-rgn", budget_mem=101_376)["mean"] == 76.78
    medyate = load_paper("medyate").table
    assert len(medyate[medyate["model"] != "swin_t"]) == 45
    assert cell(medyate, model="mcunet-in1", policy="lara-medyate", budget_mem=112_640)["mean"] == 79.31


SWIN_BUDGETS = (27_946, 112_640, 633_859, 2_767_686)


def test_the_swint_tables_ship_per_data_set_with_the_likely_copy_error_marked() -> None:
    trady = load_paper("trady").table
    swin = trady[trady["model"] == "swin_t"]
    assert len(swin) == (4 * 3 + 1) * 8 and set(swin["table"]) == {"2"} and set(swin["dataset"]) == {*SEVEN, "avg7"}
    assert cell(swin, dataset="cub", policy="d-full-random", budget_mem=27_946)[["mean", "std"]].tolist() == [71.83, 4.14]
    assert cell(swin, dataset="avg7", policy="full")[["mean", "std", "budget_mem", "unit"]].tolist() == [88.50, 0.31, 31_889_952, "-"]
    for budget in SWIN_BUDGETS:
        for policy in ("d-full-random", "d-det-rgn", "trady"):
            rows = swin[(swin["policy"] == policy) & (swin["budget_mem"] == budget)].set_index("dataset")["mean"]
            assert rows["avg7"] == pytest.approx(statistics.mean(rows[d] for d in SEVEN), abs=0.006)  # the printed average
    noted = swin[swin["note"] != ""]
    assert set(noted["policy"]) == {"trady"} and set(noted["budget_mem"]) == {633_859, 2_767_686} and len(noted) == 2 * 7
    assert "c10" not in set(noted["dataset"]) and all("likely copy error" in n for n in noted["note"])
    for budget in (633_859, 2_767_686):  # the copy: TraDy's row equals D-Full Random's in every column but c10
        same = [d for d in SEVEN if cell(swin, dataset=d, policy="trady", budget_mem=budget)[["mean", "std"]].tolist()
                == cell(swin, dataset=d, policy="d-full-random", budget_mem=budget)[["mean", "std"]].tolist()]  # fmt: skip
        assert same == [d for d in SEVEN if d != "c10"]
    medyate = load_paper("medyate").table
    swin = medyate[medyate["model"] == "swin_t"]
    assert len(swin) == (4 * 5 + 1) * 8 and set(swin["policy"]) == {"prev-medyate", "lara-trady", "lara-det-raw", "lara-prob-raw", "lara-medyate", "full"}
    lara = swin[(swin["policy"] == "lara-medyate") & (swin["dataset"] == "avg7")].sort_values("budget_mem")["mean"].tolist()
    assert lara == [86.73, 86.70, 87.44, 86.34]
    for (policy, budget), rows in swin.groupby(["policy", "budget_mem"]):
        means = rows.set_index("dataset")["mean"]
        assert means["avg7"] == pytest.approx(statistics.mean(means[d] for d in SEVEN), abs=0.006), (policy, budget)


def test_swint_runs_beside_table_2_with_the_swint_claims(tmp_path: Path) -> None:
    swin = {"model": "swin_t", "init": "random", "scheme": None, "budget": None, "unit": "input_channel"}
    runs = [
        *(trial(f"t-{d}-{s}", data=d, policy="trady", seed=s, final=f, memory=633_859, **swin) for d, s, f in (("c10", 0, 97.0), ("c10", 42, 97.2), ("pets", 0, 91.0))),
        *(trial(f"r-{d}-{s}", data=d, policy="random", seed=s, final=f, memory=633_859, **swin) for d, s, f in (("c10", 0, 97.1), ("c10", 42, 97.3), ("pets", 0, 90.0))),
        trial("v-c10", data="c10", policy="velocity", seed=0, final=99.0, memory=633_859, **{**swin, "unit": "neuron"}),
        trial("full-c10", data="c10", model="swin_t", policy="full", init="random", scheme=None, budget=4_704, seed=0, final=97.5, unit="input_channel"),
    ]  # fmt: skip
    comparison = compare(load_paper("trady"), load_experiments([write_experiment(tmp_path, "swin", runs)]))
    cells = comparison.cells
    trady = cell(cells, status="matched", model="swin_t", dataset="c10", policy="trady", budget_mem=633_859)
    assert trady["neqtune_mean"] == pytest.approx(97.1) and trady["difference"] == pytest.approx(97.1 - 97.25)
    assert trady["notes"] == "training.epochs 120 (paper 100); training.lr 0.025 (paper 0.125)"  # no remark on the c10 cell
    pets = cell(cells, status="matched", model="swin_t", dataset="pets", policy="trady", budget_mem=633_859)
    assert pets["notes"].startswith("likely copy error in the paper") and pets["difference"] == pytest.approx(91.0 - 90.95)
    assert cell(cells, status="matched", model="swin_t", dataset="c10", policy="d-full-random", budget_mem=633_859)["n"] == 2
    baseline = cell(cells, status="matched", model="swin_t", dataset="c10", policy="full")  # a full update matches whatever its budget
    assert baseline["neqtune_mean"] == pytest.approx(97.5) and baseline["budget_mem"] == 31_889_952
    unmatched = cell(cells, model="swin_t", dataset="pets", policy="trady", budget_mem=2_767_686)
    assert unmatched["status"] == "paper only" and "likely copy error" in unmatched["notes"]
    claims = comparison.claims.set_index(["claim", "dataset"])
    assert set(claims.index.get_level_values("claim")) == {"trady >= d-full-random"}  # the CNN claims (velocity's) skip swin_t
    c10, pets = claims.loc[("trady >= d-full-random", "c10")], claims.loc[("trady >= d-full-random", "pets")]
    assert (c10["level"], bool(c10["held"]), c10["paper_held"], c10["paper_note"]) == ("memory 633859", False, True, "")
    assert bool(pets["held"]) and pets["paper_held"] and pets["paper_note"].startswith("likely copy error")
    text = comparison_markdown(load_paper("trady"), comparison, ["swin"], "final")
    assert "- `d-det-rgn >= trady` (on swin_t): on SwinT D-Det RGN is best and TraDy second" in text
    assert "- `trady >= velocity` (all but swin_t)" in text


def test_each_cell_beside_the_paper_with_the_difference(wacv_experiment: Path) -> None:
    comparison = compare(load_paper("wacv2024"), load_experiments([wacv_experiment]))
    cells = comparison.cells
    velocity = cell(cells, status="matched", table="1", policy="velocity", dataset="c10", budget_params=192_311)
    assert velocity["neqtune_mean"] == pytest.approx(95.5) and velocity["neqtune_std"] == pytest.approx(0.5)
    assert velocity["n"] == 3 and velocity["seeds"] == "0, 42, 100"
    assert velocity["difference"] == pytest.approx(95.5 - 95.25)
    assert "training.epochs 120 (paper 200)" in velocity["notes"] and "training.lr 0.025 (paper 0.125)" in velocity["notes"]
    random = cell(cells, status="matched", table="1", policy="random", budget_params=192_311, dataset="c10")
    assert random["neqtune_mean"] == pytest.approx(96.3) and random["neqtune_std"] == pytest.approx(statistics.stdev([96.5, 96.1]))
    resnet = cell(cells, status="matched", model="resnet18", policy="velocity", budget_params=2_369_480, dataset="c10")
    assert resnet["neqtune_budget"] == "2369618" and math.isnan(resnet["neqtune_std"]) and resnet["notes"] == ""  # the paper's recipe
    assert resnet["difference"] == pytest.approx(95.0 - 95.36)
    assert (cells["status"] == "matched").sum() == 3 and (cells["status"] == "paper only").sum() == 228
    mine = cell(cells, status="neqtune only")
    assert (mine["dataset"], mine["policy"], mine["neqtune_mean"]) == ("digits", "velocity", 88.0)
    assert comparison.excluded["trial_id"].tolist() == ["vs"] and "stopped before its last epoch" in comparison.excluded["excluded"][0]


def test_the_papers_claims_are_checked_in_the_runs(wacv_experiment: Path) -> None:
    claims = compare(load_paper("wacv2024"), load_experiments([wacv_experiment])).claims
    assert len(claims) == 1  # the only budget level with both velocity and random
    row = claims.iloc[0]
    assert (row["claim"], row["dataset"], row["model"], row["level"], row["initialization"]) == (
        "velocity >= random",
        "c10",
        "mbv2",
        "mbv2_scheme_1",
        "su",
    )
    assert row["difference"] == pytest.approx(95.5 - 96.3) and not row["held"]
    assert row["paper_held"]  # Table 1: 95.25 against 94.41


def test_best_val_metric_compares_neqtunes_headline(wacv_experiment: Path) -> None:
    cells = compare(load_paper("wacv2024"), load_experiments([wacv_experiment]), "best-val").cells
    velocity = cell(cells, status="matched", table="1", policy="velocity", dataset="c10", budget_params=192_311)
    assert velocity["neqtune_mean"] == pytest.approx(50.0) and velocity["n"] == 4  # the stopped trial has a best epoch


def test_seven_data_set_averages_need_all_seven(tmp_path: Path) -> None:
    runs = [
        trial(f"{data}-{seed}", data=data, model="mcunet-in1", policy="velocity", init="random", scheme="mcunet-in1_scheme_1",
              budget=12_096, seed=seed, final=70.0 + i + seed / 100)
        for i, data in enumerate(SEVEN) for seed in (0, 42)
    ]  # fmt: skip
    runs += [trial(f"su-{d}", data=d, model="mcunet-in1", policy="su", init="random", scheme="mcunet-in1_scheme_1", budget=12_096,
                   seed=0, final=60.0) for d in ("c10", "food")]  # fmt: skip
    comparison = compare(load_paper("trady"), load_experiments([write_experiment(tmp_path, "mcu", runs)]))
    velocity = cell(comparison.cells, status="matched", model="mcunet-in1", policy="velocity", budget_mem=15_936)
    per_seed = [statistics.mean(70.0 + i + seed / 100 for i in range(7)) for seed in (0, 42)]
    assert velocity["neqtune_mean"] == pytest.approx(statistics.mean(per_seed)) and velocity["n"] == 2
    assert velocity["neqtune_std"] == pytest.approx(statistics.stdev(per_seed))
    assert velocity["difference"] == pytest.approx(statistics.mean(per_seed) - 76.72)
    su = cell(comparison.cells, model="mcunet-in1", policy="su", budget_mem=15_936)
    assert su["status"] == "paper only"  # TraDy's SU selects input channels; these runs select neurons
    assert set(comparison.claims["claim"]) == {"velocity >= su"}  # in the runs, per data set where both ran
    assert comparison.claims["held"].all() and len(comparison.claims) == 2


def test_the_command_prints_and_writes_markdown_and_csv(wacv_experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([str(wacv_experiment), "--paper", "wacv2024", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Matching cells (3 of the paper's 231)" in printed
    assert "| c10 | mbv2 | neuron | 192,311 params | velocity | su | 95.25 ± 0.29 | 95.50 ± 0.50 | 3 | +0.25 |" in printed
    assert "Held in 0 of 1 checks." in printed
    assert "(listed in full in comparison.md and comparison.csv)" in printed
    written = pd.read_csv(out / "comparison.csv")
    assert set(written["status"]) == {"matched", "paper only", "neqtune only"} and len(written) == 231 + 1
    assert (out / "comparison.md").read_text().count("\n| 2 | ") > 100  # every paper cell without runs, listed
    assert len(pd.read_csv(out / "claims.csv")) == 1
    assert main([str(wacv_experiment), "--paper", "trady", "-o", str(tmp_path / "trady")]) == 0
    assert "## Matching cells (0 of the paper's 179)" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, wacv_experiment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope"), "--paper", "wacv2024"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"compare: error: {tmp_path / 'nope'}: not a directory"
    (tmp_path / "file").write_text("x")
    assert main([str(wacv_experiment), "--paper", "wacv2024", "-o", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip() == f"compare: error: {tmp_path / 'file'}: exists and is not a directory"
    assert not (wacv_experiment / "compare-wacv2024").exists()
    done = subprocess.run([sys.executable, "-m", "neqtune.results.compare", str(wacv_experiment), "--paper", "nature"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "invalid choice: 'nature'" in done.stderr
