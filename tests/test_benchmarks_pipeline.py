"""The input-pipeline and pipeline-accuracy benchmarks run end to end and write complete tables (no timing assertions)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks import input_pipeline, pipeline_accuracy


@pytest.mark.benchmark
def test_input_pipeline_quick_run_measures_every_path_and_states_every_target(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        assert input_pipeline.main(["--quick", "--image-size", "32", "--models", "mbv2-w0.35", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    table = pd.read_parquet(tmp_path / "input_pipeline_quick.parquet")
    inputs = table[table.kind == "input"]
    for data in ("image folder", "vww"):
        assert set(inputs[inputs.data == data].path) == {"today", "workers", "cache", "cache+batched"}
    assert set(inputs[inputs.data == "cifar"].path) == {"today", "workers", "batched"}
    assert set(inputs.cpus) == {1, 2} and (table.images_per_s > 0).all()
    assert set(table[table.kind == "step"].path) == {"full", "engine (velocity, scheme 3)"}
    assert set(table[table.kind == "epoch"].path) == {"today", "cache (workers auto)", "cache+batched"}
    report = (tmp_path / "input_pipeline_quick.md").read_text()
    targets = [line for line in report.splitlines() if line.endswith("| met |") or line.endswith("| missed |")]
    assert len(targets) == 4, report
    assert "Decoded-cache builds" in report


def test_pipeline_accuracy_report_states_the_target() -> None:
    runs = pd.DataFrame(
        [
            {"augment": augment, "seed": seed, "epochs": 10, "test_top1_at_best_val": top1, "best_epoch": 10, "final_test_top1": top1, "median_epoch_s": 50.0}
            for augment, shift in (("pil", 0.0), ("batched", 0.4))
            for seed, top1 in ((0, 80.0 + shift), (42, 81.0 + shift), (100, 82.0 + shift))
        ]
    )
    report = pipeline_accuracy.render(runs)
    assert "**met** (batched - PIL = +0.40 points" in report
    runs.loc[runs.augment == "batched", "test_top1_at_best_val"] -= 2.0
    assert "**missed** (batched - PIL = -1.60 points" in pipeline_accuracy.render(runs)
    runs.loc[(runs.augment == "pil") & (runs.seed == 42), ["test_top1_at_best_val", "final_test_top1"]] = 10.0
    report = pipeline_accuracy.render(runs)
    assert "| pil | 42 (diverged) | 10.00 |" in report and "1 run(s) diverged to chance level (pil seed 42)" in report
    assert "Over the runs that trained: batched - PIL = -1.60 points" in report  # (78.4 + 79.4 + 80.4) / 3 - (80 + 82) / 2
    assert pipeline_accuracy.recipe("batched", 42, 10)["data"]["augment"] == "batched"
