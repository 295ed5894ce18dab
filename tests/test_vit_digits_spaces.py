"""The offline SwinT-row reproduction (spaces/vit_digits): the vit's full total, the budgets' rule, the spaces, the committed weights.

The budgeted space's dry run (its budgets price nn.Linear input channels) is tested with the Linear cost model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml

from neqtune.search.cli import main
from neqtune.trainables.config import ModelConfig
from neqtune.trainables.models.registry import build_model

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces" / "vit_digits"
BUDGETS = [139, 560, 3_151, 13_758]
SPACE_BUDGETS = [145, *BUDGETS[1:]]  # 139 buys no unit: the cheapest input feature with its layer's bias costs 145


@pytest.fixture(scope="module")
def make_spaces() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vit_digits_make_spaces", SPACES / "make_spaces.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_full_total_counts_every_conv_and_linear_but_the_head_with_the_tokens_each_sees(make_spaces: ModuleType) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vit", **make_spaces.SHAPE), 10)
    # patch conv 3,072 + 64 weights, 3 x 256 pixels; per block qkv, proj, fc1, fc2 with biases, 17 tokens each
    block = (64 * 192 + 192) + (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64), (64 + 64 + 64 + 128) * 17
    assert make_spaces.full_total(model, 16) == (3_136 + 4 * block[0], 768 + 4 * block[1]) == (136_000, 22_528)


def test_the_budgets_are_swints_shares_of_the_total(make_spaces: ModuleType) -> None:
    assert make_spaces.scaled_budgets(158_528) == BUDGETS
    assert make_spaces.scaled_budgets(make_spaces.SWINT_TOTAL) == list(make_spaces.SWINT_BUDGETS)  # the rule gives SwinT its own
    model = build_model(ModelConfig(name="vit", **make_spaces.SHAPE), 10)
    assert make_spaces.cheapest_unit(model, 16) == 64 + 17 + 64  # a proj / fc2 column, its 17 tokens, the layer's bias
    assert make_spaces.space_budgets(158_528, 145) == SPACE_BUDGETS


def test_the_spaces_run_the_three_policies_and_the_baseline_from_the_pretrained_vit(make_spaces: ModuleType) -> None:
    grid, full = (yaml.safe_load((SPACES / f"digits_vit{s}.yaml").read_text()) for s in ("", "_full"))
    for raw in (grid, full):
        assert raw["model"] == {"name": "vit", "pretrained": make_spaces.WEIGHTS, **make_spaces.SHAPE}
        assert (raw["data"]["name"], raw["data"]["image_size"]) == ("digits", 16)
        assert raw["search"]["params"]["training.seed"] == {"choice": [0, 1, 2]}
    assert grid["search"]["params"]["budget.policy"] == {"choice": ["random", "rgn", "trady"]}
    assert grid["search"]["params"]["budget.memory"] == {"choice": SPACE_BUDGETS}
    assert grid["budget"]["unit"] == "input_channel" and grid["budget"]["options"]["rgn"] == {"refresh": "epoch"}
    assert full["budget"] == {"policy": "full"}


def test_the_committed_weights_load_and_the_baseline_dry_runs(
    make_spaces: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    monkeypatch.chdir(ROOT)  # the space names the weights relative to the repository root
    model = build_model(ModelConfig(name="vit", pretrained=str(ROOT / make_spaces.WEIGHTS), **make_spaces.SHAPE), 10)
    assert torch.equal(model.state_dict()["heads.head.weight"], torch.load(ROOT / make_spaces.WEIGHTS)["heads.head.weight"])
    path = SPACES / "digits_vit_full.yaml"
    assert main(["--space", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"{path}: valid; 3 trials (grid)")


def test_the_reproduction_report_checks_swints_ordering_per_budget() -> None:
    import pandas as pd

    from benchmarks.vit_reproduction import report

    rows = [("full", "-", 0, 97.0)]
    for budget, scores in ((145, {"random": 88.0, "rgn": 87.0, "trady": 87.5}), (560, {"random": 88.0, "rgn": 90.0, "trady": 89.0})):
        rows += [(policy, budget, seed, score + seed / 10) for policy, score in scores.items() for seed in (0, 1, 2)]
    common = {"memory_used": 100.0, "params_updated": 64.0, "epoch_time_s": 1.0}
    columns = ("policy", "scheme", "seed", "test_top1_at_best_val")
    trials = pd.DataFrame([{**dict(zip(columns, row, strict=True)), "final_test_top1": row[3], "memory_budget": row[1], **common} for row in rows])
    text = report(trials)
    assert "| 145 | 27,946 (its share, 139, buys no unit) | D-Full Random | 88.1 ± 0.1 |" in text
    assert "- budget 145: D-Det RGN 87.1 vs TraDy 87.6: does not hold; TraDy 87.6 vs D-Full Random 88.1: does not hold" in text
    assert "- budget 560: D-Det RGN 90.1 vs TraDy 89.1: holds; TraDy 89.1 vs D-Full Random 88.1: holds" in text
    assert "| - | 31,889,952 (full) | full | 97.0 ± 0.0 |" in text


def test_render_without_experiments_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.vit_reproduction import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--render", "--results", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"--render: no epochs.parquet under {tmp_path / 'vit-digits-full'}, {tmp_path / 'vit-digits'}")
