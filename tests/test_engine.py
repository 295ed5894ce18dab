"""The sparse-update engine computes what the study's mask-after-backward path computes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neqtune.trainables import select_neurons, su_update_mask
from neqtune.trainables.budget.schemes import get_scheme
from neqtune.trainables.budget.units import Masks, conv_layers, conv_neuron_params
from neqtune.trainables.config import ModelConfig, TrainingConfig
from neqtune.trainables.models.registry import build_model
from neqtune.trainables.update.engine import SparseUpdateEngine, row_plan
from neqtune.trainables.update.optim import build_optimizer

BUDGET = get_scheme("mbv2-w0.35_scheme_1").budget_params(0)  # 22,410 parameters


def policy_masks(model: nn.Module, policy: str, seed: int) -> Masks:
    params = conv_neuron_params(model)
    if policy == "su":
        su = get_scheme("mbv2-w0.35_scheme_1").su
        assert su is not None
        return su_update_mask(model, manual_weight_idx=su.manual_weight_idx, weight_update_ratio=su.weight_update_ratio)
    generator = torch.Generator().manual_seed(seed)
    scores = {k: torch.randn(v.numel(), generator=generator) for k, v in params.items()}
    return select_neurons(policy, scores=scores, neuron_params=params, budget=BUDGET, generator=generator)


def train_steps(model: nn.Module, engine: SparseUpdateEngine, optimizer: Any, masks_per_step: list[Masks]) -> None:
    # float64: a randomly initialised MobileNetV2 amplifies the float32 rounding
    # differences of the two gradient paths (different summation orders) by
    # about 1e3 per step, so equality of the algorithms is checked in float64.
    inputs = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3] * 2)
    model.train()
    for step, masks in enumerate(masks_per_step):
        engine.set_masks(masks)
        optimizer.set_update_masks({conv.weight: masks[name] for name, conv in conv_layers(model).items()})
        torch.manual_seed(100 + step)  # same dropout in both paths
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()


def twin_runs(optimizer: str, masks_per_step: list[Masks], bn_update: str = "all") -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(0)
    start = build_model(ModelConfig(name="mbv2-w0.35"), 4).double()
    config = TrainingConfig(optimizer=optimizer, lr=0.01 if optimizer == "sgd" else 0.001, momentum=0.9 if optimizer == "sgd" else 0.0, weight_decay=0.01)  # type: ignore[arg-type]
    runs = []
    for sparse in (True, False):
        model = build_model(ModelConfig(name="mbv2-w0.35"), 4).double()
        model.load_state_dict(start.state_dict())
        engine = SparseUpdateEngine(model, bn_update=bn_update, sparse=sparse)  # type: ignore[arg-type]
        optimizer_config = dataclasses.replace(config, update_engine="sparse" if sparse else "masked")  # row-sparse steps vs the study's
        train_steps(model, engine, build_optimizer(model, optimizer_config), masks_per_step)
        runs.append(model)
    return start, runs[0], runs[1]


def assert_same_update(start: nn.Module, engine: nn.Module, masked: nn.Module, masks: Masks) -> None:
    before, ours, theirs = start.state_dict(), engine.state_dict(), masked.state_dict()
    parameters = {name for name, _ in start.named_parameters()}
    for key in before:
        if key in parameters:
            assert (ours[key].double() - theirs[key].double()).abs().max() < 1e-6, key
        else:  # BatchNorm running statistics: large values, compared relatively
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)
    for name, mask in masks.items():
        weight = f"{name}.weight"
        assert torch.equal(ours[weight][~mask], before[weight][~mask]), name
        assert torch.equal(theirs[weight][~mask], before[weight][~mask]), name


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("policy", ["velocity", "random", "su", "full"])
def test_three_steps_match_the_masked_path(policy: str, optimizer: str) -> None:
    model = build_model(ModelConfig(name="mbv2-w0.35"), 4)
    masks = policy_masks(model, policy, seed=3)
    start, engine, masked = twin_runs(optimizer, [masks] * 3)
    assert_same_update(start, engine, masked, masks)
    changed = [name for name, m in masks.items() if m.any()]
    assert changed and not torch.equal(engine.state_dict()[f"{changed[-1]}.weight"], start.state_dict()[f"{changed[-1]}.weight"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_changing_masks_keep_both_paths_equal(optimizer: str) -> None:
    # a neuron frozen for a while and then updated again must see the same optimizer state in both paths
    model = build_model(ModelConfig(name="mbv2-w0.35"), 4)
    sequence = [policy_masks(model, "random", seed=s) for s in (1, 1, 2, 3, 3)]
    start, engine, masked = twin_runs(optimizer, sequence)
    never = {k: ~torch.stack([m[k] for m in sequence]).any(dim=0) for k in sequence[0]}
    assert_same_update(start, engine, masked, {k: ~v for k, v in never.items()})


def test_bn_update_selected_matches_and_freezes_norms_below() -> None:
    model = build_model(ModelConfig(name="mbv2-w0.35"), 4)
    masks = policy_masks(model, "su", seed=0)
    start, engine, masked = twin_runs("sgd", [masks] * 2, bn_update="selected")
    assert_same_update(start, engine, masked, masks)
    before, after = start.state_dict(), engine.state_dict()
    assert torch.equal(after["features.1.conv.0.1.weight"], before["features.1.conv.0.1.weight"])  # BN under a frozen conv
    assert not torch.equal(after["features.17.conv.1.1.weight"], before["features.17.conv.1.1.weight"])  # BN after an updated conv


@pytest.mark.parametrize(
    ("groups", "in_channels", "out_channels", "bias", "kernel", "stride"),
    [(1, 6, 8, True, 3, 2), (8, 8, 8, False, 3, 2), (2, 4, 6, True, 3, 2), (4, 4, 8, False, 3, 2), (1, 6, 8, True, 1, 1), (1, 6, 8, False, 1, 2)],
)
@pytest.mark.parametrize("most", [False, True], ids=["two-rows", "all-but-one-row-dense"])
def test_row_sparse_gradient_equals_the_full_gradient_rows(
    groups: int, in_channels: int, out_channels: int, bias: bool, kernel: int, stride: int, most: bool
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias)
    inputs = torch.randn(3, in_channels, 9, 9, requires_grad=True)
    conv(inputs).sin().sum().backward()
    full_weight, full_input = conv.weight.grad.clone(), inputs.grad.clone()  # type: ignore[union-attr]
    full_bias = conv.bias.grad.clone() if bias else None  # type: ignore[union-attr]
    mask = torch.full((out_channels,), most)
    mask[[1, out_channels - 1] if not most else [3]] = not most  # rows 1 and last (row-wise path), or all but row 3 (dense path)
    engine = SparseUpdateEngine(conv)
    engine.set_masks({"": mask})
    plan = row_plan(mask, conv.weight)
    assert plan.dense == most
    conv.zero_grad()
    inputs.grad = None
    conv(inputs).sin().sum().backward()
    torch.testing.assert_close(inputs.grad, full_input)
    torch.testing.assert_close(conv.weight.grad[mask], full_weight[mask])  # type: ignore[index]
    assert torch.equal(conv.weight.grad[~mask], torch.zeros_like(full_weight[~mask]))  # type: ignore[index]
    if bias:
        torch.testing.assert_close(conv.bias.grad[mask], full_bias[mask])  # type: ignore[index,union-attr]
    engine.remove()
    assert "forward" not in vars(conv)


def test_fully_frozen_convs_need_no_weight_gradient() -> None:
    model = build_model(ModelConfig(name="mbv2-w0.35"), 4)
    engine = SparseUpdateEngine(model)
    masks = policy_masks(model, "su", seed=0)
    engine.set_masks(masks)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    for name, conv in conv_layers(model).items():
        assert (conv.weight.grad is None) == (not masks[name].any()), name


def saved_activation_bytes(model: nn.Module, inputs: torch.Tensor) -> int:
    """Bytes of the non-parameter tensors autograd keeps for backward in one forward pass."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in parameters:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(inputs).sum().backward()
    return sum(saved.values())


def test_a_frozen_conv_keeps_no_activation_and_a_depthwise_conv_only_its_selected_channels() -> None:
    torch.manual_seed(0)
    inputs = torch.randn(2, 8, 6, 6, requires_grad=True)
    for groups, expected in ((1, 0), (8, 2 * 2 * 6 * 6 * 4)):  # frozen: nothing; depthwise, 2 of 8 selected: 2 input channels
        conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        native = saved_activation_bytes(conv, inputs)
        assert native == inputs.nbytes
        engine = SparseUpdateEngine(conv)
        mask = torch.zeros(8, dtype=torch.bool)
        mask[[2, 5]] = groups > 1
        engine.set_masks({"": mask})
        assert saved_activation_bytes(conv, inputs) == expected
        ours = torch.autograd.grad(conv(inputs).sin().sum(), inputs)[0]
        engine.remove()
        torch.testing.assert_close(ours, torch.autograd.grad(conv(inputs).sin().sum(), inputs)[0])


def test_masks_change_without_rebuilding_the_model_or_the_optimizer_state() -> None:
    model = build_model(ModelConfig(name="mbv2-w0.35"), 4)
    engine = SparseUpdateEngine(model)
    optimizer = build_optimizer(model, TrainingConfig(lr=0.01, momentum=0.9))
    first, second = policy_masks(model, "random", seed=1), policy_masks(model, "random", seed=2)
    inputs, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    forwards = {name: conv.forward for name, conv in conv_layers(model).items()}
    buffers: dict[str, torch.Tensor] = {}
    for masks in (first, second):
        engine.set_masks(masks)
        optimizer.set_update_masks({conv.weight: masks[name] for name, conv in conv_layers(model).items()})
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        for name, conv in conv_layers(model).items():
            if name in buffers and masks[name].any():
                assert optimizer.state[conv.weight]["momentum_buffer"] is buffers[name]  # same state object, updated in place
            if conv.weight in optimizer.state:
                buffers[name] = optimizer.state[conv.weight]["momentum_buffer"]
    assert {name: conv.forward for name, conv in conv_layers(model).items()} == forwards
