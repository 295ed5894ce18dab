"""Section ``engine``: the sparse-update engine's float64 gradients on the device against the masked path's, per
model, policy and unit."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.gpu_check.section import CheckContext, SectionOutput, Table, ratio
from benchmarks.update_step.conditions import NUM_CLASSES
from benchmarks.update_step.mask_summary import conv_counts
from neqtune.trainables.budget.units import UNITS, Layer, Masks, Unit, budgeted_layers, frozen_weight_elements, unit_length
from neqtune.trainables.config import ModelConfig, TrialConfig
from neqtune.trainables.models.registry import build_model
from neqtune.trainables.policies.base import get_policy, policy_names
from neqtune.trainables.trainer import BudgetedRun
from neqtune.trainables.update.engine import SparseUpdateEngine

TOLERANCE = 1e-9
"""Largest absolute difference allowed between the engine's float64 gradients and the masked path's."""


def updated_elements(layer: Layer, mask: torch.Tensor, unit: Unit) -> torch.Tensor:
    """Which elements of a budgeted layer's weight (a conv's or a Linear's) a mask updates, as a bool tensor of its shape.

    ``neuron``: the rows ``W[o]`` of the True output channels or features.
    ``input_channel``: the elements that read a True input channel or
    feature; a grouped conv's ``W[o, j]`` reads channel
    ``(o // (C_out / g)) * (C_in / g) + j`` (for a depthwise conv, ``W[c]`` is
    channel c's). :func:`~neqtune.trainables.budget.units.frozen_weight_elements`, negated.
    """
    return ~frozen_weight_elements(layer, mask.to(dtype=torch.bool), unit).to(layer.weight.device)


def mixed_masks(model: nn.Module, unit: Unit, seed: int) -> Masks:
    """Seeded masks that take every path of the engine: layer by layer (convs and Linears), none, few, most or all of its units updated."""
    generator = torch.Generator().manual_seed(seed)
    masks: Masks = {}
    for index, (name, layer) in enumerate(budgeted_layers(model).items()):
        channels = unit_length(layer, unit)
        few = max(1, channels // 8)
        count = {0: 0, 1: few, 2: max(few, channels - few), 3: channels}[index % 4]
        mask = torch.zeros(channels, dtype=torch.bool)
        mask[torch.randperm(channels, generator=generator)[:count]] = True
        masks[name] = mask
    return masks


def _gradients(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward and backward in train mode; every parameter's gradient (zeros where autograd computed none)."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(100)  # the same dropout in both paths
    F.cross_entropy(model(inputs), labels).backward()
    return {name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for name, p in model.named_parameters()}


def _max_abs(tensor: torch.Tensor) -> float:
    return float(tensor.abs().max()) if tensor.numel() else 0.0


def compare_gradients(start: nn.Module, masks: Masks, unit: Unit, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The engine's gradients against the masked path's on one batch, from the weights of ``start`` (not changed).

    Returns:
        ``updated_diff``: the largest absolute difference over the updated
        elements of every budgeted layer's weight gradient (convs and Linears); ``updated_scale``: the largest
        absolute value there (of the masked path); ``frozen_max``: the
        largest absolute value of the engine's gradient over the frozen
        elements (0 expected); ``other_diff``: the largest difference over
        every parameter that is not a conv's (normalisation, classifier).
    """
    engine_model, reference = copy.deepcopy(start), copy.deepcopy(start)
    engine = SparseUpdateEngine(engine_model, bn_update="all", sparse=True, unit=unit)
    engine.set_masks(masks)
    ours = _gradients(engine_model, inputs, labels)
    engine.remove()
    theirs = _gradients(reference, inputs, labels)
    updated_diff = updated_scale = frozen_max = 0.0
    conv_params: set[str] = set()
    for name, conv in budgeted_layers(start).items():
        prefix = f"{name}." if name else ""
        key = f"{prefix}weight"
        conv_params |= {key, f"{prefix}bias"}
        updated = updated_elements(conv, masks[name], unit)
        masked_path = theirs[key] * updated  # the study's path: full backward, frozen elements zeroed
        updated_diff = max(updated_diff, _max_abs((ours[key] - masked_path)[updated]))
        updated_scale = max(updated_scale, _max_abs(masked_path[updated]))
        frozen_max = max(frozen_max, _max_abs(ours[key][~updated]))
    others = [name for name in ours if name not in conv_params]
    other_diff = max((_max_abs(ours[name] - theirs[name]) for name in others), default=0.0)
    return {"updated_diff": updated_diff, "updated_scale": updated_scale, "frozen_max": frozen_max, "other_diff": other_diff}


def policy_trial(model_name: str, policy: str, unit: Unit, image_size: int, device: torch.device) -> dict[str, Any]:
    """A one-epoch digits trial of ``policy`` on ``model_name``, for its first masks."""
    budget: dict[str, Any] = {"policy": policy, "unit": unit, "initialization": "random"}
    if model_name == "mbv2-w0.35":
        budget["scheme"] = "mbv2-w0.35_scheme_3"  # the study's SU mask and budgets for this model
    else:
        budget["ratio"] = 0.2
    return {
        "data": {"name": "digits", "image_size": image_size, "batch_size": 64},
        "model": {"name": model_name},
        "training": {"epochs": 1, "lr": 0.05, "momentum": 0.9, "device": str(device)},
        "budget": budget,
    }


def first_masks(model_name: str, policy: str, unit: Unit, context: CheckContext) -> tuple[Masks | None, str]:
    """The policy's first masks from a real run on digits; None and the reason where the run cannot be built."""
    try:
        run = BudgetedRun(TrialConfig.from_dict(policy_trial(model_name, policy, unit, context.sizes.engine_image_size, context.device)))
    except Exception as err:  # e.g. no SU mask for resnet18: the engine is still checked, on seeded masks
        return None, f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
    masks = {name: mask.detach().cpu().clone() for name, mask in run.masks.items()}
    del run
    return masks, "policy's first mask"


def mask_description(masks: Masks) -> dict[str, Any]:
    """How much the masks update: convs fully, partly or not at all, and the share of units."""
    counts = conv_counts(masks)
    units = sum(m.numel() for m in masks.values())
    return {
        "convs full/partial/frozen": f"{counts['convs_full']}/{counts['convs_partial']}/{counts['convs_frozen']}",
        "units updated %": 100.0 * sum(int(m.sum()) for m in masks.values()) / units,
    }


def engine_exactness(context: CheckContext) -> SectionOutput:
    """Section 1: the engine's float64 gradients on the device against the masked path's, per model, policy and unit."""
    sizes, device = context.sizes, context.device
    output = SectionOutput()
    columns = [
        "policy",
        "unit",
        "masks",
        "convs full/partial/frozen",
        "units updated %",
        "max |Δ| updated",
        "max |g| updated",
        "relative Δ",
        "max |g| frozen",
        "max |Δ| other",
        "holds",
    ]
    for model_name in sizes.engine_models:
        torch.manual_seed(0)
        start = build_model(ModelConfig(name=model_name), NUM_CLASSES).to(device=device, dtype=torch.float64)
        generator = torch.Generator().manual_seed(1)
        size = sizes.engine_image_size
        inputs = torch.randn(sizes.engine_batch, 3, size, size, generator=generator, dtype=torch.float64).to(device)
        labels = (torch.arange(sizes.engine_batch) % NUM_CLASSES).to(device)
        table = Table(f"{model_name}, {size} px, batch {sizes.engine_batch}, float64 on {device.type}", columns)
        cases: list[tuple[str, Unit, Masks, str]] = []
        for policy in policy_names():
            for unit in get_policy(policy).units:
                masks, source = first_masks(model_name, policy, unit, context)
                if masks is None:
                    output.notes.append(
                        f"{model_name} {policy}/{unit}: no run of the policy could be built ({source}); checked on seeded masks."
                    )
                    masks, source = mixed_masks(start, unit, seed=len(cases)), "seeded (no run, see notes)"
                cases.append((policy, unit, masks, source))
        cases += [("(mixed)", unit, mixed_masks(start, unit, seed=99), "seeded: none/few/most/all per conv") for unit in UNITS]
        for policy, unit, masks, source in cases:
            figures = compare_gradients(start, masks, unit, inputs, labels)
            # relative to the gradients' scale where it exceeds 1: float64 keeps ~16 digits, whatever the magnitude
            bound = TOLERANCE * max(1.0, figures["updated_scale"])
            holds = figures["updated_diff"] < bound and figures["frozen_max"] == 0 and figures["other_diff"] < bound
            table.rows.append(
                {
                    "policy": policy,
                    "unit": unit,
                    "masks": source,
                    **mask_description(masks),
                    "max |Δ| updated": figures["updated_diff"],
                    "max |g| updated": figures["updated_scale"],
                    "relative Δ": ratio(figures["updated_diff"], figures["updated_scale"]),
                    "max |g| frozen": figures["frozen_max"],
                    "max |Δ| other": figures["other_diff"],
                    "holds": holds,
                }
            )
            if not holds:
                output.failures.append(
                    f"{model_name} {policy}/{unit}: updated |Δ| {figures['updated_diff']:.2e}, frozen max {figures['frozen_max']:.2e}, other |Δ| {figures['other_diff']:.2e}"
                )
            context.log(f"  {model_name} {policy}/{unit}: max |Δ| {figures['updated_diff']:.1e} {'holds' if holds else 'FAILS'} ({source})")
        output.tables.append(table)
    output.notes.append(
        f"Tolerance {TOLERANCE:g} on the absolute difference, times the gradients' scale where it exceeds 1; `max |g| updated` is that scale (a comparison of zeros "
        "would prove nothing) and `relative Δ` the difference over it. "
        "`max |Δ| other`: BatchNorm and classifier gradients (bn_update all), which the engine's input gradients feed."
    )
    return output
