"""The update-step benchmark runs end to end and writes complete tables (no timing assertions)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks import bn_update
from benchmarks.update_step.cli import main as update_step_main
from benchmarks.update_step.conditions import MEMORY_POLICIES, SWINT_BUDGETS, SWINT_TOTAL, all_masks, policy_masks, transformer_budgets
from benchmarks.update_step.mask_summary import layer_wgrad_seconds, mask_summary
from neqtune.trainables.budget.units import layer_flops
from neqtune.trainables.config import ModelConfig
from neqtune.trainables.models.registry import build_model


@pytest.fixture(scope="module")
def quick_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        argv = ["--quick", "--models", "mbv2-w0.35", "resnet18", "--memory-models", "mbv2-w0.35-zoo", "--transformer-models", "vit"]
        argv += ["--image-size", "16", "--batch-size", "2"]
        assert update_step_main([*argv, "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, pd.read_parquet(out / "update_step_quick.parquet")


@pytest.mark.benchmark
def test_quick_run_writes_every_condition(quick_table: tuple[Path, pd.DataFrame]) -> None:
    out, table = quick_table
    table = table[table.suite == "params"]
    expected = {
        "model", "path", "policy", "scheme", "bn_update", "budget_params", "params_updated", "convs_partial", "convs_frozen",
        "step_s", "rounds", "saved_mib", "grads_mib", "optimizer_mib", "memory_mib", "vs_bound", "vs_masked", "vs_full", "memory_vs_masked",
    }  # fmt: skip
    assert expected <= set(table.columns)
    conditions = set(table[["model", "path", "policy", "scheme"]].itertuples(index=False, name=None))
    for model in ("mbv2-w0.35", "resnet18"):
        assert {(model, "full", "-", "-"), (model, "bound", "-", "-")} <= conditions
        for scheme in ("1", "3"):
            for policy in ("velocity", "random"):
                assert {(model, "masked", policy, scheme), (model, "engine", policy, scheme)} <= conditions
    for scheme in ("1", "3"):
        assert {("mbv2-w0.35", p, "su", scheme) for p in ("masked", "engine", "engine-selected")} <= conditions
    assert not (table.model == "resnet18").to_numpy()[table.policy.to_numpy() == "su"].any()  # SU does not fit resnet18
    assert (table.step_s > 0).all() and (table.rounds == 1).all()
    budgeted = table[table.scheme != "-"]
    assert (budgeted.params_updated <= budgeted.budget_params).all()
    assert (budgeted.params_updated[budgeted.policy != "velocity"] > 0).all()  # tiny inputs may leave every velocity tied
    assert table.loc[table.path == "bound", "params_updated"].eq(0).all()
    assert (table.vs_bound[table.path == "bound"] == 1).all() and (table.vs_masked[table.path == "masked"] == 1).all()
    text = (out / "update_step_quick.md").read_text()
    assert "| model | path | policy |" in text and "## Targets" in text and text.count("\n| mbv2-w0.35 |") == 16


@pytest.mark.benchmark
def test_engine_memory_is_never_above_the_masked_path(quick_table: tuple[Path, pd.DataFrame]) -> None:
    _, table = quick_table
    table = table[table.suite == "params"]
    engine = table[table.path.str.startswith("engine")]
    assert (engine.memory_vs_masked <= 1.0).all()
    # each floor lies between the bound and the masked path (a share of the weight-gradient time)
    masked_vs_bound = engine.vs_bound / engine.vs_masked
    for floor in (engine.floor_vs_bound, engine.time_floor_vs_bound):
        assert floor.between(masked_vs_bound.clip(upper=1.0) - 1e-9, masked_vs_bound.clip(lower=1.0) + 1e-9).all()
    assert engine.time_floor_vs_bound.notna().all()
    su = engine[engine.policy == "su"]
    assert (su.memory_vs_masked < 0.9).all()  # frozen convs keep no activations, no gradients
    selected = su[su.path == "engine-selected"].set_index("scheme").saved_mib
    assert (selected < su[su.path == "engine"].set_index("scheme").saved_mib).all()  # backward stops below the SU layers


def test_masks_of_the_policies_fit_the_budgets() -> None:
    model = build_model(ModelConfig(name="mbv2-w0.35"), 10)
    inputs, labels = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    velocity = policy_masks("velocity", model, "mbv2-w0.35_scheme_1", inputs, labels, seed=0)
    assert velocity is not None
    flops = layer_flops(model, inputs[:1])
    seconds = layer_wgrad_seconds(model, inputs, repeats=1)
    assert set(seconds) == set(flops) and all(s > 0 for s in seconds.values())
    summary = mask_summary(model, velocity, flops, seconds)
    assert 0 < summary["params_updated"] <= 22_410
    everything = mask_summary(model, all_masks(model, True), flops, seconds)
    nothing = mask_summary(model, all_masks(model, False), flops, seconds)
    for share in ("wgrad_flop_share", "wgrad_time_share"):
        assert everything[share] == pytest.approx(1.0) and nothing[share] == 0.0 and 0 < summary[share] < 1
    assert math.isnan(mask_summary(model, velocity, flops)["wgrad_time_share"])  # no times measured
    assert policy_masks("su", build_model(ModelConfig(name="resnet18"), 10), "scheme_1", inputs, labels, seed=0) is None


@pytest.mark.parametrize(
    "argv",
    [["--repeats", "0"], ["--models", "vgg"], ["--transformer-models", "bert"], ["--threads", "0"], ["--image-size", "-1"]],
)
def test_bad_options_exit_2_before_any_work(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        update_step_main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "out").exists()
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in last_line and argv[0] in last_line


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "table"
    target.write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        bn_update.main(["--out", str(target)])
    assert exit_info.value.code == 2 and target.read_text() == "keep me"


@pytest.mark.benchmark
def test_bn_update_comparison_runs_and_writes_both_settings(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        table = bn_update.run(bn_update.BnBenchConfig(epochs=1, seeds=(0,), image_size=8, threads=1, out_dir=tmp_path), "test", log=lambda _line: None)
    finally:
        torch.set_num_threads(threads)
    assert sorted(table.bn_update) == ["all", "selected"]
    assert (table.epochs == 1).all() and table.test_top1_at_best_val.between(0, 100).all()
    assert set(pd.read_parquet(tmp_path / "bn_update.parquet").columns) >= {"bn_update", "seed", "best_val_top1", "test_top1_at_best_val"}
    assert "## Mean over seeds" in (tmp_path / "bn_update.md").read_text()


@pytest.mark.benchmark
def test_memory_conditions_measure_what_the_cost_model_predicts(quick_table: tuple[Path, pd.DataFrame]) -> None:
    out, table = quick_table
    memory = table[table.suite == "memory"]
    expected = {(p, policy, scheme) for p in ("masked", "engine", "engine-selected") for policy in MEMORY_POLICIES for scheme in "135"}
    assert set(memory[memory.scheme != "-"][["path", "policy", "scheme"]].itertuples(index=False, name=None)) == expected
    assert set(memory.unit) == {"neuron", "input_channel"}
    bounded = memory[memory.budget_kind == "memory"]
    assert (bounded.memory_used <= bounded.budget).all() and (bounded.memory_used > 0).all()
    engine = bounded[bounded.path.str.startswith("engine")]
    # the conv inputs the engine keeps are exactly the cost model's activations x batch x 4 bytes
    assert engine.prediction_error_pct.abs().max() < 1e-9
    masked = bounded[bounded.path == "masked"]
    assert (masked.layer_inputs_mib == memory[memory.path == "full"].layer_inputs_mib.iloc[0]).all()  # the study's path keeps every input
    parts = memory.layer_inputs_mib + memory.other_saved_mib + memory.grads_mib + memory.optimizer_mib
    assert (parts - memory.memory_mib).abs().max() < 1e-9
    text = (out / "update_step_quick.md").read_text()
    assert "## Memory budgets" in text and "### Memory budgets: targets" in text


@pytest.mark.benchmark
def test_transformer_conditions_keep_exactly_the_predicted_linear_inputs(quick_table: tuple[Path, pd.DataFrame]) -> None:
    """The small vit at TraDy's four SwinT budgets (as shares of its total): random input features on every path."""
    out, table = quick_table
    rows = table[table.suite == "transformers"]
    expected = {(p, str(n)) for p in ("masked", "engine", "engine-selected") for n in range(1, 5)}
    assert set(rows[rows.scheme != "-"][["path", "scheme"]].itertuples(index=False, name=None)) == expected
    assert {"full", "bound"} <= set(rows.path) and set(rows.model) == {"vit"}
    full = rows[rows.path == "full"].iloc[0]
    budgets = rows[rows.path == "masked"].sort_values("scheme").budget.tolist()
    assert budgets == transformer_budgets(int(full.budget)) and budgets == sorted(budgets)
    bounded = rows[rows.scheme != "-"]
    assert (bounded.memory_used <= bounded.budget).all() and (bounded.memory_used > 0).all()
    engine = bounded[bounded.path.str.startswith("engine")]
    # the Linear (and patch-conv) inputs the engine keeps are exactly the cost model's activations x batch x 4 bytes
    assert ((engine.layer_inputs_mib - engine.predicted_layer_inputs_mib).abs() < 1e-12).all()
    assert full.layer_inputs_mib == pytest.approx(full.predicted_layer_inputs_mib)  # every Linear's whole input, over its tokens
    assert (bounded[bounded.path == "masked"].layer_inputs_mib == full.layer_inputs_mib).all()
    parts = rows.layer_inputs_mib + rows.other_saved_mib + rows.grads_mib + rows.optimizer_mib
    assert (parts - rows.memory_mib).abs().max() < 1e-9
    text = (out / "update_step_quick.md").read_text()
    assert "## Transformers" in text and "vit budget 1, bn_update selected: memory / full" in text


def test_the_transformer_budgets_are_tradys_for_swin_t() -> None:
    assert transformer_budgets(SWINT_TOTAL) == list(SWINT_BUDGETS)
