"""The sparse-update engine: frozen neurons cost no backward compute.

The study's code runs a full backward pass and zeroes the gradients of frozen
neurons afterwards, so a 9% budget costs as much as a full update. The engine
makes the budget real, conv by conv, from the current masks:

- no neuron updated: the conv's parameters stop requiring gradients, so
  autograd computes no weight gradient for it (input gradients still flow
  where something below needs them);
- some neurons updated: a custom autograd function computes the input
  gradient as usual but the weight gradient only for the updated output
  channels (``grad_output`` restricted to them; depthwise and grouped convs
  see only the inputs of their own group); from half the neurons updated on
  (:data:`DENSE_FRACTION`) one library call computes the whole weight
  gradient and the frozen rows are zeroed, which measured faster;
- every neuron updated: the ordinary conv.

A second unit of selection (``unit="input_channel"``, TraDy / MeDyate) picks
input channels c of a conv, the weight columns ``W[:, c]``. The weight
gradient of column c needs only channel c of the conv's input, so a partly
updated conv keeps only its selected input channels for backward (a copy;
the full input can be freed unless something else holds it) and computes
the weight gradient of those columns only; its input gradient is the usual
one. A depthwise conv's input channel c is its filter ``W[c]``, so it takes
the row-wise path for those channels. Grouped convs with several input
channels per group (none in the shipped models) fall back to the whole
weight gradient with the unselected columns zeroed, and keep their whole input.

Linear layers (every ``nn.Linear`` but the classifier) are budgeted the
same way, as a 1x1 conv over their tokens: a frozen Linear keeps only its
weight and computes its input gradient; a partly updated one computes the
weight gradient of its selected rows (neurons, from its whole input) or of
its selected columns (input channels, keeping only those features of its
input, a copy). A Linear's weight is found wherever ``F.linear`` is called
on it, not only in its module's ``forward`` (torchvision's Swin attention
calls ``qkv`` and ``proj`` inside a function): while the engine is
installed, the model's ``forward`` runs under
:class:`~neqtune.trainables.budget.units.LinearCalls`. Models without a
budgeted Linear (the study's CNNs) are not wrapped.

With ``bn_update="selected"`` the normalisation layers (BatchNorm,
GroupNorm, LayerNorm) after a budgeted layer in module order train only
when that layer holds updated neurons (input channels), so backward stops
below the lowest such layer. Masks change by flipping flags and index
tensors; the model and the optimizer state are never rebuilt. The optimizer
pairs with the engine through ``row_sparse=True`` (:mod:`neqtune.trainables.update.optim`):
it steps only the updated rows (columns) of a partly updated conv, with the
per-parameter masks of :func:`parameter_masks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from neqtune.trainables.budget.units import (
    NORM_TYPES,
    UNITS,
    Layer,
    LinearCalls,
    LinearFn,
    Masks,
    Unit,
    budgeted_layers,
    layer_shape,
    unit_length,
)
from neqtune.trainables.update.optim import AxisMask, UpdateMask
from neqtune.trainables.update.precision import autocast_dtype

BnUpdate = Literal["all", "selected"]


def _convolution_backward(
    grad: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, conf: tuple[Any, ...], groups: int, mask: list[bool]
) -> Any:
    stride, padding, dilation = conf
    return torch.ops.aten.convolution_backward(grad, inputs, weight, None, stride, padding, dilation, False, [0, 0], groups, mask)


def _group_input_channels(selected: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Input channels that the ``selected`` output channels of a grouped conv read, group by group."""
    out_per_group = weight.shape[0] // groups
    in_per_group = weight.shape[1]
    first_input = (selected // out_per_group) * in_per_group
    return (first_input.unsqueeze(1) + torch.arange(in_per_group, device=selected.device)).flatten()


def _autocast_operands(
    ctx: Any, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The conv's operands in autocast's dtype (as autocast's own conv2d would cast them), their dtypes kept on ``ctx``.

    Backward then computes in that dtype from what forward saved (low-precision
    inputs hold half the memory), and :func:`_in_dtypes` hands the gradients
    back in the dtypes of the operands as given: float32 for the weights.
    """
    ctx.dtypes = (inputs.dtype, weight.dtype)
    dtype = autocast_dtype(inputs.device.type)
    if dtype is None:
        return inputs, weight, bias
    return inputs.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _in_dtypes(backward: Callable[..., tuple[torch.Tensor | None, ...]]) -> Callable[..., tuple[torch.Tensor | None, ...]]:
    """Wrap a conv Function's backward so its input, weight and bias gradients come back in their operands' dtypes."""

    def wrapped(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = list(backward(ctx, grad_out))
        input_dtype, param_dtype = ctx.dtypes
        for i, dtype in enumerate((input_dtype, param_dtype, param_dtype)):
            grad = grads[i]
            if grad is not None:
                grads[i] = grad.to(dtype)
        return tuple(grads)

    return wrapped


DENSE_FRACTION = 0.5
"""From this share of updated neurons on, a conv computes its whole weight gradient and zeroes the frozen rows.

Measured on one thread (128 px, batch 32): with most rows selected, the one
library call over the whole weight beats picking rows out of the input and
the output gradient (mbv2 depthwise 3x3, 138 of 144 channels: 5.8 against
8.0 ms plus a copy of the input in forward; 1x1 conv, 125 of 144 rows: 3.5
against 4.6 ms); with few rows the row-wise path wins (30 of 144 depthwise
channels: 1.7 ms; 16 of 96 1x1 rows: 1.9 against 25.8 ms).
"""


@dataclass(frozen=True)
class RowPlan:
    """How a partly updated conv computes its weight gradient.

    Attributes:
        selected: indices of the updated output channels (sorted).
        frozen: bool tensor shaped to broadcast over the weight, True for frozen rows.
        dense: compute the whole weight gradient and zero the frozen rows
            (many rows selected), instead of the selected rows only.
        group_inputs: for a grouped conv, the input channels the selected
            rows read (:func:`_group_input_channels`); None for an ungrouped conv.
    """

    selected: torch.Tensor
    frozen: torch.Tensor
    dense: bool
    group_inputs: torch.Tensor | None = None


def row_plan(mask: torch.Tensor, weight: torch.Tensor, groups: int = 1, *, keep_selected_inputs: bool = False) -> RowPlan:
    """The :class:`RowPlan` of a conv whose update mask is ``mask`` (some, not all, rows True).

    ``keep_selected_inputs``: a grouped conv never takes the dense path, which
    keeps its whole input; it keeps only the input channels its selected rows
    read, whatever their share (memory budgets price exactly that).
    """
    mask = mask.to(weight.device)
    frozen = (~mask).view(-1, *([1] * (weight.dim() - 1)))
    selected = mask.nonzero().flatten()
    group_inputs = _group_input_channels(selected, weight, groups) if groups > 1 else None
    dense = int(mask.sum()) >= DENSE_FRACTION * mask.numel() and not (keep_selected_inputs and groups > 1)
    return RowPlan(selected, frozen, dense, group_inputs)


class _RowSparseConv(torch.autograd.Function):
    """conv2d whose weight (and bias) gradient is computed for the updated output channels only.

    With few rows updated (``plan.dense`` False) backward restricts the output
    gradient to them, and a grouped (depthwise) conv keeps only the input
    channels its selected neurons read, so the memory it holds shrinks with
    the mask. With many rows updated it computes the whole weight gradient
    in one call and zeroes the frozen rows (the cheaper of the two, measured).
    """

    @staticmethod
    def forward(
        ctx: Any,
        inputs: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        plan: RowPlan,
        conf: tuple[Any, ...],
        groups: int,
    ) -> torch.Tensor:
        # ``plan`` travels as an attribute: it is a constant of the mask, not an activation.
        ctx.plan, ctx.conf, ctx.groups, ctx.has_bias = plan, conf, groups, bias is not None
        ctx.input_shape = inputs.shape
        needs_weight_grad = weight.requires_grad
        inputs, weight, bias = _autocast_operands(ctx, inputs, weight, bias)
        kept = inputs
        if needs_weight_grad and plan.group_inputs is not None and not plan.dense:
            kept = inputs.index_select(1, plan.group_inputs)
        ctx.save_for_backward(kept if needs_weight_grad else None, weight)
        stride, padding, dilation = conf
        return F.conv2d(inputs, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @_in_dtypes
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        kept, weight = ctx.saved_tensors
        groups, plan = ctx.groups, ctx.plan
        if ctx.needs_input_grad[1] and plan.dense:
            return _dense_backward(ctx, grad_out, kept, weight, plan.frozen, plan.frozen.view(-1))
        grad_in = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_in = _input_gradient(grad_out, ctx.input_shape, weight, ctx.conf, groups)
        if ctx.needs_input_grad[1]:
            selected = plan.selected
            grad_rows = grad_out.index_select(1, selected)
            rows_shape = (selected.numel(), *weight.shape[1:])
            if _is_pointwise(weight, groups, ctx.conf):
                rows = _pointwise_weight_rows(grad_rows, kept, ctx.conf[0]).view(rows_shape)
            else:  # the library reads only the shape of the weight it is given for a weight gradient
                weight_rows = weight.new_empty(rows_shape)
                if groups > 1:
                    rows = _grouped_weight_rows(grad_rows, kept, weight_rows, ctx.conf)
                else:
                    rows = _convolution_backward(grad_rows, kept, weight_rows, ctx.conf, 1, [False, True, False])[1]
            grad_weight = weight.new_zeros(weight.shape).index_copy_(0, selected, rows)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_bias = grad_out.new_zeros(weight.shape[0])
                grad_bias.index_copy_(0, selected, grad_rows.sum(dim=(0, 2, 3)))
        return grad_in, grad_weight, grad_bias, None, None, None


def _dense_backward(
    ctx: Any,
    grad_out: torch.Tensor,
    inputs: torch.Tensor,
    weight: torch.Tensor,
    frozen_weight: torch.Tensor,
    frozen_bias: torch.Tensor | None,
) -> tuple[torch.Tensor | None, ...]:
    """Input and whole weight (and bias) gradients in one library call, frozen entries zeroed.

    ``frozen_weight`` broadcasts over the weight (rows, or blocks of a
    grouped conv's columns); ``frozen_bias`` is None where the whole bias trains.
    """
    stride, padding, dilation = ctx.conf
    wants_bias = ctx.has_bias and ctx.needs_input_grad[2]
    grad_in, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_out,
        inputs,
        weight,
        [weight.shape[0]] if wants_bias else None,
        stride,
        padding,
        dilation,
        False,
        [0, 0],
        ctx.groups,
        [ctx.needs_input_grad[0], True, wants_bias],
    )
    grad_weight.masked_fill_(frozen_weight, 0.0)
    if wants_bias and frozen_bias is not None:
        grad_bias.masked_fill_(frozen_bias, 0.0)
    return grad_in, grad_weight, grad_bias, None, None, None


def _is_pointwise(weight: torch.Tensor, groups: int, conf: tuple[Any, ...]) -> bool:
    """A dense 1x1 conv without padding: its weight gradient is a plain matrix product."""
    stride, padding, _dilation = conf
    return groups == 1 and weight.shape[2:] == (1, 1) and tuple(padding) == (0, 0) and len(tuple(stride)) == 2


def _pointwise_weight_rows(grad_rows: torch.Tensor, inputs: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Weight gradient of a few output rows of a 1x1 conv: ``sum_n grad[n] @ input[n]^T``.

    For a handful of rows a batched matrix product was faster than oneDNN's
    weight gradient in a micro-benchmark (0.43 against 0.73 ms for 14 of
    144 rows over a 24-channel 32x32 input, batch 32, one thread).
    """
    if tuple(stride) != (1, 1):
        inputs = inputs[:, :, :: stride[0], :: stride[1]]
    return torch.bmm(grad_rows.flatten(2), inputs.flatten(2).transpose(1, 2)).sum(0)


def _grouped_weight_rows(grad_rows: torch.Tensor, inputs: torch.Tensor, weight_rows: torch.Tensor, conf: tuple[Any, ...]) -> torch.Tensor:
    """Weight gradient of a few output channels of a grouped (depthwise) conv.

    Each selected channel reads only its group's inputs (``inputs`` holds
    them, group after group; under the input-channel unit, the selected
    input channels of a depthwise conv, each feeding its rows), so the
    channels form a grouped conv of their own. Folding the batch into the channels (one group per sample and
    channel, summed over the batch afterwards) gives oneDNN enough channels
    to fill its vector lanes: depthwise 3x3, 4 of 32 channels at 64x64, batch
    32, one thread: 0.23 against 0.83 ms for the same groups unfolded. (For
    most or all channels of a layer the fold did not pay inside a real step,
    where the library's one call for input and weight gradient was as fast.)
    """
    batch, rows = grad_rows.shape[:2]
    groups = inputs.shape[1] // weight_rows.shape[1]  # per sample: one per row, or per input channel (depth multiplier)
    folded_weight = weight_rows.new_empty((batch * rows, *weight_rows.shape[1:]))
    folded: torch.Tensor = _convolution_backward(
        grad_rows.reshape(1, batch * rows, *grad_rows.shape[2:]),
        inputs.reshape(1, -1, *inputs.shape[2:]),
        folded_weight,
        conf,
        batch * groups,
        [False, True, False],
    )[1]
    return folded.view(batch, *weight_rows.shape).sum(0)


def _input_gradient(grad_out: torch.Tensor, input_shape: torch.Size, weight: torch.Tensor, conf: tuple[Any, ...], groups: int) -> torch.Tensor:
    """Gradient of a conv's input; only the input's shape is needed, not its values.

    The placeholder is uninitialised memory rather than a stride-0 expansion
    (as ``torch.nn.grad.conv2d_input`` uses): oneDNN would copy an expanded
    tensor into a full contiguous one first (about 4% of an mbv2 step, profiled).
    """
    shape_only = grad_out.new_empty(input_shape)
    grad_in: torch.Tensor = _convolution_backward(grad_out, shape_only, weight, conf, groups, [True, False, False])[0]
    return grad_in


def input_channel_index(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """For every ``(o, j)`` of a conv weight ``W[C_out, C_in/groups, kh, kw]``, the input channel it reads.

    Returns:
        A ``torch.long`` tensor of shape ``(C_out, C_in/groups)``: ``j`` for an
        ungrouped conv, ``(o // (C_out/groups)) * (C_in/groups) + j`` in general.
    """
    out_channels, in_per_group = weight.shape[:2]
    group = torch.arange(out_channels, device=weight.device) // (out_channels // groups)
    return group.unsqueeze(1) * in_per_group + torch.arange(in_per_group, device=weight.device)


@dataclass(frozen=True)
class ColumnPlan:
    """How a partly updated conv computes its weight gradient under the input-channel unit.

    Attributes:
        selected: indices of the selected input channels (sorted); backward
            keeps only these channels of the input, except for ``frozen``.
        rows: for a conv with one input channel per group (depthwise), the
            weight rows those channels feed (their filters); None otherwise.
        frozen: for a grouped conv with several input channels per group,
            True for the frozen entries of the weight, shaped
            ``(C_out, C_in/groups, 1, 1)``: it keeps its whole input and
            computes the whole weight gradient, then zeroes those (a fallback
            for convs the shipped models do not have); None otherwise.
    """

    selected: torch.Tensor
    rows: torch.Tensor | None = None
    frozen: torch.Tensor | None = None


def column_plan(mask: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> ColumnPlan:
    """The :class:`ColumnPlan` of a conv whose input-channel mask is ``mask`` (some, not all, True)."""
    mask = mask.to(weight.device)
    selected = mask.nonzero().flatten()
    if groups == 1:
        return ColumnPlan(selected)
    if weight.shape[1] == 1:
        return ColumnPlan(selected, rows=_depthwise_rows(mask, weight).nonzero().flatten())
    return ColumnPlan(selected, frozen=~mask[input_channel_index(weight, groups)].view(*weight.shape[:2], 1, 1))


def _depthwise_rows(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weight-row mask of a depthwise conv's input-channel ``mask`` (each input channel feeds C_out/C_in rows)."""
    return mask.repeat_interleave(weight.shape[0] // mask.numel())


class _ColumnSparseConv(torch.autograd.Function):
    """conv2d whose weight gradient is computed for the selected input channels (columns) only.

    Forward saves only the selected channels of the input (a copy) and the
    weight; backward computes the input gradient as usual and the weight
    gradient of the selected columns, scattered into zeros. A depthwise conv
    computes it for the filters of the selected channels (row-wise, batch
    folded into the groups). A conv bias trains whenever its conv has a
    selected input channel: its gradient is the whole ``grad_out.sum((0, 2, 3))``.
    Grouped convs with several input channels per group take the fallback
    of :class:`ColumnPlan` (whole input kept).
    """

    @staticmethod
    def forward(
        ctx: Any,
        inputs: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        plan: ColumnPlan,
        conf: tuple[Any, ...],
        groups: int,
    ) -> torch.Tensor:
        ctx.plan, ctx.conf, ctx.groups, ctx.has_bias = plan, conf, groups, bias is not None
        ctx.input_shape = inputs.shape
        kept = None
        needs_weight_grad = weight.requires_grad
        inputs, weight, bias = _autocast_operands(ctx, inputs, weight, bias)
        if needs_weight_grad:
            kept = inputs if plan.frozen is not None else inputs.index_select(1, plan.selected)
        ctx.save_for_backward(kept, weight)
        stride, padding, dilation = conf
        return F.conv2d(inputs, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @_in_dtypes
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        kept, weight = ctx.saved_tensors
        plan: ColumnPlan = ctx.plan
        if ctx.needs_input_grad[1] and plan.frozen is not None:
            return _dense_backward(ctx, grad_out, kept, weight, plan.frozen, None)
        grad_in = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_in = _input_gradient(grad_out, ctx.input_shape, weight, ctx.conf, ctx.groups)
        if ctx.needs_input_grad[1]:
            grad_weight = weight.new_zeros(weight.shape)
            if plan.rows is not None:
                grad_rows = grad_out.index_select(1, plan.rows)
                rows = _grouped_weight_rows(grad_rows, kept, weight.new_empty((plan.rows.numel(), *weight.shape[1:])), ctx.conf)
                grad_weight.index_copy_(0, plan.rows, rows)
            else:
                grad_weight.index_copy_(1, plan.selected, _weight_columns(grad_out, kept, weight, ctx.conf))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(dim=(0, 2, 3))
        return grad_in, grad_weight, grad_bias, None, None, None


def _weight_columns(grad_out: torch.Tensor, kept: torch.Tensor, weight: torch.Tensor, conf: tuple[Any, ...]) -> torch.Tensor:
    """Weight gradient ``(C_out, k, kh, kw)`` of an ungrouped conv's columns, from the ``k`` kept input channels."""
    columns_shape = (weight.shape[0], kept.shape[1], *weight.shape[2:])
    if _is_pointwise(weight, 1, conf):
        return _pointwise_weight_rows(grad_out, kept, conf[0]).view(columns_shape)
    # the library reads only the shape of the weight it is given for a weight gradient
    columns: torch.Tensor = _convolution_backward(grad_out, kept, weight.new_empty(columns_shape), conf, 1, [False, True, False])[1]
    return columns


class _FrozenConv(torch.autograd.Function):
    """conv2d with a frozen weight: backward computes the input gradient only.

    Autograd's own conv keeps its input alive for backward even when the
    weight needs no gradient; this keeps the weight only, so a frozen conv
    holds no activation.
    """

    @staticmethod
    def forward(
        ctx: Any, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conf: tuple[Any, ...], groups: int
    ) -> torch.Tensor:
        ctx.conf, ctx.groups, ctx.input_shape = conf, groups, inputs.shape
        inputs, weight, bias = _autocast_operands(ctx, inputs, weight, bias)
        ctx.save_for_backward(weight)
        stride, padding, dilation = conf
        return F.conv2d(inputs, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @_in_dtypes
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (weight,) = ctx.saved_tensors
        return _input_gradient(grad_out, ctx.input_shape, weight, ctx.conf, ctx.groups), None, None, None, None


_LIBRARY_LINEAR = torch._C._nn.linear
"""The library's linear: what the Linear Functions compute with (``F.linear`` is a :class:`LinearCalls` dispatcher while a forward runs)."""


def _linear_input_gradient(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return grad_out.matmul(weight)


class _FrozenLinear(torch.autograd.Function):
    """``F.linear`` with a frozen weight: backward computes the input gradient only and keeps no input."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        inputs, weight, bias = _autocast_operands(ctx, inputs, weight, bias)
        ctx.save_for_backward(weight)
        return _LIBRARY_LINEAR(inputs, weight, bias)

    @staticmethod
    @_in_dtypes
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (weight,) = ctx.saved_tensors
        grad_in = _linear_input_gradient(grad_out, weight) if ctx.needs_input_grad[0] else None
        return grad_in, None, None


class _RowSparseLinear(torch.autograd.Function):
    """``F.linear`` whose weight (and bias) gradient is computed for the selected output features (rows) only.

    A row's gradient reads every input feature, so the whole input is kept.
    """

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, selected: torch.Tensor) -> torch.Tensor:
        ctx.selected, ctx.has_bias = selected, bias is not None
        needs_weight_grad = weight.requires_grad
        inputs, weight, bias = _autocast_operands(ctx, inputs, weight, bias)
        ctx.save_for_backward(inputs if needs_weight_grad else None, weight)
        return _LIBRARY_LINEAR(inputs, weight, bias)

    @staticmethod
    @_in_dtypes
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inputs, weight = ctx.saved_tensors
        grad_in = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_in = _linear_input_gradient(grad_out, weight)
        grad_rows = grad_out.reshape(-1, weight.shape[0]).index_select(1, ctx.selected)
        if ctx.needs_input_grad[1]:
            rows = grad_rows.t().matmul(inputs.reshape(-1, weight.shape[1]))
            grad_weight = weight.new_zeros(weight.shape).index_copy_(0, ctx.selected, rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.new_zeros(weight.shape[0]).index_copy_(0, ctx.selected, grad_rows.sum(0))
        return grad_in, grad_weight, grad_bias, None


class _ColumnSparseLinear(torch.autograd.Function):
    """``F.linear`` whose weight gradient is computed for the selected input features (columns) only.

    Forward keeps only those features of the input (a copy, so the whole
    input can be freed); the bias, whose gradient does not depend on the
    columns, trains whole, as a conv's does under input channels.
    """

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, selected: torch.Tensor) -> torch.Tensor:
        ctx.selected, ctx.has_bias = selected, bias is not None
        needs_weight_grad = weight.requires_grad
        inputs, weight, bias = _autocast_operands(ctx, inputs, weight, bias)
        ctx.save_for_backward(inputs.index_select(-1, selected) if needs_weight_grad else None, weight)
        return _LIBRARY_LINEAR(inputs, weight, bias)

    @staticmethod
    @_in_dtypes
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        kept, weight = ctx.saved_tensors
        grad_in = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_in = _linear_input_gradient(grad_out, weight)
        flat = grad_out.reshape(-1, weight.shape[0])
        if ctx.needs_input_grad[1]:
            columns = flat.t().matmul(kept.reshape(-1, kept.shape[-1]))
            grad_weight = weight.new_zeros(weight.shape).index_copy_(1, ctx.selected, columns)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat.sum(0)
        return grad_in, grad_weight, grad_bias, None


def norms_after_layers(model: nn.Module) -> dict[str, list[nn.Module]]:
    """For every budgeted layer, the normalisation layers that follow it in module order before the next budgeted layer."""
    layers = budgeted_layers(model)
    after: dict[str, list[nn.Module]] = {}
    current: str | None = None
    for name, module in model.named_modules():
        if name in layers:
            current = name
            after[name] = []
        elif isinstance(module, NORM_TYPES) and current is not None:
            after[current].append(module)
    return after


norms_after_convs = norms_after_layers


def parameter_masks(model: nn.Module | Mapping[str, Layer], masks: Masks, unit: Unit = "neuron") -> dict[torch.Tensor, UpdateMask]:
    """The optimizer's per-parameter update masks (:mod:`neqtune.trainables.update.optim`) of per-layer ``masks``.

    Args:
        model: the network, or its budgeted layers by qualified name (:func:`~neqtune.trainables.budget.units.budgeted_layers`).
        masks: per conv, a bool tensor over its output channels (``unit="neuron"``)
            or its input channels (``unit="input_channel"``); True = updated.
        unit: what the masks select.

    Returns:
        Per conv weight and bias. Neuron unit: the row mask for both.
        Input-channel unit: for the weight, an :class:`~neqtune.trainables.update.optim.AxisMask`
        over its columns (dim 1) for an ungrouped conv or a Linear, the rows of the
        selected channels' filters for a depthwise conv, an element mask
        ``(C_out, C_in/groups, 1, 1)`` for other grouped convs; for the bias,
        all True when the conv has any selected input channel, else all False.
    """
    convs = budgeted_layers(model) if isinstance(model, nn.Module) else model
    per_param: dict[torch.Tensor, UpdateMask] = {}
    for name, conv in convs.items():
        groups = layer_shape(conv)[2]
        mask = masks[name]
        _check_mask(name, conv, mask, unit)
        if unit == "neuron":
            per_param[conv.weight] = mask
            if conv.bias is not None:
                per_param[conv.bias] = mask
            continue
        if groups == 1:
            per_param[conv.weight] = AxisMask(mask, 1)
        elif conv.weight.shape[1] == 1:
            per_param[conv.weight] = _depthwise_rows(mask, conv.weight)
        else:
            per_param[conv.weight] = mask[input_channel_index(conv.weight, groups).to(mask.device)].view(*conv.weight.shape[:2], 1, 1)
        if conv.bias is not None:
            per_param[conv.bias] = torch.full(conv.bias.shape, bool(mask.any()), device=mask.device)
    return per_param


def _check_mask(name: str, conv: Layer, mask: torch.Tensor, unit: Unit) -> None:
    """Raise ValueError naming the layer when ``mask`` is not a bool tensor of the unit's length."""
    length = unit_length(conv, unit)
    if mask.dtype != torch.bool or mask.shape != (length,):
        raise ValueError(
            f"mask of {'conv' if isinstance(conv, nn.Conv2d) else 'Linear'} {name!r}: a bool tensor of shape ({length},) expected under unit {unit!r}, "
            f"got {mask.dtype} of shape {tuple(mask.shape)}"
        )


class SparseUpdateEngine:
    """Installs sparse weight gradients (rows or input-channel columns) on every budgeted layer of ``model``.

    Args:
        model: the network; its convs and Linear layers (the classifier
            excepted) are found by ``named_modules()``.
        bn_update: ``"all"`` (the study: normalisation layers always train)
            or ``"selected"`` (only those after layers with something updated).
        sparse: False leaves every layer computing its full weight gradient
            (the study's mask-after-backward path); only ``bn_update`` applies,
            the optimizer's masks (:func:`parameter_masks`) do the rest.
        unit: what :meth:`set_masks` selects per layer: ``"neuron"`` (output
            channels or features) or ``"input_channel"`` (input channels or
            features; a bias then trains iff its layer has any selected input channel).
        keep_selected_inputs: under ``"neuron"``, partly updated grouped
            (depthwise) convs keep only the inputs of their selected rows even
            where the whole-input weight gradient would be faster: what a
            memory budget counts (:mod:`neqtune.trainables.budget.costs`).
    """

    def __init__(
        self, model: nn.Module, *, bn_update: BnUpdate = "all", sparse: bool = True, unit: Unit = "neuron", keep_selected_inputs: bool = False
    ) -> None:
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r}; known: {', '.join(UNITS)}")
        self.model = model
        self.bn_update = bn_update
        self.sparse = sparse
        self.unit = unit
        self.keep_selected_inputs = keep_selected_inputs
        self.convs = budgeted_layers(model)
        self.norms = norms_after_layers(model)
        # per layer: None = everything updated (ordinary layer), False = nothing
        # updated, else the plan of its updated output (input) channels
        self._selected: dict[str, RowPlan | ColumnPlan | bool | None] = dict.fromkeys(self.convs)
        for name, conv in self.convs.items():
            if sparse and isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
                conv.forward = self._make_forward(name, conv)  # type: ignore[method-assign,assignment]
        if sparse and any(isinstance(layer, nn.Linear) for layer in self.convs.values()):
            self._wrap_model_forward()

    def _wrap_model_forward(self) -> None:
        """Run the model's ``forward`` under :class:`LinearCalls`, which routes every Linear call to :meth:`_linear`."""
        calls = LinearCalls(self.convs, self._linear)
        unwrapped = self.model.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            with calls:
                return unwrapped(*args, **kwargs)

        self.model.forward = forward  # type: ignore[method-assign]

    def _linear(self, name: str, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, linear: LinearFn) -> torch.Tensor:
        selected = self._selected[name]
        if selected is None or not torch.is_grad_enabled():
            return linear(inputs, weight, bias)
        if selected is False:
            if not inputs.requires_grad:  # nothing below trains: autograd records nothing
                return linear(inputs, weight, bias)
            return _FrozenLinear.apply(inputs, weight, bias)  # type: ignore[no-any-return]
        assert isinstance(selected, (RowPlan, ColumnPlan))
        function = _ColumnSparseLinear if isinstance(selected, ColumnPlan) else _RowSparseLinear
        return function.apply(inputs, weight, bias, selected.selected)  # type: ignore[no-any-return]

    def _make_forward(self, name: str, conv: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
        conf = (conv.stride, conv.padding, conv.dilation)

        def forward(inputs: torch.Tensor) -> torch.Tensor:
            selected = self._selected[name]
            if selected is None or not torch.is_grad_enabled():
                return F.conv2d(inputs, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            if selected is False:
                if not inputs.requires_grad:  # nothing below trains: autograd records nothing
                    return F.conv2d(inputs, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
                return _FrozenConv.apply(inputs, conv.weight, conv.bias, conf, conv.groups)  # type: ignore[no-any-return]
            if isinstance(selected, ColumnPlan):
                return _ColumnSparseConv.apply(inputs, conv.weight, conv.bias, selected, conf, conv.groups)  # type: ignore[no-any-return]
            return _RowSparseConv.apply(inputs, conv.weight, conv.bias, selected, conf, conv.groups)  # type: ignore[no-any-return]

        return forward

    def set_masks(self, masks: Masks) -> None:
        """Switch every budgeted layer (and, with ``bn_update="selected"``, its norm layers) to ``masks``.

        Args:
            masks: per layer, a bool tensor over the engine's unit (output
                channels, or input channels); True = updated.

        Raises:
            ValueError: a mask is not a bool tensor of its conv's unit length.
        """
        for name, conv in self.convs.items():
            mask = masks[name]
            _check_mask(name, conv, mask, self.unit)
            n_updated = int(mask.sum())
            trainable = n_updated > 0
            if self.sparse:
                for param in conv.parameters():
                    param.requires_grad_(trainable)
                everything = n_updated == mask.numel()
                self._selected[name] = None if everything else self._plan(mask, conv) if trainable else False
            for norm in self.norms[name]:
                for param in norm.parameters():
                    param.requires_grad_(trainable or self.bn_update == "all")

    def _plan(self, mask: torch.Tensor, conv: Layer) -> RowPlan | ColumnPlan:
        groups = layer_shape(conv)[2]
        if self.unit == "neuron":
            return row_plan(mask, conv.weight, groups, keep_selected_inputs=self.keep_selected_inputs)
        return column_plan(mask, conv.weight, groups)

    def remove(self) -> None:
        """Restore the ordinary conv and model forward and make every parameter trainable again."""
        for conv in self.convs.values():
            if "forward" in vars(conv):
                del conv.forward
        if "forward" in vars(self.model):
            del self.model.forward
        for param in self.model.parameters():
            param.requires_grad_(True)
