"""The trainer on digits: masks, budgets, evaluation, reproducibility, resuming."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest
import torch

from neqtune.trainables import TrialConfig, train
from neqtune.trainables.budget.units import conv_layers
from neqtune.trainables.trainer import BudgetedRun, Metrics, StateFn

TIMING = ("epoch_time_s", "velocity_time_s")


def config(policy: str = "velocity", **training: Any) -> dict[str, Any]:
    return {
        "data": {"name": "digits", "image_size": 16, "batch_size": 64},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": 2, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, **training},
        "budget": {"policy": policy, "initialization": "random", "scheme": "mbv2-w0.35_scheme_3"},
    }


def run(cfg: dict[str, Any], resume: dict[str, Any] | None = None) -> tuple[list[Metrics], list[dict[str, Any]]]:
    records: list[Metrics] = []
    states: list[dict[str, Any]] = []

    def report(metrics: Metrics, state: StateFn) -> None:
        records.append(metrics)
        states.append(state())

    train(cfg, report, resume=resume)
    return records, states


def comparable(metrics: Metrics) -> dict[str, Any]:
    # nulls left out: the other policies' own metrics, which a plug-in loaded earlier in this process adds to the schema
    return {k: v for k, v in metrics.items() if k not in TIMING and v is not None}


@pytest.mark.parametrize("policy", ["velocity", "random", "su", "full"])
def test_every_policy_trains_within_budget(policy: str) -> None:
    records, _ = run(config(policy))
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert math.isfinite(r["train_loss"])
        assert 0 <= r["val_top1"] <= 100 and 0 <= r["test_top1"] <= 100
        assert r["budget_params"] == 55_920
        assert len(r["layer_frozen_pct"]) == len(r["layer_names"]) == 52
        if policy == "full":
            assert r["frozen_pct"] == 0.0 and r["params_updated"] == r["total_conv_params"]
        else:
            assert 0 < r["params_updated"] <= r["budget_params"]
            assert r["budget_gap"] == r["budget_params"] - r["params_updated"]
    if policy == "su":
        assert records[0]["layer_frozen_pct"] == records[1]["layer_frozen_pct"]  # static mask
        assert records[0]["params_updated"] == 55_920


def test_frozen_neurons_are_bit_identical_after_an_epoch() -> None:
    trial = TrialConfig.from_dict(config("su", weight_decay=0.1))
    trial_run = BudgetedRun(trial)
    before = {k: v.detach().clone() for k, v in trial_run.model.state_dict().items()}
    trial_run.train_epoch()
    after = trial_run.model.state_dict()
    convs = conv_layers(trial_run.model)
    for name, mask in trial_run.masks.items():
        weight = f"{name}.weight"
        assert torch.equal(after[weight][~mask], before[weight][~mask]), name
        if mask.any():
            assert not torch.equal(after[weight][mask], before[weight][mask]), name
    assert any(not m.any() for m in trial_run.masks.values()) and len(convs) == 52
    # BatchNorm and the classifier always train
    assert not torch.equal(after["features.0.1.weight"], before["features.0.1.weight"])
    assert not torch.equal(after["classifier.1.weight"], before["classifier.1.weight"])


def test_evaluation_every_n_epochs_and_at_the_last() -> None:
    records, _ = run(config("random", epochs=3, eval_per_epochs=2))
    assert math.isnan(records[0]["val_top1"]) and math.isnan(records[0]["best_val_top1"])
    assert not math.isnan(records[1]["val_top1"]) and not math.isnan(records[2]["val_top1"])
    best = max(records[1:], key=lambda r: r["val_top1"])
    assert records[2]["best_val_top1"] == best["val_top1"]
    assert records[2]["test_top1_at_best_val"] == best["test_top1"]
    assert records[2]["best_epoch"] == best["epoch"]


def test_warmup_then_cosine_learning_rate() -> None:
    records, _ = run(config("full", epochs=1, warmup_epochs=1, warmup_lr=0.01))
    assert records[0]["lr"] < 0.1  # last warm-up batch: still below the base rate
    assert records[1]["lr"] == pytest.approx(0.0, abs=1e-3)  # end of the cosine


def test_same_seed_same_result_and_other_seed_differs() -> None:
    a, _ = run(config("velocity"))
    b, _ = run(config("velocity"))
    c, _ = run(config("velocity", seed=1))
    assert [comparable(r) for r in a] == [comparable(r) for r in b]
    assert [r["train_loss"] for r in a] != [r["train_loss"] for r in c]


def test_same_seed_same_result_in_another_process() -> None:
    # Float sums depend on how many threads split them: both processes use the same count
    # (a Ray trial sets it from its CPU share).
    here, _ = run(config("random"))
    code = (
        "import json, sys, torch; from neqtune.trainables import train; "
        "torch.set_num_threads(int(sys.argv[2])); "
        "cfg = json.loads(sys.argv[1]); out = []; "
        "train(cfg, lambda m, s: out.append(m)); print(json.dumps(out))"
    )
    command = [sys.executable, "-c", code, json.dumps(config("random")), str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert [comparable(r) for r in here] == [comparable(r) for r in there]


def test_resuming_from_a_state_continues_exactly() -> None:
    cfg = config("velocity", epochs=3)
    straight, states = run(cfg)
    resumed, _ = run(cfg, resume=states[0])
    assert [comparable(r) for r in resumed] == [comparable(r) for r in straight[1:]]


def test_adam_runs_and_learns() -> None:
    records, _ = run(config("full", epochs=3, optimizer="adam", lr=0.003, momentum=0.0))
    assert records[-1]["train_loss"] < records[0]["train_loss"]
