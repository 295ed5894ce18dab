"""What a unit of selection costs: weight and activation elements, weight-gradient FLOPs.

The budgeted layers are every ``nn.Conv2d`` and every ``nn.Linear`` but the
classifier (:func:`~neqtune.trainables.budget.units.budgeted_layers`). A
Linear is priced as a 1x1 conv whose input plane is its tokens: ``N``, the
rows it multiplies per input image (after any padding the model does before
it, e.g. Swin's padding to whole windows). Two units can be selected under
a budget, and both are priced here in the same currency (elements per
input image):

- a *neuron* (``unit: neuron``, the study): one output channel ``c`` of a
  conv, the slice ``W[c]``. Its weight part is ``C_in/groups * kh * kw``
  elements. Its weight gradient reads the input channels of its group, so
  selecting any neuron of a dense conv keeps that conv's whole input for
  backward; a depthwise neuron keeps only its own input plane.
- an *input channel* (``unit: input_channel``, TraDy and MeDyate): the slice
  ``W[:, c]``. Its weight part is ``C_out * kh * kw`` elements
  (``C_out/groups * kh * kw`` in a grouped conv, ``kh * kw`` in a depthwise
  one, ``C_out`` in a Linear), and its weight gradient reads only channel
  ``c`` of the layer's input: ``H_in * W_in`` (a Linear: ``N``) activation elements.

A layer's bias is part of its weights: a neuron holds its own bias element;
under input channels the bias (``C_out`` elements, whose gradient does not
depend on which channels train) is paid once, by the first selected
channel of its layer, which is when the engine trains it. So the full
network costs all weights and biases plus all inputs, the total TraDy
prints for SwinT (31,889,952 at 128 px), and the study's CNNs, whose convs
have no bias, cost what they did.

A budget of memory counts, like TraDy, the weight elements updated plus the
layer-input activation elements kept for their weight gradients, per image
(one image: the published budgets reproduce only that way; a batch of ``B``
keeps ``B`` times the activations). Normalisation layers, the classifier,
activation gradients and optimizer state are outside it. The module is
pure: it prices masks, it never selects or applies them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neqtune.trainables.budget.units import Layer, Masks, Unit, budgeted_layers, layer_shape, layer_sizes

Fill = Literal["prefix", "skip"]
BudgetKind = Literal["params", "memory"]


@dataclass(frozen=True)
class UnitCosts:
    """Per unit of one layer, what selecting it costs (``torch.long`` tensors of one length).

    Attributes:
        weight: weight elements the unit holds (a neuron: its row and its
            bias element; an input channel: its column, the layer's bias
            being paid once, :meth:`LayerCosts.kept_bias`).
        activation: input activation elements (per image) its weight
            gradient needs on its own. Shared between the neurons of a
            group; see :meth:`LayerCosts.kept_activation`.
        wgrad_flops: multiply-accumulates of its weight gradient per image.
    """

    weight: torch.Tensor
    activation: torch.Tensor
    wgrad_flops: torch.Tensor


@dataclass(frozen=True)
class LayerCosts:
    """The costs of one budgeted layer (a conv, or a Linear as a 1x1 conv over its tokens) at one image size.

    ``weight`` and ``activation`` are over the layer's *input* channels (the
    TraDy unit); ``neuron`` holds the same prices over its output channels.

    Attributes:
        in_channels, out_channels, groups: the layer's shape (a Linear's
            features; groups 1).
        kernel: ``kh * kw`` (1 for a Linear).
        input_hw: spatial size of the conv's input, unpadded; a Linear's
            ``(N, 1)``, ``N`` the tokens it multiplies per image.
        output_hw: spatial size of its output (a Linear's ``(N, 1)``).
        input_channel: costs per input channel.
        neuron: costs per output channel.
        bias: elements of the layer's bias (0 without one).
    """

    in_channels: int
    out_channels: int
    groups: int
    kernel: int
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    input_channel: UnitCosts
    neuron: UnitCosts
    bias: int = 0

    @property
    def weight(self) -> torch.Tensor:
        """Weight elements of each input channel's slice."""
        return self.input_channel.weight

    @property
    def activation(self) -> torch.Tensor:
        """Input activation elements (per image) of each input channel."""
        return self.input_channel.activation

    @property
    def plane(self) -> int:
        """Elements of one input channel's plane, ``H_in * W_in``."""
        return self.input_hw[0] * self.input_hw[1]

    @property
    def total_weight(self) -> int:
        """All weight elements of the layer (no bias)."""
        return int(self.input_channel.weight.sum())

    @property
    def total_parameters(self) -> int:
        """All weight and bias elements of the layer."""
        return self.total_weight + self.bias

    def kept_bias(self, mask: torch.Tensor, unit: Unit) -> int:
        """Bias elements ``mask`` trains beyond its units' own weights: the whole bias, once, when an input channel is selected."""
        return self.bias if unit == "input_channel" and bool(mask.any()) else 0

    @property
    def total_activation(self) -> int:
        """All input activation elements of the conv, per image."""
        return self.in_channels * self.plane

    def units(self, unit: Unit) -> UnitCosts:
        """The costs over the channels of ``unit``."""
        return self.neuron if unit == "neuron" else self.input_channel

    def neuron_groups(self) -> torch.Tensor:
        """For every output channel, the group of input channels its weight gradient reads."""
        return torch.arange(self.out_channels) // (self.out_channels // self.groups)

    def kept_activation(self, mask: torch.Tensor, unit: Unit) -> int:
        """Input activation elements (per image) kept for the weight gradients of ``mask``.

        Input channels keep their own plane; neurons keep the whole input of
        every group they belong to, once.
        """
        if unit == "input_channel":
            return int(mask.sum()) * self.plane
        groups_touched = int(torch.unique(self.neuron_groups()[mask]).numel())
        return groups_touched * (self.in_channels // self.groups) * self.plane


def _layer_costs(layer: Layer, input_hw: tuple[int, int], output_hw: tuple[int, int]) -> LayerCosts:
    c_out, c_in, groups = layer_shape(layer)
    kernel = layer.weight[0, 0].numel()
    bias = 0 if layer.bias is None else layer.bias.numel()
    plane = input_hw[0] * input_hw[1]
    positions = output_hw[0] * output_hw[1]
    channel_weight = c_out // groups * kernel
    neuron_weight = c_in // groups * kernel

    def full(length: int, value: int) -> torch.Tensor:
        return torch.full((length,), value, dtype=torch.long)

    return LayerCosts(
        in_channels=c_in,
        out_channels=c_out,
        groups=groups,
        kernel=kernel,
        input_hw=input_hw,
        output_hw=output_hw,
        input_channel=UnitCosts(full(c_in, channel_weight), full(c_in, plane), full(c_in, channel_weight * positions)),
        neuron=UnitCosts(
            full(c_out, neuron_weight + (1 if bias else 0)), full(c_out, c_in // groups * plane), full(c_out, neuron_weight * positions)
        ),
        bias=bias,
    )


def channel_costs(model: nn.Module, image_size: int) -> dict[str, LayerCosts]:
    """The costs of every budgeted layer of ``model`` (every conv, every Linear but the classifier) for square ``image_size`` inputs.

    Args:
        model: the network; one forward pass of a zero image (batch 1, eval
            mode, no gradients) measures every conv's input and output size
            and the tokens of every Linear (:func:`~neqtune.trainables.budget.units.layer_sizes`).
        image_size: side of the input image, in pixels.

    Returns:
        For every budgeted layer, keyed by its qualified name in module
        order, its :class:`LayerCosts` (``.weight`` and ``.activation`` over
        its input channels, ``.neuron`` over its output channels).
    """
    layers = budgeted_layers(model)
    first = next(iter(layers.values()))
    channels = first.in_channels if isinstance(first, nn.Conv2d) else 3
    parameter = next(model.parameters())
    example = torch.zeros(1, channels, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
    sizes = layer_sizes(model, example)
    return {name: _layer_costs(layer, sizes[name].input_hw, sizes[name].output_hw) for name, layer in layers.items()}


def network_memory(costs: Mapping[str, LayerCosts]) -> int:
    """All weights and biases of the budgeted layers plus all their input activations, per image: TraDy's baseline."""
    return sum(c.total_parameters + c.total_activation for c in costs.values())


@dataclass(frozen=True)
class MemoryUse:
    """What a set of masks updates and keeps, in elements per image.

    Attributes:
        weight_elements: weight (and bias) elements updated in the budgeted layers.
        activation_elements: layer-input activation elements kept for weight gradients.
        weight_total, activation_total: the same for a full update.
        wgrad_flops: weight-gradient multiply-accumulates computed per image.
        wgrad_flops_total: the same for a full update.
        layer_weight, layer_activation: per conv (module order), the two parts.
    """

    weight_elements: int
    activation_elements: int
    weight_total: int
    activation_total: int
    wgrad_flops: int
    wgrad_flops_total: int
    layer_weight: list[int]
    layer_activation: list[int]

    @property
    def elements(self) -> int:
        """Weights plus activations: what a memory budget bounds."""
        return self.weight_elements + self.activation_elements

    @property
    def activation_sparsity_pct(self) -> float:
        """Share of the conv-input activations not kept, in percent."""
        return 100.0 * (1 - self.activation_elements / self.activation_total) if self.activation_total else 0.0

    @property
    def weight_sparsity_pct(self) -> float:
        """Share of the conv weights not updated, in percent."""
        return 100.0 * (1 - self.weight_elements / self.weight_total) if self.weight_total else 0.0

    @property
    def wgrad_flops_saved_pct(self) -> float:
        """Share of a full update's weight-gradient FLOPs not computed, in percent."""
        return 100.0 * (1 - self.wgrad_flops / self.wgrad_flops_total) if self.wgrad_flops_total else 0.0


def mask_memory(masks: Masks, costs: Mapping[str, LayerCosts], unit: Unit) -> MemoryUse:
    """Price ``masks`` (per conv, bool over the channels of ``unit``; True = updated).

    Returns:
        The :class:`MemoryUse` of the masks: weights updated, activations
        kept (a neuron keeps its group's whole input once), FLOPs computed.
    """
    layer_weight: list[int] = []
    layer_activation: list[int] = []
    flops = flops_total = weight_total = activation_total = 0
    for name, conv in costs.items():
        mask = masks[name].cpu()
        per_unit = conv.units(unit)
        if mask.shape != per_unit.weight.shape:
            raise ValueError(f"mask of {name} has {mask.numel()} entries, its conv has {per_unit.weight.numel()} {unit} channels")
        layer_weight.append(int(per_unit.weight[mask].sum()) + conv.kept_bias(mask, unit))
        layer_activation.append(conv.kept_activation(mask, unit))
        flops += int(per_unit.wgrad_flops[mask].sum())
        flops_total += int(per_unit.wgrad_flops.sum())
        weight_total += conv.total_parameters
        activation_total += conv.total_activation
    return MemoryUse(
        weight_elements=sum(layer_weight),
        activation_elements=sum(layer_activation),
        weight_total=weight_total,
        activation_total=activation_total,
        wgrad_flops=flops,
        wgrad_flops_total=flops_total,
        layer_weight=layer_weight,
        layer_activation=layer_activation,
    )


@dataclass(frozen=True)
class Pricing:
    """What every unit of the network costs against a budget, and how an order of units fills it.

    Attributes:
        unit_cost: per conv (module order), each unit's own price (long).
        fill: ``prefix`` (stop at the first unit that does not fit, the
            study's rule) or ``skip`` (take every unit that still fits).
        group_cost: per conv, a price per group paid once, by the first unit
            taken from the group (the input a group of neurons shares), or
            None when units share nothing.
        group_of: per conv, each unit's group (0-based within the conv);
            given with ``group_cost``.
    """

    unit_cost: dict[str, torch.Tensor]
    fill: Fill = "prefix"
    group_cost: dict[str, torch.Tensor] | None = None
    group_of: dict[str, torch.Tensor] | None = None

    @classmethod
    def of(cls, unit_cost: Mapping[str, torch.Tensor], fill: Fill = "prefix") -> Pricing:
        """Units priced independently (a parameter budget: the neurons' parameter counts)."""
        return cls({name: cost.reshape(-1).long().cpu() for name, cost in unit_cost.items()}, fill)

    @functools.cached_property
    def _flat(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        units = torch.cat([c.reshape(-1).long().cpu() for c in self.unit_cost.values()])
        if self.group_cost is None or self.group_of is None:
            return units, None, None
        offsets, group_ids = 0, []
        for name in self.unit_cost:
            group_ids.append(self.group_of[name].long().cpu() + offsets)
            offsets += self.group_cost[name].numel()
        return units, torch.cat(group_ids), torch.cat([self.group_cost[name].long().cpu() for name in self.unit_cost])

    def flat_unit_cost(self) -> torch.Tensor:
        """Every unit's own price, all convs concatenated in order."""
        return self._flat[0]

    def flat_group_of(self) -> torch.Tensor:
        """Every unit's group, numbered across the whole network (requires ``group_cost``)."""
        groups = self._flat[1]
        assert groups is not None, "this pricing has no groups"
        return groups

    def flat_group_cost(self) -> torch.Tensor:
        """The shared price of every group, numbered as :meth:`flat_group_of` (requires ``group_cost``)."""
        costs = self._flat[2]
        assert costs is not None, "this pricing has no groups"
        return costs

    def flat_rank_cost(self) -> torch.Tensor:
        """What a unit costs when ranking by score per cost: its own price plus its share of its group's (float64)."""
        units, groups, group_costs = self._flat
        rank = units.double()
        if groups is not None and group_costs is not None:
            members = torch.bincount(groups, minlength=group_costs.numel()).double()
            rank = rank + group_costs.double()[groups] / members[groups]
        return rank


def budget_pricing(
    costs: Mapping[str, LayerCosts],
    neuron_params: Mapping[str, torch.Tensor],
    *,
    unit: Unit,
    kind: BudgetKind,
    fill: Fill,
) -> Pricing:
    """How the units of ``unit`` are priced against a budget of ``kind``.

    - parameters, neurons: each neuron's parameters (with its bias), the study;
    - parameters, input channels: each channel's weight elements;
    - memory, input channels: each channel's weight + input plane;
    - memory, neurons: each neuron's weight elements (with its bias), plus
      its group's input (``C_in/groups * H * W``), paid once by the first
      neuron taken from it.

    Under a memory budget over input channels a layer's bias is paid once,
    by the first channel taken from the layer (a group of one per layer),
    as :func:`mask_memory` counts it; models whose layers have no bias (the
    study's CNNs) get no groups. A parameter budget over input channels
    counts weight elements only, as before.
    """
    if kind == "params":
        if unit == "neuron":
            return Pricing.of(neuron_params, fill)
        return Pricing.of({name: conv.weight for name, conv in costs.items()}, fill)
    if unit == "input_channel":
        return _with_biases(Pricing.of({name: conv.weight + conv.activation for name, conv in costs.items()}, fill), costs)
    return Pricing(
        unit_cost={name: conv.neuron.weight for name, conv in costs.items()},
        fill=fill,
        group_cost={
            name: torch.full((conv.groups,), conv.in_channels // conv.groups * conv.plane, dtype=torch.long) for name, conv in costs.items()
        },
        group_of={name: conv.neuron_groups() for name, conv in costs.items()},
    )


def _with_biases(pricing: Pricing, costs: Mapping[str, LayerCosts]) -> Pricing:
    """``pricing`` with each layer's bias as a price paid once by the first input channel taken from it."""
    if not any(conv.bias for conv in costs.values()):
        return pricing
    return Pricing(
        unit_cost=pricing.unit_cost,
        fill=pricing.fill,
        group_cost={name: torch.tensor([conv.bias], dtype=torch.long) for name, conv in costs.items()},
        group_of={name: torch.zeros(conv.in_channels, dtype=torch.long) for name, conv in costs.items()},
    )
