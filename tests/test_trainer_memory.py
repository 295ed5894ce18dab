"""The trainer under memory budgets, at both units: budgets kept, metrics, the engine equal to the masked path, resuming."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from neqtune.trainables import TrialConfig, train
from neqtune.trainables.budget.costs import mask_memory
from neqtune.trainables.trainer import BudgetedRun, Metrics, StateFn

TIMING = ("epoch_time_s", "velocity_time_s")
MEMORY = 6000  # elements per image: about 5 % of mbv2-w0.35's 118,608 at 16 px


def config(policy: str, unit: str, **budget: Any) -> dict[str, Any]:
    return {
        "data": {"name": "digits", "image_size": 16, "batch_size": 64},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": 2, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
        "budget": {"policy": policy, "initialization": "random", "unit": unit, "memory": MEMORY, "scheme": "mbv2-w0.35_scheme_3", **budget},
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
    return {k: v for k, v in metrics.items() if k not in TIMING}


CASES = [("random", "input_channel"), ("su", "input_channel"), ("random", "neuron"), ("velocity", "neuron"), ("su", "neuron")]


@pytest.mark.parametrize(("policy", "unit"), CASES)
def test_memory_budget_is_kept_and_reported(policy: str, unit: str) -> None:
    records, _ = run(config(policy, unit))
    for r in records:
        assert r["memory_budget"] == MEMORY and r["budget_params"] is None
        assert 0 < r["memory_used"] <= MEMORY, r["memory_used"]
        assert r["memory_used"] == r["weight_elements_updated"] + r["activation_elements_kept"]
        assert r["memory_used_kb"] == pytest.approx(r["memory_used"] * 4 / 1024)
        assert r["budget_gap"] == MEMORY - r["memory_used"]
        assert 0 < r["activation_sparsity_pct"] < 100 and 0 < r["wgrad_flops_saved_pct"] < 100
        assert len(r["layer_frozen_pct"]) == 52 and math.isfinite(r["train_loss"])
    if policy == "su" and unit == "input_channel":
        # a memory budget smaller than the scheme's: the SU mask trimmed to fit, and static
        assert records[0]["memory_used"] == records[1]["memory_used"]


def test_a_scheme_sets_the_memory_budget_on_input_channels() -> None:
    cfg = config("su", "input_channel")
    del cfg["budget"]["memory"]
    records, _ = run(cfg)
    # scheme 3's SU mask on input channels costs what it budgets, at this image size
    assert records[0]["memory_used"] == records[0]["memory_budget"]
    assert records[0]["weight_elements_updated"] == 55_920


def test_input_channel_masks_leave_frozen_columns_bit_identical() -> None:
    run_ = BudgetedRun(TrialConfig.from_dict(config("random", "input_channel")))
    before = {k: v.detach().clone() for k, v in run_.model.state_dict().items()}
    run_.train_epoch()
    after = run_.model.state_dict()
    moved = 0
    for name, mask in run_.masks.items():
        weight = f"{name}.weight"
        conv = dict(run_.model.named_modules())[name]
        columns = (lambda w, m: w[m]) if conv.groups > 1 else (lambda w, m: w[:, m])
        assert torch.equal(columns(after[weight], ~mask), columns(before[weight], ~mask)), name
        moved += int(mask.any() and not torch.equal(columns(after[weight], mask), columns(before[weight], mask)))
    assert moved > 0
    used = mask_memory(run_.masks, run_.budget.costs, "input_channel")
    assert used.elements <= MEMORY


@pytest.mark.parametrize(("policy", "unit"), [("random", "input_channel"), ("su", "input_channel"), ("velocity", "neuron")])
def test_engine_equals_the_masked_path(policy: str, unit: str) -> None:
    """Two steps of the trainer's two update paths from the same start agree, in float64.

    In float32 they differ by rounding only, but from a random init at 16 px the BatchNorm statistics of 1x1 maps
    amplify it: by 1e-6 or by 3e-4 after two steps depending on how many threads torch's kernels use. The trainer's
    model is cast to float64 in place (its parameters stay the objects the optimizer and the engine hold).
    """
    runs = []
    for engine in ("sparse", "masked"):
        cfg = config(policy, unit)
        cfg["training"].update(update_engine=engine, lr=0.01, momentum=0.5)
        runs.append(BudgetedRun(TrialConfig.from_dict(cfg)))
        runs[-1].model.double()
    sparse, masked = runs
    assert all(torch.equal(sparse.masks[n], masked.masks[n]) for n in sparse.masks)
    start = {k: v.clone() for k, v in sparse.model.state_dict().items()}
    for step, (inputs, labels) in zip(range(2), sparse.train_loader, strict=False):
        for run_ in runs:
            torch.manual_seed(step)  # the same dropout in both
            run_.model.train()
            run_.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(run_.model(inputs.double()), labels).backward()
            run_.optimizer.step()
    a, b = sparse.model.state_dict(), masked.model.state_dict()
    assert any(not torch.equal(a[f"{name}.weight"], start[f"{name}.weight"]) for name in sparse.masks), "no budgeted layer moved"
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-9


@pytest.mark.parametrize(("policy", "unit"), [("random", "input_channel"), ("velocity", "neuron")])
def test_resuming_under_a_memory_budget_continues_exactly(policy: str, unit: str) -> None:
    cfg = config(policy, unit)
    cfg["training"]["epochs"] = 3
    straight, states = run(cfg)
    resumed, _ = run(cfg, resume=states[0])
    assert [comparable(r) for r in resumed] == [comparable(r) for r in straight[1:]]


def test_bytes_per_element_scales_the_kb() -> None:
    records, _ = run(config("random", "input_channel", bytes_per_element=1))
    assert records[0]["memory_used_kb"] == pytest.approx(records[0]["memory_used"] / 1024)
