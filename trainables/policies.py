"""Which neurons are updated next epoch: selection policies and the SU mask.

A policy is a small pure function registered by name::

    policy(scores, neuron_params, budget, generator) -> masks

``masks`` holds, per conv, a bool tensor over output channels (True =
updated) whose parameter sum never exceeds ``budget``. Policies only select;
applying a mask to the update lives in :mod:`trainables.optim` and counting
in :mod:`trainables.neurons`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from trainables.neurons import Masks, conv_layers
from trainables.registry import Registry

Scores = Mapping[str, torch.Tensor]
NeuronParams = Mapping[str, torch.Tensor]
Policy = Callable[[Scores | None, NeuronParams, int, torch.Generator | None], Masks]

_POLICIES: Registry[Policy] = Registry("policy", "policies")


def register_policy(name: str) -> Callable[[Policy], Policy]:
    """Decorator that registers a selection policy under ``name``."""
    return _POLICIES.register(name)


def policy_names() -> list[str]:
    """Names of the registered selection policies, sorted."""
    return _POLICIES.names()


def get_policy(name: str) -> Policy:
    """The policy registered as ``name``; ValueError listing the known ones otherwise."""
    return _POLICIES.get(name)


def select_neurons(
    policy: str,
    *,
    scores: Scores | None,
    neuron_params: NeuronParams,
    budget: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Choose the neurons to update under a parameter budget.

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
    if budget < 0:
        raise ValueError(f"budget must be >= 0 parameters, got {budget}")
    return get_policy(policy)(scores, neuron_params, int(budget), generator)


def _split(flat: torch.Tensor, neuron_params: NeuronParams) -> Masks:
    """Cut a flat per-neuron mask back into per-conv masks."""
    sizes = [p.numel() for p in neuron_params.values()]
    return dict(zip(neuron_params, torch.split(flat, sizes), strict=True))


def _flat_params(neuron_params: NeuronParams) -> torch.Tensor:
    return torch.cat([p.reshape(-1).long().cpu() for p in neuron_params.values()])


def prefix_within_budget(order: torch.Tensor, params: torch.Tensor, budget: int) -> int:
    """Length of the longest prefix of ``order`` whose parameter sum is <= ``budget``.

    The fill stops at the first neuron that does not fit; it never skips
    ahead to a smaller one.
    """
    return int((torch.cumsum(params[order], dim=0) <= budget).sum())


@register_policy("velocity")
def velocity_policy(scores: Scores | None, neuron_params: NeuronParams, budget: int, generator: torch.Generator | None) -> Masks:
    """Rank all neurons of the network by ``|v| / p``, update the longest prefix within budget.

    Neurons whose score ties with the first excluded one are excluded too,
    as in the study's code.
    """
    if scores is None:
        raise ValueError("the velocity policy needs scores (the velocities)")
    if list(scores) != list(neuron_params):
        raise ValueError("scores and neuron_params must hold the same convs in the same order")
    params = _flat_params(neuron_params)
    velocity = torch.cat([s.reshape(-1).detach().double().cpu() for s in scores.values()])
    if velocity.numel() != params.numel():
        raise ValueError("scores must hold one value per neuron")
    score = velocity.abs() / params.double()
    ranked = torch.sort(score, descending=True, stable=True)
    n_fit = prefix_within_budget(ranked.indices, params, budget)
    if n_fit == score.numel():
        return _split(torch.ones_like(score, dtype=torch.bool), neuron_params)
    threshold = ranked.values[n_fit]
    return _split(score > threshold, neuron_params)


@register_policy("random")
def random_policy(scores: Scores | None, neuron_params: NeuronParams, budget: int, generator: torch.Generator | None) -> Masks:
    """Prefix fill over a uniformly random permutation of all neurons."""
    params = _flat_params(neuron_params)
    order = torch.randperm(params.numel(), generator=generator)
    n_fit = prefix_within_budget(order, params, budget)
    flat = torch.zeros(params.numel(), dtype=torch.bool)
    flat[order[:n_fit]] = True
    return _split(flat, neuron_params)


@register_policy("full")
def full_policy(scores: Scores | None, neuron_params: NeuronParams, budget: int, generator: torch.Generator | None) -> Masks:
    """Every neuron updated; the budget is ignored (the baseline)."""
    return {name: torch.ones(p.numel(), dtype=torch.bool) for name, p in neuron_params.items()}


def su_update_mask(
    model: nn.Module,
    *,
    manual_weight_idx: Sequence[int],
    weight_update_ratio: Sequence[float],
) -> dict[str, torch.Tensor]:
    """The static sparse-update (SU) mask of a scheme.

    Args:
        model: the network; convs are indexed in ``named_modules()`` order.
        manual_weight_idx: indices of the convs whose weights are updated.
        weight_update_ratio: for each of them, the share ``r`` of output
            neurons updated: the ``int(C_out * (1 - r))`` neurons with the
            smallest L2 weight norm are frozen, the rest updated.

    Returns:
        Per conv, bool over output channels (True = updated); every conv not
        listed is frozen entirely.
    """
    convs = list(conv_layers(model).items())
    if len(manual_weight_idx) != len(weight_update_ratio):
        raise ValueError(f"manual_weight_idx has {len(manual_weight_idx)} entries but weight_update_ratio has {len(weight_update_ratio)}")
    if len(set(manual_weight_idx)) != len(manual_weight_idx):
        raise ValueError(f"manual_weight_idx repeats an index: {list(manual_weight_idx)}")
    masks = {name: torch.zeros(conv.out_channels, dtype=torch.bool) for name, conv in convs}
    for index, ratio in zip(manual_weight_idx, weight_update_ratio, strict=True):
        if not 0 <= index < len(convs):
            raise ValueError(f"manual_weight_idx {index} is out of range: the model has {len(convs)} convs")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"weight_update_ratio {ratio} is outside [0, 1]")
        name, conv = convs[index]
        n_out = conv.out_channels
        n_frozen = int(n_out * (1 - ratio))
        norms = conv.weight.detach().reshape(n_out, -1).double().norm(dim=1).cpu()
        frozen = torch.sort(norms, stable=True).indices[:n_frozen]
        mask = torch.ones(n_out, dtype=torch.bool)
        mask[frozen] = False
        masks[name] = mask
    return masks
