"""Masked optimizers: frozen rows (and columns) stay bit-identical; with no mask they match torch's."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from neqtune.trainables.update.optim import AxisMask, MaskedAdam, MaskedSGD, cosine_lr

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

MASKED: dict[str, OptimizerFactory] = {
    "sgd": lambda p: MaskedSGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": lambda p: MaskedSGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    "adam": lambda p: MaskedAdam(p, lr=0.01, weight_decay=0.01),
}
TORCH: dict[str, OptimizerFactory] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
}


def conv_and_data() -> tuple[nn.Conv2d, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Conv2d(3, 6, 3), torch.randn(4, 3, 6, 6)


def step(conv: nn.Conv2d, optimizer: torch.optim.Optimizer, inputs: torch.Tensor) -> None:
    optimizer.zero_grad()
    conv(inputs).square().mean().backward()
    optimizer.step()


@pytest.mark.parametrize("name", list(MASKED))
def test_frozen_rows_stay_bit_identical_as_masks_change(name: str) -> None:
    conv, inputs = conv_and_data()
    optimizer = MASKED[name]([conv.weight, conv.bias])
    masks = [
        torch.tensor([True, False, True, False, False, True]),
        torch.tensor([False, False, True, True, False, False]),
        torch.tensor([True, True, False, False, False, True]),
    ]
    for mask in masks:  # momentum and weight decay built up under one mask must not leak into the next
        weight, bias = conv.weight.detach().clone(), conv.bias.detach().clone()
        optimizer.set_update_masks({conv.weight: mask, conv.bias: mask})  # type: ignore[attr-defined]
        for _ in range(3):
            step(conv, optimizer, inputs)
        assert torch.equal(conv.weight[~mask], weight[~mask])
        assert torch.equal(conv.bias[~mask], bias[~mask])
        assert not torch.equal(conv.weight[mask], weight[mask])


@pytest.mark.parametrize("name", list(MASKED))
def test_all_true_masks_match_torch(name: str) -> None:
    ours, inputs = conv_and_data()
    theirs, _ = conv_and_data()
    mine = MASKED[name]([ours.weight, ours.bias])
    mine.set_update_masks({ours.weight: torch.ones(6, dtype=torch.bool)})  # type: ignore[attr-defined]
    reference = TORCH[name]([theirs.weight, theirs.bias])
    for _ in range(4):
        step(ours, mine, inputs)
        step(theirs, reference, inputs)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=0, atol=1e-6)


def test_sgd_frozen_rows_follow_the_reference_rule() -> None:
    # momentum buffer of a frozen row decays with a zero gradient (weight decay masked too)
    conv, inputs = conv_and_data()
    optimizer = MaskedSGD([conv.weight], lr=0.1, momentum=0.5, weight_decay=0.1)
    step(conv, optimizer, inputs)
    buffer = optimizer.state[conv.weight]["momentum_buffer"].clone()
    frozen = torch.tensor([True, False, False, False, False, False])
    optimizer.set_update_masks({conv.weight: ~frozen})
    step(conv, optimizer, inputs)
    assert torch.equal(optimizer.state[conv.weight]["momentum_buffer"][frozen], buffer[frozen] * 0.5)


def test_mask_of_wrong_shape_is_refused() -> None:
    conv, _ = conv_and_data()
    optimizer = MaskedSGD([conv.weight], lr=0.1)
    with pytest.raises(ValueError, match="does not fit"):
        optimizer.set_update_masks({conv.weight: torch.ones(5, dtype=torch.bool)})


def test_cosine_schedule_with_warmup() -> None:
    lr = lambda s: cosine_lr(s, base_lr=0.1, total_steps=110, warmup_steps=10, warmup_lr=0.0, final_lr=0.01)  # noqa: E731
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.05)
    assert lr(10) == pytest.approx(0.1)
    assert lr(60) == pytest.approx(0.01 + 0.5 * 0.09 * (1 + math.cos(math.pi * 0.5)))
    assert lr(110) == pytest.approx(0.01)
    assert cosine_lr(0, base_lr=0.2, total_steps=10) == pytest.approx(0.2)


ROW_SPARSE: dict[str, Callable[[list[nn.Parameter], bool], MaskedSGD | MaskedAdam]] = {
    "sgd": lambda p, rows: MaskedSGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, row_sparse=rows),
    "sgd-nesterov": lambda p, rows: MaskedSGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True, row_sparse=rows),
    "sgd-no-momentum": lambda p, rows: MaskedSGD(p, lr=0.1, weight_decay=0.01, row_sparse=rows),
    "sgd-dampening": lambda p, rows: MaskedSGD(p, lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01, row_sparse=rows),
    "adam": lambda p, rows: MaskedAdam(p, lr=0.01, weight_decay=0.01, row_sparse=rows),
}


@pytest.mark.parametrize("name", list(ROW_SPARSE))
def test_row_sparse_steps_are_bit_identical_to_the_masked_steps(name: str) -> None:
    # The sparse engine's optimizer steps only the updated rows (frozen rows' state decays in place);
    # masks change and the whole parameter goes without a gradient for a step (a frozen conv).
    schedule = [
        [0, 1],  # partial, first step: state created
        [0, 1],
        [2, 3, 4],  # rows 0 and 1 stop, 2..4 start after two zero-gradient steps
        None,  # whole conv frozen: no gradient at all on the row-sparse side
        [0, 5],
        [0, 1, 2, 3, 4, 5],  # every row: whole-tensor step
        [1],
    ]
    runs = []
    for row_sparse in (True, False):
        conv, inputs = conv_and_data()
        conv = conv.double()
        optimizer = ROW_SPARSE[name]([conv.weight, conv.bias], row_sparse)
        for rows in schedule:
            mask = torch.zeros(6, dtype=torch.bool)
            mask[rows or []] = True
            before = conv.weight.detach().clone(), conv.bias.detach().clone()
            optimizer.set_update_masks({conv.weight: mask, conv.bias: mask})
            optimizer.zero_grad(set_to_none=True)
            conv(inputs.double()).square().mean().backward()
            if rows is None and row_sparse:
                conv.weight.grad = conv.bias.grad = None  # the engine switches a frozen conv off
            optimizer.step()
            assert torch.equal(conv.weight[~mask], before[0][~mask]) and torch.equal(conv.bias[~mask], before[1][~mask])
        runs.append((conv, optimizer))
    (ours, mine), (theirs, reference) = runs
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    for param, other in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
        for key, value in reference.state[other].items():
            assert torch.equal(mine.state[param][key], value) if isinstance(value, torch.Tensor) else mine.state[param][key] == value, key


def test_row_sparse_sgd_steps_gather_only_the_updated_rows() -> None:
    conv, inputs = conv_and_data()
    optimizer = MaskedSGD([conv.weight], lr=0.1, momentum=0.5, weight_decay=0.1, row_sparse=True)
    mask = torch.tensor([False, True, False, False, False, False])
    optimizer.set_update_masks({conv.weight: mask})
    step(conv, optimizer, inputs)
    assert optimizer._rows_step(conv.weight) is not None and optimizer._rows_step(conv.weight).tolist() == [1]  # type: ignore[union-attr]
    conv.weight.grad[~mask] = float("nan")  # type: ignore[index]  # rows it must never read
    weight = conv.weight.detach().clone()
    optimizer.step()
    assert torch.equal(conv.weight[~mask], weight[~mask])
    assert bool(torch.isfinite(conv.weight).all()) and bool(torch.isfinite(optimizer.state[conv.weight]["momentum_buffer"]).all())

AXIS_SCHEDULE: list[list[int] | None] = [
    [0, 1],  # partial, first step: state created
    [0, 1],
    [2, 3, 4],  # slices 0 and 1 stop, 2..4 start after two zero-gradient steps
    None,  # the whole conv frozen: no gradient at all on the row-sparse side
    [0, 4],
    [0, 1, 2, 3, 4],  # every slice: whole-tensor step
    [1],
]


@pytest.mark.parametrize("axis", [0, 1], ids=["rows", "columns"])
@pytest.mark.parametrize("name", list(ROW_SPARSE))
def test_axis_mask_steps_are_bit_identical_to_the_masked_steps(name: str, axis: int) -> None:
    # Columns (axis 1) are the input channels of a conv weight; the bias then trains iff any column does.
    runs = []
    for row_sparse in (True, False):
        torch.manual_seed(0)
        conv, inputs = nn.Conv2d(5, 5, 3).double(), torch.randn(4, 5, 6, 6, dtype=torch.float64)
        optimizer = ROW_SPARSE[name]([conv.weight, conv.bias], row_sparse)
        for slices in AXIS_SCHEDULE:
            mask = torch.zeros(5, dtype=torch.bool)
            mask[slices or []] = True
            bias_mask = mask if axis == 0 else torch.full((5,), bool(mask.any()))
            before = conv.weight.detach().clone(), conv.bias.detach().clone()
            optimizer.set_update_masks({conv.weight: AxisMask(mask, axis), conv.bias: bias_mask})
            optimizer.zero_grad(set_to_none=True)
            conv(inputs).square().mean().backward()
            if slices is None and row_sparse:
                conv.weight.grad = conv.bias.grad = None  # the engine switches a frozen conv off
            optimizer.step()
            frozen, updated = (~mask).nonzero().flatten(), mask.nonzero().flatten()
            assert torch.equal(conv.weight.index_select(axis, frozen), before[0].index_select(axis, frozen))
            assert torch.equal(conv.bias[~bias_mask], before[1][~bias_mask])
            if slices:
                assert not torch.equal(conv.weight.index_select(axis, updated), before[0].index_select(axis, updated))
        runs.append((conv, optimizer))
    (ours, mine), (theirs, reference) = runs
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    for param, other in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
        assert mine.state[param].keys() == reference.state[other].keys()
        for key, value in reference.state[other].items():
            assert torch.equal(mine.state[param][key], value) if isinstance(value, torch.Tensor) else mine.state[param][key] == value, key


def test_row_sparse_column_steps_read_only_the_updated_columns() -> None:
    torch.manual_seed(0)
    conv, inputs = nn.Conv2d(4, 6, 3), torch.randn(2, 4, 6, 6)
    optimizer = MaskedAdam([conv.weight], lr=0.01, weight_decay=0.1, row_sparse=True)
    mask = torch.tensor([False, True, False, True])
    optimizer.set_update_masks({conv.weight: AxisMask(mask, 1)})
    step(conv, optimizer, inputs)
    assert optimizer._row_axis(conv.weight) == 1 and optimizer._rows_step(conv.weight).tolist() == [1, 3]  # type: ignore[union-attr]
    conv.weight.grad[:, ~mask] = float("nan")  # type: ignore[index]  # columns it must never read
    weight = conv.weight.detach().clone()
    optimizer.step()
    assert torch.equal(conv.weight[:, ~mask], weight[:, ~mask])
    assert not torch.equal(conv.weight[:, mask], weight[:, mask])
    state = optimizer.state[conv.weight]
    assert all(bool(torch.isfinite(t).all()) for t in (conv.weight, state["exp_avg"], state["exp_avg_sq"]))


@pytest.mark.parametrize("name", list(ROW_SPARSE))
def test_element_masks_freeze_blocks_and_take_the_masked_step(name: str) -> None:
    # e.g. the input channels of a grouped conv: blocks W[group rows, column] of the weight
    runs = []
    for row_sparse in (True, False):
        torch.manual_seed(0)
        conv, inputs = nn.Conv2d(4, 6, 3, groups=2).double(), torch.randn(2, 4, 6, 6, dtype=torch.float64)
        optimizer = ROW_SPARSE[name]([conv.weight], row_sparse)
        for updated in ([[0, 1], [1, 0]], [[0, 0], [1, 1]], [[1, 0], [0, 0]]):  # per group, per column of the group
            mask = torch.tensor(updated, dtype=torch.bool).repeat_interleave(3, dim=0).view(6, 2, 1, 1)
            frozen = ~mask.expand_as(conv.weight)
            before = conv.weight.detach().clone()
            optimizer.set_update_masks({conv.weight: mask})
            assert optimizer._rows_step(conv.weight) is None  # type: ignore[attr-defined]
            step(conv, optimizer, inputs.double())
            assert torch.equal(conv.weight[frozen], before[frozen]) and not torch.equal(conv.weight[~frozen], before[~frozen])
        runs.append(conv.weight.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_axis_and_element_masks_that_do_not_fit_are_refused() -> None:
    conv, _ = conv_and_data()  # weight 6 x 3 x 3 x 3
    optimizer = MaskedSGD([conv.weight], lr=0.1)
    for mask in (
        AxisMask(torch.ones(6, dtype=torch.bool), 1),
        AxisMask(torch.ones(3, dtype=torch.bool), 4),
        torch.ones(6, 2, 1, 1, dtype=torch.bool),
        torch.ones(6, 3, dtype=torch.bool),
    ):
        with pytest.raises(ValueError, match="does not fit"):
            optimizer.set_update_masks({conv.weight: mask})
    with pytest.raises(ValueError, match="bool"):
        optimizer.set_update_masks({conv.weight: AxisMask(torch.ones(3), 1)})
