"""What a unit of selection costs: weight and activation elements, weight-gradient FLOPs.

Two units can be selected under a budget, and both are priced here in the
same currency (elements per input image):

- a *neuron* (``unit: neuron``, the study): one output channel ``c`` of a
  conv, the slice ``W[c]``. Its weight part is ``C_in/groups * kh * kw``
  elements. Its weight gradient reads the input channels of its group, so
  selecting any neuron of a dense conv keeps that conv's whole input for
  backward; a depthwise neuron keeps only its own input plane.
- an *input channel* (``unit: input_channel``, TraDy and MeDyate): the slice
  ``W[:, c]``. Its weight part is ``C_out * kh * kw`` elements
  (``C_out/groups * kh * kw`` in a grouped conv, ``kh * kw`` in a depthwise
  one), and its weight gradient reads only channel ``c`` of the conv's
  input: ``H_in * W_in`` activation elements.

A budget of memory counts, like TraDy, the weight elements updated plus the
conv-input activation elements kept for their weight gradients, per image
(one image: the published budgets reproduce only that way; a batch of ``B``
keeps ``B`` times the activations). Biases, normalisation layers, the
classifier, activation gradients and optimizer state are outside it. The
module is pure: it prices masks, it never selects or applies them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neqtune.trainables.budget.units import Masks, Unit, conv_layers

Fill = Literal["prefix", "skip"]
BudgetKind = Literal["params", "memory"]


@dataclass(frozen=True)
class UnitCosts:
    """Per unit of one conv, what selecting it costs (``torch.long`` tensors of one length).

    Attributes:
        weight: weight elements the unit holds.
        activation: input activation elements (per image) its weight
            gradient needs on its own. Shared between the neurons of a
            group; see :meth:`ConvCosts.kept_activation`.
        wgrad_flops: multiply-accumulates of its weight gradient per image.
    """

    weight: torch.Tensor
    activation: torch.Tensor
    wgrad_flops: torch.Tensor


@dataclass(frozen=True)
class ConvCosts:
    """The costs of one conv at one image size.

    ``weight`` and ``activation`` are over the conv's *input* channels (the
    TraDy unit); ``neuron`` holds the same prices over its output channels.

    Attributes:
        in_channels, out_channels, groups: the conv's shape.
        kernel: ``kh * kw``.
        input_hw: spatial size of the conv's input, unpadded.
        output_hw: spatial size of its output.
        input_channel: costs per input channel.
        neuron: costs per output channel.
    """

    in_channels: int
    out_channels: int
    groups: int
    kernel: int
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    input_channel: UnitCosts
    neuron: UnitCosts

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
        """All weight elements of the conv (no bias)."""
        return int(self.input_channel.weight.sum())

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


def _conv_shapes(model: nn.Module, image_size: int) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Input and output spatial sizes of every conv for one ``image_size`` square image."""
    shapes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    convs = conv_layers(model)
    handles = []
    for name, conv in convs.items():

        def record(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor, name: str = name) -> None:
            shapes[name] = ((int(args[0].shape[-2]), int(args[0].shape[-1])), (int(out.shape[-2]), int(out.shape[-1])))

        handles.append(conv.register_forward_hook(record))
    first = next(iter(convs.values()))
    parameter = next(model.parameters())
    example = torch.zeros(1, first.in_channels, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def _conv_costs(conv: nn.Conv2d, input_hw: tuple[int, int], output_hw: tuple[int, int]) -> ConvCosts:
    kh, kw = conv.kernel_size
    kernel = kh * kw
    c_in, c_out, groups = conv.in_channels, conv.out_channels, conv.groups
    plane = input_hw[0] * input_hw[1]
    positions = output_hw[0] * output_hw[1]
    channel_weight = c_out // groups * kernel
    neuron_weight = c_in // groups * kernel

    def full(length: int, value: int) -> torch.Tensor:
        return torch.full((length,), value, dtype=torch.long)

    return ConvCosts(
        in_channels=c_in,
        out_channels=c_out,
        groups=groups,
        kernel=kernel,
        input_hw=input_hw,
        output_hw=output_hw,
        input_channel=UnitCosts(full(c_in, channel_weight), full(c_in, plane), full(c_in, channel_weight * positions)),
        neuron=UnitCosts(full(c_out, neuron_weight), full(c_out, c_in // groups * plane), full(c_out, neuron_weight * positions)),
    )


def channel_costs(model: nn.Module, image_size: int) -> dict[str, ConvCosts]:
    """The costs of every conv of ``model`` for square ``image_size`` inputs.

    Args:
        model: the network; one forward pass of a zero image (eval mode, no
            gradients) measures every conv's input and output size.
        image_size: side of the input image, in pixels.

    Returns:
        For every ``nn.Conv2d``, keyed by its qualified name in module order,
        its :class:`ConvCosts` (``.weight`` and ``.activation`` over its
        input channels, ``.neuron`` over its output channels).
    """
    shapes = _conv_shapes(model, image_size)
    return {name: _conv_costs(conv, *shapes[name]) for name, conv in conv_layers(model).items()}


def network_memory(costs: Mapping[str, ConvCosts]) -> int:
    """All conv weights plus all conv-input activations, per image: TraDy's baseline."""
    return sum(c.total_weight + c.total_activation for c in costs.values())


@dataclass(frozen=True)
class MemoryUse:
    """What a set of masks updates and keeps, in elements per image.

    Attributes:
        weight_elements: conv weight elements updated.
        activation_elements: conv-input activation elements kept for weight gradients.
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


def mask_memory(masks: Masks, costs: Mapping[str, ConvCosts], unit: Unit) -> MemoryUse:
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
        layer_weight.append(int(per_unit.weight[mask].sum()))
        layer_activation.append(conv.kept_activation(mask, unit))
        flops += int(per_unit.wgrad_flops[mask].sum())
        flops_total += int(per_unit.wgrad_flops.sum())
        weight_total += conv.total_weight
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
    costs: Mapping[str, ConvCosts],
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
    - memory, neurons: each neuron's weight elements, plus its group's input
      (``C_in/groups * H * W``), paid once by the first neuron taken from it.
    """
    if kind == "params":
        if unit == "neuron":
            return Pricing.of(neuron_params, fill)
        return Pricing.of({name: conv.weight for name, conv in costs.items()}, fill)
    if unit == "input_channel":
        return Pricing.of({name: conv.weight + conv.activation for name, conv in costs.items()}, fill)
    return Pricing(
        unit_cost={name: conv.neuron.weight for name, conv in costs.items()},
        fill=fill,
        group_cost={
            name: torch.full((conv.groups,), conv.in_channels // conv.groups * conv.plane, dtype=torch.long) for name, conv in costs.items()
        },
        group_of={name: conv.neuron_groups() for name, conv in costs.items()},
    )
