"""From a budget section to a number, a pricing and a static mask.

``budget.unit`` says what is selected (``neuron``: output channels, the
study; ``input_channel``: TraDy's slices ``W[:, c]``), and the budget's kind
follows from the key that sets it:

- ``params`` / ``ratio`` (and, under ``unit: neuron``, ``scheme``): a
  parameter budget, counted in conv parameters (neurons, with their bias) or
  conv weight elements (input channels);
- ``memory`` (and, under ``unit: input_channel``, ``scheme``): weight plus
  conv-input activation elements per image (:mod:`neqtune.trainables.budget.costs`).

A scheme under ``unit: input_channel`` is tiny-training's sparse update on
input channels, and its budget is what that mask costs at the trial's image
size; where the scheme lists the budget TraDy printed for that size
(``memory`` in ``schemes.yaml``), the printed number is used. The two
differ only for ``mbv2-w0.35_scheme_1`` (28,282 computed, 27,946 printed);
its SU mask is then trimmed to fit (:func:`trim_to_budget`).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from neqtune.trainables.budget.costs import (
    BudgetKind,
    Fill,
    LayerCosts,
    Pricing,
    budget_pricing,
    channel_costs,
    mask_memory,
    network_memory,
)
from neqtune.trainables.budget.schemes import Scheme, get_scheme, su_update_mask
from neqtune.trainables.budget.units import Masks, Unit, budgeted_layers, channel_norms, conv_neuron_params, total_params
from neqtune.trainables.config import BudgetConfig, ConfigError


def budget_kind(budget: BudgetConfig) -> BudgetKind:
    """``memory`` when ``budget.memory`` is set or a scheme sets the budget under ``unit: input_channel``; else ``params``."""
    if budget.memory is not None:
        return "memory"
    if budget.params is None and budget.ratio is None and budget.scheme is not None and budget.unit == "input_channel":
        return "memory"
    return "params"


def fill_rule(budget: BudgetConfig) -> Fill:
    """``budget.fill``, where ``auto`` is the study's prefix for parameter budgets over neurons and skip otherwise."""
    if budget.fill != "auto":
        return budget.fill
    return "prefix" if budget.unit == "neuron" and budget_kind(budget) == "params" else "skip"


def resolve_budget(budget: BudgetConfig, total: int) -> int:
    """A parameter budget over neurons: ``params``, else ``int(total * ratio)``, else the scheme's; ``total`` without any.

    ``total``: all conv parameters of the model (neurons, with biases).
    """
    if budget.params is not None:
        return budget.params
    if budget.ratio is not None:
        return int(total * budget.ratio)
    if budget.scheme is not None:
        return get_scheme(budget.scheme).budget_params(total)
    return total


def scheme_memory(scheme: Scheme, model: nn.Module, costs: Mapping[str, LayerCosts], *, model_name: str, image_size: int) -> int:
    """The memory budget of an SU scheme on input channels: its printed value for the model and size, else its computed cost."""
    printed = scheme.memory.get(model_name, {}).get(image_size)
    if printed is not None:
        return printed
    if scheme.su is None:
        raise ConfigError("budget.scheme", f"{scheme.name} has no SU part, so it sets no memory budget; give budget.memory")
    mask = su_update_mask(
        model, manual_weight_idx=scheme.su.manual_weight_idx, weight_update_ratio=scheme.su.weight_update_ratio, unit="input_channel"
    )
    return mask_memory(mask, costs, "input_channel").elements


def check_scheme_fits(scheme: Scheme, model: nn.Module, unit: Unit) -> None:
    """Raise ConfigError unless the scheme's SU part fits ``model`` under ``unit``.

    Over neurons the study's rule holds (weight-updated convs inside the
    bias-updated tail); over input channels only the indices must exist,
    since biases are outside a memory budget.
    """
    if scheme.su is None:
        return
    if unit == "neuron":
        scheme.su.check_fits(model, scheme.name)
        return
    n_convs = len(budgeted_layers(model))
    for index in scheme.su.manual_weight_idx:
        if not 0 <= index < n_convs:
            raise ConfigError(
                "budget.scheme", f"{scheme.name}: manual_weight_idx {index} is out of range: the model has {n_convs} convs (0..{n_convs - 1})"
            )


@dataclass(frozen=True)
class ResolvedBudget:
    """A trial's budget, resolved against its model.

    Attributes:
        unit: what is selected.
        kind: ``params`` or ``memory``.
        amount: the budget, in parameters / weight elements (``params``) or
            weight + activation elements per image (``memory``).
        pricing: what each unit costs in that currency, and the fill rule.
        costs: the cost model of every conv at the trial's image size.
        memory: the memory budget in elements per image, or None for a
            parameter budget.
    """

    unit: Unit
    kind: BudgetKind
    amount: int
    pricing: Pricing
    costs: dict[str, LayerCosts]

    @property
    def memory(self) -> int | None:
        return self.amount if self.kind == "memory" else None


_MEASURED: weakref.WeakKeyDictionary[nn.Module, dict[int, dict[str, LayerCosts]]] = weakref.WeakKeyDictionary()


def model_costs(model: nn.Module, image_size: int) -> dict[str, LayerCosts]:
    """:func:`channel_costs` of ``model`` at ``image_size``, measured by one forward pass per model object and size.

    A space's check resolves every distinct budget against one shared model,
    and a forward pass per budget was most of a dry run's time; a model's
    layers do not change once it is built, so their sizes are measured once.
    """
    sizes = _MEASURED.setdefault(model, {})
    if image_size not in sizes:
        sizes[image_size] = channel_costs(model, image_size)
    return dict(sizes[image_size])


def build_budget(budget: BudgetConfig, model: nn.Module, *, model_name: str, image_size: int) -> ResolvedBudget:
    """Resolve ``budget`` for ``model`` (registered as ``model_name``) at ``image_size``, checking what only the model can tell.

    Raises:
        ConfigError: a scheme that does not fit the model where it sets the
            memory budget, or a memory budget below the cheapest unit or
            above the whole network.
    """
    if not budgeted_layers(model):
        raise ConfigError("model.name", f"model {model_name}: has no conv or Linear layer besides its classifier: a budget has nothing to select")
    try:
        costs = model_costs(model, image_size)
    except ValueError as err:  # a budgeted layer the forward pass never used, so it has no price
        raise ConfigError("model.name", f"model {model_name}: {err}") from None
    neuron_params = conv_neuron_params(model)
    kind = budget_kind(budget)
    scheme = get_scheme(budget.scheme) if budget.scheme else None
    if kind == "memory":
        if budget.memory_budget is not None:
            amount = budget.memory_budget
        else:  # the scheme's SU mask on input channels sets the budget (its fit for the su policy is checked with the mask)
            assert scheme is not None
            check_scheme_fits(scheme, model, budget.unit)
            amount = scheme_memory(scheme, model, costs, model_name=model_name, image_size=image_size)
        check_memory_budget(amount, costs, budget.unit, key="budget.memory" if budget.memory is not None else "budget.scheme")
    elif budget.unit == "neuron":
        amount = resolve_budget(budget, total_params(neuron_params))
    else:
        total_weight = sum(c.total_weight for c in costs.values())
        amount = budget.params if budget.params is not None else int(total_weight * budget.ratio) if budget.ratio is not None else total_weight
    pricing = budget_pricing(costs, neuron_params, unit=budget.unit, kind=kind, fill=fill_rule(budget))
    return ResolvedBudget(budget.unit, kind, amount, pricing, costs)


def layer_indices(layers: list[int | str], names: list[str], *, key: str) -> list[int]:
    """The module-order indices of a preselection given by index or by qualified layer name.

    Raises:
        ConfigError: (``key``) an index out of range, a name that is not a
            budgeted layer (a norm, the classifier, no such module), or a
            layer given twice.
    """
    indices: list[int] = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in names:
                shown = ", ".join(repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
                raise ConfigError(
                    key, f"layer {layer!r} is not budgeted: the budgeted layers are every conv and every Linear but the classifier ({shown})"
                )
            indices.append(names.index(layer))
        elif not 0 <= layer < len(names):
            raise ConfigError(key, f"conv index {layer} is out of range: the model has {len(names)} convs (0..{len(names) - 1})")
        else:
            indices.append(layer)
    if len(set(indices)) != len(indices):
        raise ConfigError(key, f"a layer is given twice: {layers}")
    return indices


def check_layer_list(layers: list[int | str], pricing: Pricing, amount: int, *, key: str) -> None:
    """Refuse an explicit preselection with an index out of range, a layer that is not budgeted, or whose layers cannot hold the budget.

    The layers hold the budget when all their units together cost at least
    ``amount``: a smaller preselection could never spend it.
    """
    names = list(pricing.unit_cost)
    indices = layer_indices(layers, names, key=key)
    held = sum(int(pricing.unit_cost[names[i]].sum()) for i in indices)
    if held < amount:
        raise ConfigError(
            key, f"convs {sorted(indices)} hold {held:,} elements in all, less than the budget of {amount:,}: they cannot hold it"
        )


def check_memory_budget(amount: int, costs: Mapping[str, LayerCosts], unit: Unit, *, key: str) -> None:
    """Refuse a memory budget that buys no unit at all, or more than the whole network holds."""
    total = network_memory(costs)
    # a unit alone: its weights plus the activations it needs (a neuron: its group's input, and its own bias element;
    # an input channel: the layer's bias too, which the first channel taken from a layer pays, as the pricing does)
    cheapest = min(int((conv.units(unit).weight + conv.units(unit).activation).min()) + (conv.bias if unit == "input_channel" else 0) for conv in costs.values())
    if amount < cheapest:
        raise ConfigError(key, f"memory budget {amount:,} elements is below the cheapest {unit} of the model ({cheapest:,} elements per image)")
    if amount > total:
        raise ConfigError(key, f"memory budget {amount:,} elements is above the whole network's {total:,} (all weights and biases of the budgeted layers + their inputs)")


def trim_to_budget(masks: Masks, model: nn.Module, resolved: ResolvedBudget) -> Masks:
    """Drop updated units of ``masks``, smallest weight norm first, until they fit the budget.

    Only a static mask whose cost exceeds the budget it defines needs this
    (``mbv2-w0.35_scheme_1`` on input channels); a mask that fits is
    returned unchanged.
    """
    spent = _spent(masks, resolved)
    if spent <= resolved.amount:
        return masks
    trimmed = {name: mask.clone() for name, mask in masks.items()}
    candidates: list[tuple[float, str, int]] = []
    for name, conv in budgeted_layers(model).items():
        norms = channel_norms(conv, resolved.unit)
        candidates += [(float(norms[i]), name, int(i)) for i in trimmed[name].nonzero().flatten()]
    for _norm, name, index in sorted(candidates):
        trimmed[name][index] = False
        if _spent(trimmed, resolved) <= resolved.amount:
            break
    return trimmed


def _spent(masks: Masks, resolved: ResolvedBudget) -> int:
    if resolved.kind == "memory":
        return mask_memory(masks, resolved.costs, resolved.unit).elements
    return int(sum(int(cost[masks[name].cpu()].sum()) for name, cost in resolved.pricing.unit_cost.items()))


def scheme_su_mask(model: nn.Module, budget: BudgetConfig, resolved: ResolvedBudget | None = None) -> Masks:
    """The static SU mask of the configured scheme in the budget's unit, checked against ``model``.

    With ``resolved`` given, a mask that costs more than the budget is
    trimmed to fit it.
    """
    scheme = get_scheme(budget.scheme) if budget.scheme else None
    if scheme is None or scheme.su is None:
        raise ConfigError(
            "budget.scheme",
            f"policy {budget.policy!r} with initialization {budget.initialization!r} needs a scheme with an SU part, got {budget.scheme!r}",
        )
    check_scheme_fits(scheme, model, budget.unit)
    masks = su_update_mask(
        model, manual_weight_idx=scheme.su.manual_weight_idx, weight_update_ratio=scheme.su.weight_update_ratio, unit=budget.unit
    )
    return trim_to_budget(masks, model, resolved) if resolved is not None else masks
