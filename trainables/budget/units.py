"""Neurons of a network and what they cost: parameters and backward FLOPs.

A *neuron* is one output channel of an ``nn.Conv2d``: the slice ``weight[c]``
plus ``bias[c]`` when the conv has a bias. Everything in neqtune that talks
about neurons (policies, masks, the optimizer, the logs) keys them by the
conv's qualified module name, in ``model.named_modules()`` order, which for
the supported models is also the order of the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Masks = dict[str, torch.Tensor]
"""Per conv (qualified name), a bool tensor over output channels; True = updated."""

Unit = Literal["neuron", "input_channel"]
"""What a mask selects: ``"neuron"``, a conv's output channels (weight rows
``W[o]``, ``out_channels`` long), or ``"input_channel"``, its input channels
(weight columns ``W[:, c]``, ``in_channels`` long)."""
UNITS: tuple[Unit, ...] = ("neuron", "input_channel")

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
"""The normalisation layers: never units, trained beside the budget as ``budget.bn_update`` says."""


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every ``nn.Conv2d`` of ``model`` keyed by qualified name, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


# --- what the policies ask of a budgeted layer ---------------------------------------------------------------------
# The policies reach the layers through the four functions below, never through a layer type: a new layer kind
# (nn.Linear: a neuron is a row of W, an input channel a column) extends these, the cost model and the engine, and
# leaves every policy as it is.


def budgeted_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The layers whose weights hold the budget's units, keyed by qualified name in module order (today every conv)."""
    return conv_layers(model)


def neuron_outputs(output: torch.Tensor) -> torch.Tensor:
    """A budgeted layer's output as ``[batch, neurons, positions]``: what the velocity compares neuron by neuron.

    A conv's output ``[B, C, H, W]`` becomes ``[B, C, H * W]``.
    """
    return output.flatten(2)


def frozen_weight_elements(layer: nn.Conv2d, mask: torch.Tensor, unit: Unit) -> torch.Tensor:
    """A bool tensor shaped like ``layer.weight``: True where the element belongs to a unit out of ``mask``."""
    out_channels, in_per_group = layer.weight.shape[:2]
    if unit == "neuron":
        return (~mask).view(-1, *([1] * (layer.weight.dim() - 1))).expand_as(layer.weight)
    out_per_group = out_channels // layer.groups
    group = torch.arange(out_channels) // out_per_group
    channel = group.view(-1, 1) * in_per_group + torch.arange(in_per_group).view(1, -1)  # the input channel of (o, j)
    return (~mask[channel]).view(out_channels, in_per_group, *([1] * (layer.weight.dim() - 2))).expand_as(layer.weight)


def frozen_bias_elements(layer: nn.Conv2d, mask: torch.Tensor, unit: Unit) -> torch.Tensor:
    """A bool tensor shaped like ``layer.bias``: the bias of a neuron out of the mask is frozen; under input channels
    the bias trains while any of the layer's channels does (its gradient does not depend on which)."""
    assert layer.bias is not None
    if unit == "neuron":
        return ~mask
    return torch.full(layer.bias.shape, not bool(mask.any()), dtype=torch.bool)


def neuron_param_count(conv: nn.Conv2d) -> int:
    """Parameters of one output neuron of ``conv``: ``in/groups * kh * kw`` (+1 with a bias).

    The reference code forgot ``/ groups``, which inflates depthwise neurons by
    a factor of ``in_channels``; neqtune counts what is actually stored.
    """
    kh, kw = conv.kernel_size
    count = conv.in_channels // conv.groups * kh * kw
    return count + 1 if conv.bias is not None else count


def conv_neuron_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter count of every conv neuron of ``model``.

    Returns:
        For every ``nn.Conv2d``, keyed by its qualified module name, a
        ``torch.long`` tensor of length ``out_channels`` holding the number of
        parameters of each output neuron.
    """
    return {name: torch.full((conv.out_channels,), neuron_param_count(conv), dtype=torch.long) for name, conv in conv_layers(model).items()}


def total_params(neuron_params: dict[str, torch.Tensor]) -> int:
    """Sum of the parameters of all neurons (``P`` in the spec)."""
    return int(sum(int(p.sum()) for p in neuron_params.values()))


@dataclass(frozen=True)
class MaskStats:
    """What a set of update masks costs and saves (the per-epoch log fields).

    Attributes:
        neurons_total: number of conv neurons in the network.
        neurons_updated: neurons whose mask is True.
        params_updated: conv parameters that receive an update (count).
        frozen_pct: share of frozen neurons over the whole network, in percent.
        layer_frozen_pct: per conv (module order), share of its neurons frozen, in percent.
        flops_saved: weight-gradient FLOPs per input image that freezing saves.
        flops_saved_pct: ``flops_saved`` over the weight-gradient FLOPs of a
            full update, in percent.
        layer_flops_saved: per conv, the weight-gradient FLOPs per image saved.
    """

    neurons_total: int
    neurons_updated: int
    params_updated: int
    frozen_pct: float
    layer_frozen_pct: list[float]
    flops_saved: float
    flops_saved_pct: float
    layer_flops_saved: list[float]


def conv_flops(conv: nn.Conv2d, output_hw: tuple[int, int]) -> int:
    """Forward FLOPs of ``conv`` for one input image whose output is ``output_hw``.

    ``kh*kw*(C_in/groups)*C_out*H_out*W_out`` multiply-accumulates, plus
    ``C_out*H_out*W_out`` for the bias. Computing the weight gradient costs
    the same, and each output neuron owns ``1/C_out`` of it.
    """
    kh, kw = conv.kernel_size
    positions = conv.out_channels * output_hw[0] * output_hw[1]
    flops = kh * kw * (conv.in_channels // conv.groups) * positions
    return flops + positions if conv.bias is not None else flops


@torch.no_grad()
def conv_output_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Spatial output size of every conv for one forward pass of ``example``."""
    sizes: dict[str, tuple[int, int]] = {}
    handles = []
    for name, conv in conv_layers(model).items():

        def record(_m: nn.Module, _i: object, out: torch.Tensor, name: str = name) -> None:
            sizes[name] = (int(out.shape[-2]), int(out.shape[-1]))

        handles.append(conv.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return sizes


def layer_flops(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """FLOPs per image of every conv of ``model`` at the size of ``example``."""
    sizes = conv_output_sizes(model, example)
    return {name: conv_flops(conv, sizes[name]) for name, conv in conv_layers(model).items()}


def mask_stats(masks: Masks, neuron_params: dict[str, torch.Tensor], flops: dict[str, int]) -> MaskStats:
    """Count what ``masks`` update and the backward FLOPs they save.

    Args:
        masks: per conv, bool over output channels (True = updated).
        neuron_params: from :func:`conv_neuron_params`.
        flops: per conv, forward FLOPs per image (:func:`layer_flops`).
    """
    neurons_total = neurons_updated = params_updated = 0
    layer_frozen: list[float] = []
    layer_saved: list[float] = []
    for name, params in neuron_params.items():
        mask = masks[name]
        n_out = mask.numel()
        n_updated = int(mask.sum())
        neurons_total += n_out
        neurons_updated += n_updated
        params_updated += int(params[mask].sum())
        layer_frozen.append(100.0 * (n_out - n_updated) / n_out)
        layer_saved.append(flops[name] * (n_out - n_updated) / n_out)
    full_flops = float(sum(flops[name] for name in neuron_params))
    saved = float(sum(layer_saved))
    return MaskStats(
        neurons_total=neurons_total,
        neurons_updated=neurons_updated,
        params_updated=params_updated,
        frozen_pct=100.0 * (neurons_total - neurons_updated) / max(neurons_total, 1),
        layer_frozen_pct=layer_frozen,
        flops_saved=saved,
        flops_saved_pct=100.0 * saved / full_flops if full_flops else 0.0,
        layer_flops_saved=layer_saved,
    )


def unit_norms(tensor: torch.Tensor, conv: nn.Conv2d, unit: Unit) -> torch.Tensor:  # also asked by the policies
    """L2 norm of every unit's slice of a weight-shaped ``tensor`` (a weight or its gradient): ``[c]`` per neuron, ``[:, c]`` per input channel.

    Computed in float64 on the tensor's device.
    """
    values = tensor.detach().double()
    if unit == "neuron":
        norms: torch.Tensor = values.reshape(conv.out_channels, -1).norm(dim=1)
        return norms
    per_group = values.reshape(conv.groups, conv.out_channels // conv.groups, conv.in_channels // conv.groups, -1)
    return per_group.pow(2).sum(dim=(1, 3)).sqrt().reshape(-1)


def channel_norms(conv: nn.Conv2d, unit: Unit) -> torch.Tensor:
    """L2 norm of every unit's weight slice: ``W[c]`` per neuron, ``W[:, c]`` per input channel (float64, CPU)."""
    return unit_norms(conv.weight.detach().cpu(), conv, unit)
