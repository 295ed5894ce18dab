"""Which channels are updated next epoch: selection policies and the SU masks.

A policy is a small pure function registered by name::

    policy(scores, pricing, budget, generator) -> masks

``pricing`` (:class:`~neqtune.trainables.budget.costs.Pricing`) says what each unit (a
neuron or an input channel) costs against the budget and how an ordered
list of units fills it; ``masks`` holds, per conv, a bool tensor over those
units (True = updated) whose cost never exceeds ``budget``. Policies only
select; applying a mask to the update lives in :mod:`neqtune.trainables.update.engine` and
:mod:`neqtune.trainables.update.optim`, pricing in :mod:`neqtune.trainables.budget.costs`.

Two fill rules walk a ranked order of units:

- ``prefix`` (the study): take the longest prefix that fits; stop at the
  first unit that does not.
- ``skip``: take every unit that still fits, in order, skipping those that
  do not, until the order ends. Used for memory budgets, where one
  high-resolution channel can cost as much as a hundred late ones and a
  prefix would stop far below the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from neqtune.trainables.budget.costs import Pricing
from neqtune.trainables.budget.units import Masks

Scores = Mapping[str, torch.Tensor]
NeuronParams = Mapping[str, torch.Tensor]
Policy = Callable[[Scores | None, Pricing, int, torch.Generator | None], Masks]

def select_neurons(
    policy: str,
    *,
    scores: Scores | None,
    neuron_params: NeuronParams,
    budget: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Choose the neurons to update under a parameter budget (the study's setting).

    Args:
        policy: ``"velocity"``, ``"random"``, ``"full"`` or any other
            registered name (:func:`policy_names`).
        scores: per conv, one score per output neuron; for ``"velocity"``
            the velocities from :class:`~trainables.VelocityTracker`. Ignored
            by ``"random"`` and ``"full"`` (may be ``None``).
        neuron_params: per conv, parameters of each neuron
            (:func:`~trainables.conv_neuron_params`).
        budget: most conv parameters that may be updated (a count).
        generator: random source for ``"random"``; the global one if None.

    Returns:
        Per conv, a bool tensor over output channels, True = updated, in the
        key order of ``neuron_params``.
    """
    return select_units(policy, scores=scores, pricing=Pricing.of(neuron_params), budget=budget, generator=generator)


def select_units(
    policy: str,
    *,
    scores: Scores | None,
    pricing: Pricing,
    budget: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Choose the units (neurons or input channels) to update under any budget.

    Args:
        policy: a registered policy name.
        scores: per conv, one score per unit (velocities for ``"velocity"``).
        pricing: what each unit costs and the fill rule
            (:func:`~neqtune.trainables.budget.costs.budget_pricing`).
        budget: the most that may be spent, in the pricing's currency
            (parameters, or weight + activation elements per image).
        generator: random source for ``"random"``.

    Returns:
        Per conv, a bool tensor over its units, True = updated.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    try:
        fill = FILLS[policy]
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; known policies: full, random, velocity (the study's), medyate, rgn, trady (the memory-budget ones)") from None
    return fill(scores, pricing, int(budget), generator)


def _split(flat: torch.Tensor, pricing: Pricing) -> Masks:
    """Cut a flat per-unit mask back into per-conv masks."""
    sizes = [p.numel() for p in pricing.unit_cost.values()]
    return dict(zip(pricing.unit_cost, torch.split(flat, sizes), strict=True))


def prefix_within_budget(order: torch.Tensor, params: torch.Tensor, budget: int) -> int:
    """Length of the longest prefix of ``order`` whose parameter sum is <= ``budget``.

    The fill stops at the first neuron that does not fit; it never skips
    ahead to a smaller one.
    """
    return int((torch.cumsum(params[order], dim=0) <= budget).sum())


def fill_budget(order: torch.Tensor, pricing: Pricing, budget: int) -> torch.Tensor:
    """Walk ``order`` (flat unit indices) and take what fits in ``budget``, by the pricing's fill rule.

    A unit costs its own price plus, when it is the first unit taken from
    its group (the neurons reading one input), the group's shared price.

    Returns:
        A flat bool mask over all units, True = taken.
    """
    costs = pricing.flat_unit_cost()
    taken = torch.zeros(costs.numel(), dtype=torch.bool)
    if pricing.group_cost is None and pricing.fill == "prefix":
        taken[order[: prefix_within_budget(order, costs, budget)]] = True
        return taken
    unit_cost = costs.tolist()
    group_of = pricing.flat_group_of().tolist() if pricing.group_cost is not None else None
    group_cost = pricing.flat_group_cost().tolist() if pricing.group_cost is not None else None
    opened: set[int] = set()
    spent = 0
    chosen: list[int] = []
    for index in order.tolist():
        price = unit_cost[index]
        group = -1
        if group_of is not None and group_cost is not None:
            group = group_of[index]
            if group not in opened:
                price += group_cost[group]
        if spent + price <= budget:
            spent += price
            chosen.append(index)
            if group >= 0:
                opened.add(group)
        elif pricing.fill == "prefix":
            break
    taken[chosen] = True
    return taken


def velocity_policy(scores: Scores | None, pricing: Pricing, budget: int, generator: torch.Generator | None) -> Masks:
    """Rank all neurons of the network by ``|v| / p``, update what fits by the fill rule.

    ``p`` is the neuron's ranking cost (its parameters under a parameter
    budget). With the prefix fill, neurons whose score ties with the first
    excluded one are excluded too, as in the study's code.
    """
    if scores is None:
        raise ValueError("the velocity policy needs scores (the velocities)")
    if list(scores) != list(pricing.unit_cost):
        raise ValueError("scores and the pricing must hold the same convs in the same order")
    velocity = torch.cat([s.reshape(-1).detach().double().cpu() for s in scores.values()])
    cost = pricing.flat_rank_cost()
    if velocity.numel() != cost.numel():
        raise ValueError("scores must hold one value per neuron")
    score = velocity.abs() / cost
    ranked = torch.sort(score, descending=True, stable=True)
    taken = fill_budget(ranked.indices, pricing, budget)
    if pricing.fill == "prefix" and pricing.group_cost is None:
        n_fit = int(taken.sum())
        if n_fit == score.numel():
            return _split(taken, pricing)
        taken = score > ranked.values[n_fit]
    return _split(taken, pricing)


def random_policy(scores: Scores | None, pricing: Pricing, budget: int, generator: torch.Generator | None) -> Masks:
    """The fill over a uniformly random permutation of all units, redrawn at every call."""
    order = torch.randperm(pricing.flat_unit_cost().numel(), generator=generator)
    return _split(fill_budget(order, pricing, budget), pricing)


def full_policy(scores: Scores | None, pricing: Pricing, budget: int, generator: torch.Generator | None) -> Masks:
    """Every unit updated; the budget is ignored (the baseline)."""
    return {name: torch.ones(p.numel(), dtype=torch.bool) for name, p in pricing.unit_cost.items()}


def trady_policy(scores: Scores | None, pricing: Pricing, budget: int, generator: torch.Generator | None) -> Masks:
    """TraDy's draw: the fill over a uniformly random permutation of the units priced.

    The same draw as ``random``; TraDy differs by what it is given: the
    pricing of its preselected layers only (:mod:`neqtune.trainables.policies.memory`).
    Like ``rgn_policy`` and ``medyate_policy``, it is not in the registry of
    :func:`select_units` (that one stays the study's three), only the
    lifecycle registry of :mod:`neqtune.trainables.policies.base` holds the policy.
    """
    return random_policy(scores, pricing, budget, generator)


def rgn_policy(scores: Scores | None, pricing: Pricing, budget: int, generator: torch.Generator | None) -> Masks:
    """Deterministic reweighted gradient norm: rank units by ``g / cost``, highest first, and fill.

    ``scores`` hold each unit's gradient norm ``g``; the cost is the unit's
    ranking cost (weight + input plane under a memory budget on input
    channels). Ties keep the units' network order.
    """
    if scores is None:
        raise ValueError("the rgn policy needs scores (the gradient norms)")
    score = _flat_scores(scores, pricing) / pricing.flat_rank_cost()
    return _split(fill_budget(torch.sort(score, descending=True, stable=True).indices, pricing, budget), pricing)


def medyate_policy(scores: Scores | None, pricing: Pricing, budget: int, generator: torch.Generator | None) -> Masks:
    """MeDyate's draw: units drawn without replacement with probability proportional to ``scores``, then the fill.

    Without scores (its first epoch) the draw is uniform. A unit whose score
    is 0 is never drawn (unless every score is 0: then uniform). The draw
    without replacement is the exponential-keys one: unit ``i`` gets the key
    ``E_i / w_i`` with ``E_i`` exponential, and units are taken in
    increasing key order.
    """
    n = pricing.flat_unit_cost().numel()
    if scores is None:
        return random_policy(scores, pricing, budget, generator)
    weight = _flat_scores(scores, pricing)
    if bool((weight < 0).any()) or not bool(torch.isfinite(weight).all()):
        raise ValueError("medyate scores must be finite and >= 0")
    if not bool((weight > 0).any()):
        return random_policy(None, pricing, budget, generator)
    exponential = -torch.log1p(-torch.rand(n, generator=generator, dtype=torch.float64))
    keys = exponential / weight
    order = torch.sort(keys, stable=True).indices
    order = order[weight[order] > 0]
    return _split(fill_budget(order, pricing, budget), pricing)


def _flat_scores(scores: Scores, pricing: Pricing) -> torch.Tensor:
    """``scores`` concatenated in the pricing's conv order, float64 on the CPU; ValueError when they do not match."""
    if list(scores) != list(pricing.unit_cost):
        raise ValueError("scores and the pricing must hold the same convs in the same order")
    flat = torch.cat([s.reshape(-1).detach().double().cpu() for s in scores.values()])
    if flat.numel() != pricing.flat_unit_cost().numel():
        raise ValueError("scores must hold one value per unit")
    return flat


def restrict_pricing(pricing: Pricing, names: Sequence[str]) -> Pricing:
    """The pricing of the convs ``names`` only (in the pricing's order): what a policy over preselected layers sees."""
    keep = [name for name in pricing.unit_cost if name in set(names)]
    return Pricing(
        unit_cost={name: pricing.unit_cost[name] for name in keep},
        fill=pricing.fill,
        group_cost=None if pricing.group_cost is None else {name: pricing.group_cost[name] for name in keep},
        group_of=None if pricing.group_of is None else {name: pricing.group_of[name] for name in keep},
    )


FILLS: dict[str, Policy] = {
    "full": full_policy,
    "medyate": medyate_policy,
    "random": random_policy,
    "rgn": rgn_policy,
    "trady": trady_policy,
    "velocity": velocity_policy,
}
"""The selection functions by name, for :func:`select_units` (a fixed table: policies are registered as classes, in
:mod:`neqtune.trainables.policies.base`)."""
