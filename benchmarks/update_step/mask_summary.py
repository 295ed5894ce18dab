"""What a mask updates: parameters, convs fully, partly or not at all, and its share of the weight-gradient work
(by FLOPs and by each conv's measured weight-gradient time)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from neqtune.trainables.budget.units import Masks, conv_layers, conv_neuron_params


def layer_wgrad_seconds(model: nn.Module, inputs: torch.Tensor, repeats: int = 5) -> dict[str, float]:
    """Median time of every conv's whole weight gradient alone, at the activations of ``inputs``.

    One forward pass without autograd; a hook on each conv times the
    library's weight gradient of that conv (``convolution_backward`` with only
    the weight gradient asked for) on the conv's real input and a random
    output gradient, ``repeats`` times after one warm-up call.
    """
    times: dict[str, float] = {}

    def timer(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(conv: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            assert isinstance(conv, nn.Conv2d)
            grad = torch.randn_like(output)
            samples = []
            for _ in range(repeats + 1):
                started = time.perf_counter()
                torch.ops.aten.convolution_backward(
                    grad, args[0], conv.weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups, [False, True, False]
                )
                samples.append(time.perf_counter() - started)
            times[name] = statistics.median(samples[1:])

        return hook

    handles = [conv.register_forward_hook(timer(name)) for name, conv in conv_layers(model).items()]
    try:
        with torch.no_grad():
            model.eval()(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return times


def _updated_share(masks: Masks, cost: dict[str, float]) -> float:
    """sum(cost x updated / channels) / sum(cost) over the convs: the masks' share of a per-conv cost."""
    return sum(cost[n] * int(m.sum()) / m.numel() for n, m in masks.items()) / sum(cost.values())


def mask_summary(model: nn.Module, masks: Masks, flops: dict[str, int], wgrad_seconds: dict[str, float] | None = None) -> dict[str, float]:
    """Parameters and convs the masks update, and their share of the weight-gradient work.

    Two shares, each spread evenly over a conv's output channels:
    ``wgrad_flop_share`` weighs the convs by FLOPs (a weight gradient takes
    as many as the forward pass; ``flops`` from :func:`layer_flops`),
    ``wgrad_time_share`` by the measured time of their whole weight gradient
    (``wgrad_seconds`` from :func:`layer_wgrad_seconds`; NaN without it),
    which counts what FLOPs miss: a depthwise conv's weight gradient moves
    far more memory than its FLOPs suggest.
    """
    params = conv_neuron_params(model)
    return {
        "wgrad_flop_share": _updated_share(masks, {n: float(f) for n, f in flops.items()}),
        "wgrad_time_share": _updated_share(masks, wgrad_seconds) if wgrad_seconds else math.nan,
        "params_updated": int(sum(int(params[n][m].sum()) for n, m in masks.items())),
        **conv_counts(masks),
    }


def conv_counts(masks: Masks) -> dict[str, int]:
    """How many convs the masks update fully, partly, or not at all (any unit)."""
    counts = [int(m.sum()) for m in masks.values()]
    return {
        "convs_full": sum(c == m.numel() for c, m in zip(counts, masks.values(), strict=True)),
        "convs_partial": sum(0 < c < m.numel() for c, m in zip(counts, masks.values(), strict=True)),
        "convs_frozen": sum(c == 0 for c in counts),
    }
