"""The update-step conditions: which models, budgets, policies and update paths are compared, and the masks of each."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neqtune.trainables.budget.costs import Pricing, network_memory
from neqtune.trainables.budget.resolve import ResolvedBudget, build_budget, scheme_su_mask
from neqtune.trainables.budget.schemes import get_scheme, su_update_mask
from neqtune.trainables.budget.units import Masks, Unit, budgeted_layers, conv_neuron_params, total_params, unit_length
from neqtune.trainables.config import BudgetConfig, ModelConfig, from_mapping
from neqtune.trainables.policies.fill import select_neurons, select_units
from neqtune.trainables.policies.velocity import VelocityTracker

SCHEMES: dict[str, dict[str, str]] = {
    "mbv2-w0.35": {"1": "mbv2-w0.35_scheme_1", "3": "mbv2-w0.35_scheme_3"},
    "mbv2": {"1": "mbv2_scheme_1", "3": "mbv2_scheme_3"},
    "resnet18": {"1": "scheme_1", "3": "scheme_3"},
}
"""The budget schemes 1 and 3 of each benchmarked model."""

POLICIES = ("velocity", "random", "su")
NUM_CLASSES = 10

MEMORY_SCHEMES: dict[str, str] = {"mbv2-w0.35-zoo": "mbv2-w0.35", "mcunet-in1": "mcunet-in1", "proxyless-w0.3": "proxyless-w0.3"}
"""Models of the memory-budget conditions, with the prefix of their SU schemes (budgets of schemes 1, 3 and 5)."""
MEMORY_POLICIES: dict[str, tuple[str, Unit]] = {
    "su": ("su", "input_channel"),
    "random": ("random", "input_channel"),
    "velocity": ("velocity", "neuron"),
    "velocity-weight": ("velocity", "neuron"),
}
"""Masks of the memory conditions: policy and unit. ``velocity`` fills the memory budget (neurons pay their group's
input once); ``velocity-weight`` is TraDy's comparison: the study's parameter budget equal to the weight part of the
SU scheme, whatever memory its neurons' inputs take."""

TRANSFORMERS: dict[str, ModelConfig] = {
    "swin_t": ModelConfig(name="swin_t"),
    "vit-s16": ModelConfig(name="vit", patch_size=16, depth=12, width=384, heads=6, mlp_ratio=4.0),
    "vit": ModelConfig(name="vit"),
}
"""Models of the transformer suite: torchvision's SwinT (TraDy's), a ViT-S/16 (neqtune's ``vit`` in ViT-S/16's shape,
22 M parameters, 65 tokens at 128 px) and neqtune's small default ``vit`` (for quick runs)."""
SWINT_TOTAL = 31_889_952
"""TraDy's full SwinT total at 128 px: weight + input-activation elements of every Conv2d and Linear but the classifier."""
SWINT_BUDGETS = (27_946, 112_640, 633_859, 2_767_686)
"""TraDy's SwinT memory budgets (elements); another model gets the same shares of its own full total."""


@dataclass(frozen=True)
class Condition:
    """One column of the comparison: an update path under one mask."""

    model: str
    path: str
    policy: str = "-"
    scheme: str = "-"
    bn_update: str = "all"
    unit: Unit = "neuron"
    memory_budget: bool = False  # the memory-budget suite: grouped convs keep only their selected inputs

    @property
    def label(self) -> str:
        """Short name for progress lines."""
        return f"{self.model}/{self.path}/{self.policy}/{self.scheme}/{self.bn_update}"


# --- masks ------------------------------------------------------------------


def all_masks(model: nn.Module, value: bool, unit: Unit = "neuron") -> Masks:
    """Every unit of every budgeted layer updated (True) or frozen (False)."""
    return {name: torch.full((unit_length(layer, unit),), value, dtype=torch.bool) for name, layer in budgeted_layers(model).items()}


def velocity_masks(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, budget: int, pricing: Pricing | None = None) -> Masks:
    """Velocity masks from a short real run: two full SGD steps from ``model``'s weights.

    The tracker observes 16 fixed images before and after each step; the
    velocities after the second step rank the neurons (priced by ``pricing``,
    the study's parameter counts if None). ``model`` is not changed.
    """
    twin = copy.deepcopy(model)
    velocity_images = inputs[:16]
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    velocities = None
    with VelocityTracker(twin) as tracker:
        tracker.observe([velocity_images])
        for _ in range(2):
            twin.train()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(twin(inputs), labels).backward()
            optimizer.step()
            velocities = tracker.observe([velocity_images])
    assert velocities is not None
    pricing = pricing or Pricing.of(conv_neuron_params(model))
    return select_units("velocity", scores=velocities, pricing=pricing, budget=budget)


def policy_masks(policy: str, model: nn.Module, scheme_name: str, inputs: torch.Tensor, labels: torch.Tensor, seed: int) -> Masks | None:
    """The masks of ``policy`` at the budget of ``scheme_name``; None where SU does not fit the model."""
    scheme = get_scheme(scheme_name)
    neuron_params = conv_neuron_params(model)
    budget = scheme.budget_params(total_params(neuron_params))
    if policy == "velocity":
        return velocity_masks(model, inputs, labels, budget)
    if policy == "random":
        generator = torch.Generator().manual_seed(seed)
        return select_neurons("random", scores=None, neuron_params=neuron_params, budget=budget, generator=generator)
    if scheme.su is None:
        return None
    return su_update_mask(model, manual_weight_idx=scheme.su.manual_weight_idx, weight_update_ratio=scheme.su.weight_update_ratio)


def model_conditions(model_name: str, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, seed: int) -> list[tuple[Condition, Masks]]:
    """Every condition benchmarked for one model, with its masks."""
    conditions = [
        (Condition(model_name, "full"), all_masks(model, True)),
        (Condition(model_name, "bound"), all_masks(model, False)),
    ]
    for label, scheme_name in SCHEMES[model_name].items():
        for policy in POLICIES:
            masks = policy_masks(policy, model, scheme_name, inputs, labels, seed)
            if masks is None:
                continue
            paths = [("masked", "all"), ("engine", "all")]
            if policy == "su":
                paths.append(("engine-selected", "selected"))
            for path, bn_update in paths:
                conditions.append((Condition(model_name, path, policy, label, bn_update), masks))
    return conditions


# --- memory budgets -----------------------------------------------------------


def memory_conditions(
    model_name: str, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, seed: int, image_size: int
) -> list[tuple[Condition, Masks, ResolvedBudget]]:
    """The memory-budget conditions of one model: masks of every policy at the budgets of schemes 1, 3 and 5."""
    conditions: list[tuple[Condition, Masks, ResolvedBudget]] = []
    for number in ("1", "3", "5"):
        scheme_name = f"{MEMORY_SCHEMES[model_name]}_scheme_{number}"
        on_channels = build_budget(
            from_mapping(BudgetConfig, {"policy": "su", "unit": "input_channel", "scheme": scheme_name}), model, model_name=model_name, image_size=image_size
        )
        for label, (policy, unit) in MEMORY_POLICIES.items():
            # the scheme sets a memory budget on input channels, a parameter budget on neurons (velocity-weight);
            # velocity fills the input channels' memory budget with neurons
            values: dict[str, object] = {"policy": policy, "unit": unit, "scheme": scheme_name}
            if label == "velocity":
                values["memory"] = on_channels.amount
            budget = from_mapping(BudgetConfig, values, "budget")
            resolved = build_budget(budget, model, model_name=model_name, image_size=image_size)
            if policy == "su":
                masks = scheme_su_mask(model, budget, resolved)
            elif policy == "velocity":
                masks = velocity_masks(model, inputs, labels, resolved.amount, resolved.pricing)
            else:
                generator = torch.Generator().manual_seed(seed)
                masks = select_units("random", scores=None, pricing=resolved.pricing, budget=resolved.amount, generator=generator)
            for path, bn_update in (("masked", "all"), ("engine", "all"), ("engine-selected", "selected")):
                condition = Condition(model_name, path, label, number, bn_update, unit, memory_budget=resolved.kind == "memory")
                conditions.append((condition, masks, resolved))
    return conditions


# --- transformers -------------------------------------------------------------


def transformer_budgets(total: int) -> list[int]:
    """TraDy's SwinT budgets as the same shares of a model's full total (exactly TraDy's for SwinT's 31,889,952)."""
    return [round(budget * total / SWINT_TOTAL) for budget in SWINT_BUDGETS]


def transformer_conditions(label: str, start: nn.Module, seed: int, image_size: int) -> list[tuple[Condition, Masks, ResolvedBudget]]:
    """The transformer conditions of one model (a key of :data:`TRANSFORMERS`): full, bound, and random input features
    at the four budgets (masked, engine, engine with norms frozen beside frozen layers)."""
    name = TRANSFORMERS[label].name
    plain = build_budget(from_mapping(BudgetConfig, {"policy": "full"}, "budget"), start, model_name=name, image_size=image_size)
    conditions = [(Condition(label, "full"), all_masks(start, True), plain), (Condition(label, "bound"), all_masks(start, False), plain)]
    for number, amount in enumerate(transformer_budgets(network_memory(plain.costs)), start=1):
        budget = from_mapping(BudgetConfig, {"policy": "random", "unit": "input_channel", "memory": amount}, "budget")
        resolved = build_budget(budget, start, model_name=name, image_size=image_size)
        masks = select_units("random", scores=None, pricing=resolved.pricing, budget=resolved.amount, generator=torch.Generator().manual_seed(seed))
        for path, bn_update in (("masked", "all"), ("engine", "all"), ("engine-selected", "selected")):
            conditions.append((Condition(label, path, "random", str(number), bn_update, "input_channel", memory_budget=True), masks, resolved))
    return conditions
