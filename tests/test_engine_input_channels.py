"""The sparse-update engine under the input-channel unit computes what the masked path computes, and keeps less."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neqtune.trainables.budget.units import Masks, conv_layers
from neqtune.trainables.update.engine import ColumnPlan, SparseUpdateEngine, column_plan, parameter_masks
from neqtune.trainables.update.optim import AxisMask, MaskedAdam, MaskedSGD


def column_net() -> nn.Sequential:
    """Every kind of conv the input-channel path distinguishes, with BatchNorm and in-place ReLU6 between them."""

    def norm_act(channels: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(channels), nn.ReLU6(inplace=True)]

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # dense 3x3 (its input needs no gradient)
        *norm_act(8),
        nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False),  # strided 3x3
        *norm_act(12),
        nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False),  # depthwise
        *norm_act(12),
        nn.Conv2d(12, 4, 1, bias=False),  # 1x1
        *norm_act(4),
        nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False),  # grouped, 2 input channels per group: the fallback
        *norm_act(6),
        nn.Conv2d(6, 10, 1, stride=2),  # strided 1x1 with a bias
        nn.ReLU6(inplace=True),
        nn.Conv2d(10, 10, 3, padding=1),  # 3x3 with a bias
        nn.ReLU6(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(10, 3),
    )


def weight_elements(conv: nn.Conv2d, mask: torch.Tensor) -> torch.Tensor:
    """The input-channel mask spread over the weight: W[o, j] reads input channel (o // (C_out/g)) * (C_in/g) + j."""
    out_per_group, in_per_group = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    channel = torch.tensor([[o // out_per_group * in_per_group + j for j in range(in_per_group)] for o in range(conv.out_channels)])
    return mask[channel][:, :, None, None].expand_as(conv.weight)


def mask_schedule(model: nn.Module, steps: int) -> list[Masks]:
    """Per step, every conv gets none, some or all of its input channels, rotating between steps."""
    generator = torch.Generator().manual_seed(7)
    schedule = []
    for step in range(steps):
        masks = {}
        for index, (name, conv) in enumerate(conv_layers(model).items()):
            kind = ("some", "none", "some", "all")[(index + step) % 4]
            mask = torch.full((conv.in_channels,), kind == "all")
            if kind == "some":
                count = int(torch.randint(1, conv.in_channels, (1,), generator=generator))
                mask[torch.randperm(conv.in_channels, generator=generator)[:count]] = True
            masks[name] = mask
        schedule.append(masks)
    return schedule


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], bool], MaskedSGD | MaskedAdam]] = {
    "sgd": lambda p, sparse: MaskedSGD(p, lr=0.05, momentum=0.9, weight_decay=0.01, row_sparse=sparse),
    "adam": lambda p, sparse: MaskedAdam(p, lr=0.01, weight_decay=0.01, row_sparse=sparse),
}


@pytest.mark.parametrize("bn_update", ["all", "selected"])
@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_three_steps_match_the_masked_path(optimizer_name: str, bn_update: str) -> None:
    torch.manual_seed(0)
    start = column_net().double()
    schedule = mask_schedule(start, steps=3)
    inputs = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0])
    runs = []
    for sparse in (True, False):
        model = column_net().double()
        model.load_state_dict(start.state_dict())
        engine = SparseUpdateEngine(model, bn_update=bn_update, sparse=sparse, unit="input_channel")  # type: ignore[arg-type]
        optimizer = OPTIMIZERS[optimizer_name](list(model.parameters()), sparse)
        model.train()
        for masks in schedule:
            engine.set_masks(masks)
            optimizer.set_update_masks(parameter_masks(model, masks, "input_channel"))
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
        runs.append(model)
    ours, theirs, before = runs[0].state_dict(), runs[1].state_dict(), start.state_dict()
    parameters = {name for name, _ in start.named_parameters()}
    for key in before:
        if key in parameters:
            assert (ours[key] - theirs[key]).abs().max() < 1e-6, key
        else:  # BatchNorm running statistics
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-9)
    for name, conv in conv_layers(start).items():
        ever = weight_elements(conv, torch.stack([m[name] for m in schedule]).any(dim=0))
        weight = f"{name}.weight"
        assert torch.equal(ours[weight][~ever], before[weight][~ever]), name
        assert torch.equal(theirs[weight][~ever], before[weight][~ever]), name
        assert not torch.equal(ours[weight][ever], before[weight][ever]), name  # every conv has a step with something selected


def test_bn_update_selected_freezes_the_norms_after_a_frozen_conv() -> None:
    torch.manual_seed(0)
    model = column_net()
    engine = SparseUpdateEngine(model, bn_update="selected", unit="input_channel")
    masks = {name: torch.zeros(conv.in_channels, dtype=torch.bool) for name, conv in conv_layers(model).items()}
    masks["6"][[1, 4]] = True  # only the depthwise conv (its BatchNorm is module 7)
    engine.set_masks(masks)
    F.cross_entropy(model(torch.randn(2, 3, 12, 12)), torch.tensor([0, 1])).backward()
    norms = {name: module for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)}
    assert norms["7"].weight.grad is not None
    assert all(norm.weight.grad is None for name, norm in norms.items() if name != "7")
    for name, conv in conv_layers(model).items():
        assert (conv.weight.grad is None) == (name != "6"), name


CONV_KINDS = {
    "3x3": dict(in_channels=6, out_channels=8, kernel_size=3, padding=1, bias=False),
    "3x3-stride2-bias": dict(in_channels=6, out_channels=8, kernel_size=3, stride=2, padding=1, bias=True),
    "1x1": dict(in_channels=6, out_channels=8, kernel_size=1, bias=False),
    "1x1-stride2-bias": dict(in_channels=6, out_channels=8, kernel_size=1, stride=2, bias=True),
    "depthwise": dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6, bias=True),
    "depthwise-stride2": dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding=1, groups=6, bias=False),
    "depth-multiplier-2": dict(in_channels=6, out_channels=12, kernel_size=3, padding=1, groups=6, bias=False),
    "grouped": dict(in_channels=6, out_channels=9, kernel_size=3, padding=1, groups=3, bias=True),
}


@pytest.mark.parametrize("selected", [[1, 4], [0, 1, 2, 3, 5]], ids=["two", "all-but-one"])
@pytest.mark.parametrize("kind", list(CONV_KINDS))
def test_column_gradient_equals_the_full_gradient_columns(kind: str, selected: list[int]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(**CONV_KINDS[kind]).double()  # type: ignore[arg-type]
    inputs = torch.randn(3, 6, 9, 9, dtype=torch.float64, requires_grad=True)
    conv(inputs).sin().sum().backward()
    full_weight, full_input = conv.weight.grad.clone(), inputs.grad.clone()  # type: ignore[union-attr]
    full_bias = conv.bias.grad.clone() if conv.bias is not None else None  # type: ignore[union-attr]
    mask = torch.zeros(6, dtype=torch.bool)
    mask[selected] = True
    engine = SparseUpdateEngine(conv, unit="input_channel")
    engine.set_masks({"": mask})
    conv.zero_grad(set_to_none=True)
    inputs.grad = None
    conv(inputs).sin().sum().backward()
    assert conv.weight.grad is not None and inputs.grad is not None
    torch.testing.assert_close(inputs.grad, full_input, rtol=1e-12, atol=1e-12)
    elements = weight_elements(conv, mask)
    torch.testing.assert_close(conv.weight.grad[elements], full_weight[elements], rtol=1e-12, atol=1e-12)
    assert torch.equal(conv.weight.grad[~elements], torch.zeros_like(full_weight[~elements]))
    if full_bias is not None:  # a conv bias trains whole when its conv has any selected input channel
        assert conv.bias is not None and conv.bias.grad is not None
        torch.testing.assert_close(conv.bias.grad, full_bias, rtol=1e-12, atol=1e-12)
    engine.remove()
    assert "forward" not in vars(conv)


def saved_elements(conv: nn.Module, inputs: torch.Tensor) -> int:
    """Elements of the non-parameter tensors autograd keeps for backward of ``conv(inputs)`` (each storage once)."""
    parameters = {p.untyped_storage().data_ptr() for p in conv.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in parameters:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes() // tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        conv(inputs).sum().backward()
    return sum(saved.values())


@pytest.mark.parametrize("kind", list(CONV_KINDS))
def test_a_partly_updated_conv_keeps_only_its_selected_input_channels(kind: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(**CONV_KINDS[kind])  # type: ignore[arg-type]
    inputs = torch.randn(2, 6, 8, 8, requires_grad=True)
    assert saved_elements(conv, inputs) == inputs.numel()  # autograd's own conv keeps the whole input
    engine = SparseUpdateEngine(conv, unit="input_channel")
    plane = inputs.shape[0] * inputs.shape[2] * inputs.shape[3]
    for selected in ([3], [0, 2, 5], [0, 1, 2, 3, 4]):  # k of 6 channels, also most of them (no dense fallback)
        mask = torch.zeros(6, dtype=torch.bool)
        mask[selected] = True
        engine.set_masks({"": mask})
        expected = inputs.numel() if kind == "grouped" else len(selected) * plane  # grouped: the documented fallback
        assert saved_elements(conv, inputs) == expected, selected
    engine.set_masks({"": torch.zeros(6, dtype=torch.bool)})
    assert saved_elements(conv, inputs) == 0  # frozen: the weight only


def test_the_kept_channels_are_a_copy_so_the_input_can_be_freed() -> None:
    conv = nn.Conv2d(6, 8, 3, padding=1)
    engine = SparseUpdateEngine(conv, unit="input_channel")
    mask = torch.zeros(6, dtype=torch.bool)
    mask[[1, 4]] = True
    engine.set_masks({"": mask})
    inputs = torch.randn(2, 6, 8, 8, requires_grad=True)
    kept: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        conv(inputs)
    activations = [t for t in kept if t.dim() == 4 and t.shape[0] == 2]
    assert len(activations) == 1 and activations[0].shape == (2, 2, 8, 8)
    assert activations[0].untyped_storage().data_ptr() != inputs.untyped_storage().data_ptr()
    assert torch.equal(activations[0], inputs.detach()[:, [1, 4]])


def test_plans_and_parameter_masks_per_conv_kind() -> None:
    model = column_net()
    convs = conv_layers(model)
    masks = {name: torch.zeros(conv.in_channels, dtype=torch.bool) for name, conv in convs.items()}
    for name in masks:
        masks[name][[0, 2]] = True
    per_param = parameter_masks(model, masks, "input_channel")
    dense, depthwise, grouped, biased = convs["0"], convs["6"], convs["12"], convs["15"]
    assert isinstance(per_param[dense.weight], AxisMask)
    assert per_param[dense.weight].axis == 1 and torch.equal(per_param[dense.weight].mask, masks["0"])  # type: ignore[union-attr]
    assert torch.equal(per_param[depthwise.weight], masks["6"])  # type: ignore[arg-type]  # depthwise: rows = its input channels
    element = per_param[grouped.weight]
    assert isinstance(element, torch.Tensor) and element.shape == (6, 2, 1, 1)
    assert torch.equal(element.expand_as(grouped.weight), weight_elements(grouped, masks["12"]))
    assert biased.bias is not None and torch.equal(per_param[biased.bias], torch.ones(10, dtype=torch.bool))  # type: ignore[arg-type]
    masks["15"][:] = False
    assert torch.equal(parameter_masks(convs, masks, "input_channel")[biased.bias], torch.zeros(10, dtype=torch.bool))  # type: ignore[arg-type]
    rows = {name: torch.ones(conv.out_channels, dtype=torch.bool) for name, conv in convs.items()}
    neuron = parameter_masks(model, rows, "neuron")
    assert all(neuron[conv.weight] is rows[name] for name, conv in convs.items())
    assert neuron[biased.bias] is rows["15"]
    plans = [column_plan(masks["0"], dense.weight), column_plan(masks["6"], depthwise.weight, 12), column_plan(masks["12"], grouped.weight, 2)]
    assert all(isinstance(plan, ColumnPlan) and plan.selected.tolist() == [0, 2] for plan in plans)
    assert plans[0].rows is None and plans[0].frozen is None
    assert plans[1].rows is not None and plans[1].rows.tolist() == [0, 2]
    assert plans[2].frozen is not None and torch.equal(~plans[2].frozen, element)


def test_masks_of_the_wrong_unit_or_shape_are_refused() -> None:
    model = column_net()
    engine = SparseUpdateEngine(model, unit="input_channel")
    rows = {name: torch.ones(conv.out_channels, dtype=torch.bool) for name, conv in conv_layers(model).items()}
    with pytest.raises(ValueError, match=r"mask of conv '0'.*shape \(3,\) expected under unit 'input_channel'"):
        engine.set_masks(rows)
    with pytest.raises(ValueError, match="mask of conv '0'"):
        parameter_masks(model, rows, "input_channel")
    with pytest.raises(ValueError, match="unknown unit 'filter'"):
        SparseUpdateEngine(model, unit="filter")  # type: ignore[arg-type]
