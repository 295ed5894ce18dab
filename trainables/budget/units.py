"""The budgeted layers of a network, their units, and what the units cost: parameters and backward FLOPs.

Two layer kinds hold units (:func:`budgeted_layers`): every ``nn.Conv2d``
and every ``nn.Linear`` but the classifier. A *neuron* is one output
channel of a conv or one output feature of a Linear (the row ``W[o]``,
plus ``bias[o]`` when the layer has a bias); an *input channel* is one
input channel of a conv or one input feature of a Linear (the column
``W[:, c]``). Everything in neqtune that talks about units (policies,
masks, the optimizer, the logs) keys them by the layer's qualified module
name, in ``model.named_modules()`` order, which for the supported models is
also the order of the forward pass.

A Linear layer may be used without its module's ``forward``: torchvision's
Swin calls its attention ``qkv`` and ``proj`` weights through ``F.linear``
inside a function, so forward hooks on those modules never fire.
:class:`LinearCalls` therefore finds every call of ``F.linear`` whose weight
is a budgeted layer's weight (by identity), whoever makes it; the cost
model, the velocity and the engine all go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from neqtune.trainables.models.registry import ClassifierError, classifier_name

Masks = dict[str, torch.Tensor]
"""Per budgeted layer (qualified name), a bool tensor over its units; True = updated."""

Layer = nn.Conv2d | nn.Linear
"""A layer kind that holds budgeted units."""

Unit = Literal["neuron", "input_channel"]
"""What a mask selects: ``"neuron"``, a layer's output channels or features (weight rows
``W[o]``, ``out_channels`` / ``out_features`` long), or ``"input_channel"``, its input channels
or features (weight columns ``W[:, c]``, ``in_channels`` / ``in_features`` long)."""
UNITS: tuple[Unit, ...] = ("neuron", "input_channel")

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
"""The normalisation layers: never units, trained beside the budget as ``budget.bn_update`` says."""


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every ``nn.Conv2d`` of ``model`` keyed by qualified name, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


# --- what the policies ask of a budgeted layer ---------------------------------------------------------------------
# The policies reach the layers through the functions below, never through a layer type: a new layer kind extends
# these, the cost model and the engine, and leaves every policy as it is.


def _classifier(model: nn.Module) -> str | None:
    try:
        return classifier_name(model)
    except ClassifierError:
        return None


def budgeted_layers(model: nn.Module) -> dict[str, Layer]:
    """The layers whose weights hold the budget's units, keyed by qualified name in module order.

    Every ``nn.Conv2d`` and every ``nn.Linear`` except the classifier
    (:func:`~neqtune.trainables.models.registry.classifier_name`), which
    always trains outside any budget.
    """
    head = _classifier(model)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) or (isinstance(module, nn.Linear) and name != head)
    }


def hooked_layers(layers: Mapping[str, Layer]) -> dict[str, Layer]:
    """Those of ``layers`` whose output a module forward hook sees: the convs (a Linear is seen through :class:`LinearCalls`,
    since a model may use its weight inside a function, as torchvision's Swin does)."""
    return {name: layer for name, layer in layers.items() if isinstance(layer, nn.Conv2d)}


def layer_shape(layer: Layer) -> tuple[int, int, int]:
    """``(out_channels, in_channels, groups)`` of a conv; ``(out_features, in_features, 1)`` of a Linear."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features, 1
    return layer.out_channels, layer.in_channels, layer.groups


def unit_length(layer: Layer, unit: Unit) -> int:
    """Length of ``layer``'s mask in ``unit``: its outputs (neurons) or its inputs (input channels)."""
    out_channels, in_channels, _groups = layer_shape(layer)
    return out_channels if unit == "neuron" else in_channels


def neuron_outputs(output: torch.Tensor, layer: Layer | None = None) -> torch.Tensor:
    """A budgeted layer's output as ``[batch, neurons, positions]``: what the velocity compares neuron by neuron.

    A conv's output ``[B, C, H, W]`` becomes ``[B, C, H * W]``; a Linear's
    ``[B, ..., C]`` becomes ``[B, C, tokens]`` (its tokens, in order).
    """
    if isinstance(layer, nn.Linear):
        return output.reshape(output.shape[0], -1, output.shape[-1]).transpose(1, 2)
    return output.flatten(2)


LinearFn = Callable[..., torch.Tensor]
LinearHandler = Callable[[str, torch.Tensor, torch.Tensor, "torch.Tensor | None", LinearFn], torch.Tensor]
"""``handler(layer name, input, weight, bias, linear) -> output``: what :class:`LinearCalls` runs instead of a call.

``linear`` is ``F.linear`` as it was before this :class:`LinearCalls` was
entered: a handler that only observes computes the output with it, so an
outer :class:`LinearCalls` sees the call too."""


class LinearCalls:
    """While entered, hands every ``F.linear`` call whose weight is one of ``layers``' weights to ``handler``.

    The weight is matched by identity, so a layer is found whether its
    module's ``forward`` runs (``nn.Linear`` calls ``F.linear``), a function
    uses its weight directly (torchvision's Swin attention calls
    ``F.linear(x, qkv_weight, ...)``), or ``torch.nn.functional`` itself does
    (``nn.MultiheadAttention``'s output projection). Every other call runs
    unchanged. It works by replacing the attribute ``torch.nn.functional.linear``
    for the duration, the name all three look up at call time; a
    ``TorchFunctionMode`` would miss calls made inside
    ``F.multi_head_attention_forward``, which hands itself whole to a mode.
    Not seen: code that bound ``linear`` at import time or calls
    ``torch._C._nn.linear``. While entered, ``nn.MultiheadAttention``'s fused
    inference path (no ``F.linear`` at all) is switched off. Entries nest,
    last in first served.
    """

    def __init__(self, layers: Mapping[str, Layer], handler: LinearHandler) -> None:
        self.names = {id(layer.weight): name for name, layer in layers.items() if isinstance(layer, nn.Linear)}
        self.handler = handler
        self._saved: list[tuple[LinearFn, bool]] = []

    def __enter__(self) -> LinearCalls:
        if not self.names:  # no Linear among the layers (a CNN's): F.linear and the MHA fast path stay as they are
            return self
        previous: LinearFn = F.linear
        names, handler = self.names, self.handler

        def linear(*args: Any, **kwargs: Any) -> torch.Tensor:
            inputs, weight, bias = _linear_operands(args, kwargs)
            name = names.get(id(weight))
            if name is None:
                return previous(*args, **kwargs)
            return handler(name, inputs, weight, bias, previous)

        self._saved.append((previous, torch.backends.mha.get_fastpath_enabled()))
        torch.backends.mha.set_fastpath_enabled(False)
        F.linear = linear
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.names:
            return
        previous, fastpath = self._saved.pop()
        F.linear = previous
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _linear_operands(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    named = dict(zip(("input", "weight", "bias"), args, strict=False)) | dict(kwargs)
    return named["input"], named["weight"], named.get("bias")


def frozen_weight_elements(layer: Layer, mask: torch.Tensor, unit: Unit) -> torch.Tensor:
    """A bool tensor shaped like ``layer.weight``: True where the element belongs to a unit out of ``mask``."""
    out_channels, in_per_group = layer.weight.shape[:2]
    if unit == "neuron":
        return (~mask).view(-1, *([1] * (layer.weight.dim() - 1))).expand_as(layer.weight)
    groups = layer_shape(layer)[2]
    out_per_group = out_channels // groups
    group = torch.arange(out_channels) // out_per_group
    channel = group.view(-1, 1) * in_per_group + torch.arange(in_per_group).view(1, -1)  # the input channel of (o, j)
    return (~mask[channel]).view(out_channels, in_per_group, *([1] * (layer.weight.dim() - 2))).expand_as(layer.weight)


def frozen_bias_elements(layer: Layer, mask: torch.Tensor, unit: Unit) -> torch.Tensor:
    """A bool tensor shaped like ``layer.bias``: the bias of a neuron out of the mask is frozen; under input channels
    the bias trains while any of the layer's channels does (its gradient does not depend on which)."""
    assert layer.bias is not None
    if unit == "neuron":
        return ~mask
    return torch.full(layer.bias.shape, not bool(mask.any()), dtype=torch.bool)


def neuron_param_count(layer: Layer) -> int:
    """Parameters of one output neuron of ``layer``: ``in/groups * kh * kw`` for a conv, ``in_features`` for a Linear (+1 with a bias).

    The reference code forgot ``/ groups``, which inflates depthwise neurons by
    a factor of ``in_channels``; neqtune counts what is actually stored.
    """
    count = layer.weight[0].numel()
    return count + 1 if layer.bias is not None else count


def conv_neuron_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter count of every neuron of every budgeted layer (convs and Linear layers but the classifier).

    Returns:
        For every layer of :func:`budgeted_layers`, keyed by its qualified
        module name, a ``torch.long`` tensor of length ``out_channels``
        (``out_features``) holding the number of parameters of each output neuron.
    """
    return {
        name: torch.full((layer_shape(layer)[0],), neuron_param_count(layer), dtype=torch.long) for name, layer in budgeted_layers(model).items()
    }


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


def conv_flops(conv: Layer, output_hw: tuple[int, int]) -> int:
    """Forward FLOPs of a budgeted layer for one input image whose output is ``output_hw``.

    ``kh*kw*(C_in/groups)*C_out*H_out*W_out`` multiply-accumulates, plus
    ``C_out*H_out*W_out`` for the bias. A Linear is a 1x1 conv over its
    tokens: ``output_hw`` is ``(tokens, 1)``. Computing the weight gradient
    costs the same, and each output neuron owns ``1/C_out`` of it.
    """
    out_channels = layer_shape(conv)[0]
    positions = out_channels * output_hw[0] * output_hw[1]
    flops = conv.weight[0].numel() * positions
    return flops + positions if conv.bias is not None else flops


@dataclass(frozen=True)
class LayerSizes:
    """What one budgeted layer sees in a forward pass of one image.

    Attributes:
        input_hw: a conv's input plane ``(H, W)``, unpadded; a Linear's
            ``(tokens, 1)``, the input rows it multiplies (all its calls added up).
        output_hw: a conv's output plane; a Linear's ``(tokens, 1)`` again.
    """

    input_hw: tuple[int, int]
    output_hw: tuple[int, int]


@torch.no_grad()
def layer_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, LayerSizes]:
    """Input and output sizes of every budgeted layer for one forward pass of ``example`` (eval mode, no gradients).

    Convs are measured by forward hooks; Linear layers by every ``F.linear``
    call on their weight (:class:`LinearCalls`), so a weight used inside a
    function is found, and tokens are what the layer multiplies, e.g. after
    Swin's padding to whole windows. A Linear called several times counts
    the tokens of all its calls (each call keeps its own input for backward).

    Raises:
        ValueError: a budgeted layer that the forward pass never used.
    """
    layers = budgeted_layers(model)
    batch = example.shape[0]
    sizes: dict[str, LayerSizes] = {}
    tokens: dict[str, int] = {}
    handles = []
    for name, layer in layers.items():
        if isinstance(layer, nn.Conv2d):

            def record(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor, name: str = name) -> None:
                sizes[name] = LayerSizes((int(args[0].shape[-2]), int(args[0].shape[-1])), (int(out.shape[-2]), int(out.shape[-1])))

            handles.append(layer.register_forward_hook(record))

    def count(name: str, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, linear: LinearFn) -> torch.Tensor:
        # per image of the example: a function may fold the batch into the tokens (nn.MultiheadAttention's out_proj)
        tokens[name] = tokens.get(name, 0) + inputs.numel() // (batch * inputs.shape[-1])
        return linear(inputs, weight, bias)

    was_training = model.training
    model.eval()
    try:
        with LinearCalls(layers, count):
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    for name, seen in tokens.items():
        sizes[name] = LayerSizes((seen, 1), (seen, 1))
    unused = [name for name in layers if name not in sizes]
    if unused:
        raise ValueError(f"budgeted layers {unused[:4]} were not used in a forward pass (a Linear counts only through F.linear on its own weight)")
    return {name: sizes[name] for name in layers}


def conv_output_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Output size of every budgeted layer for one forward pass of ``example`` (a Linear's: ``(tokens, 1)``)."""
    return {name: size.output_hw for name, size in layer_sizes(model, example).items()}


def layer_flops(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """FLOPs per image of every budgeted layer of ``model`` at the size of ``example``."""
    sizes = conv_output_sizes(model, example)
    return {name: conv_flops(layer, sizes[name]) for name, layer in budgeted_layers(model).items()}


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


def unit_norms(tensor: torch.Tensor, conv: Layer, unit: Unit) -> torch.Tensor:  # also asked by the policies
    """L2 norm of every unit's slice of a weight-shaped ``tensor`` (a weight or its gradient): ``[c]`` per neuron, ``[:, c]`` per input channel.

    Computed in float64 on the tensor's device.
    """
    values = tensor.detach().double()
    out_channels, in_channels, groups = layer_shape(conv)
    if unit == "neuron":
        norms: torch.Tensor = values.reshape(out_channels, -1).norm(dim=1)
        return norms
    per_group = values.reshape(groups, out_channels // groups, in_channels // groups, -1)
    return per_group.pow(2).sum(dim=(1, 3)).sqrt().reshape(-1)


def channel_norms(conv: Layer, unit: Unit) -> torch.Tensor:
    """L2 norm of every unit's weight slice: ``W[c]`` per neuron, ``W[:, c]`` per input channel (float64, CPU)."""
    return unit_norms(conv.weight.detach().cpu(), conv, unit)
