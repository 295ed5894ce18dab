"""Selection policies and SU masks: hand cases, then properties over random inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neqtune.trainables import select_neurons, su_update_mask
from neqtune.trainables.budget.schemes import get_scheme, scheme_names
from neqtune.trainables.budget.units import conv_neuron_params
from neqtune.trainables.config import ModelConfig
from neqtune.trainables.models.registry import build_model

PARAMS = {"a": torch.tensor([2, 2]), "b": torch.tensor([1, 1, 1])}
# |v|/p: a -> [2.0, 0.5]; b -> [1.5, 0.2, 3.0]; ranked b2(p1) a0(p2) b0(p1) a1(p2) b1(p1), cumsum 1 3 4 6 7
VELOCITY = {"a": torch.tensor([4.0, -1.0]), "b": torch.tensor([1.5, 0.2, -3.0])}

STUDY_SELECTIONS = ("full", "random", "velocity")


def chosen(masks: dict[str, torch.Tensor]) -> dict[str, list[bool]]:
    return {k: v.tolist() for k, v in masks.items()}


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (0, {"a": [False, False], "b": [False, False, False]}),
        (2, {"a": [False, False], "b": [False, False, True]}),  # a0 (p=2) does not fit: stop there
        (3, {"a": [True, False], "b": [False, False, True]}),  # exactly at budget
        (5, {"a": [True, False], "b": [True, False, True]}),  # 4 <= 5 < 6
        (7, {"a": [True, True], "b": [True, True, True]}),  # total
        (1000, {"a": [True, True], "b": [True, True, True]}),  # above total
    ],
)
def test_velocity_prefix_fill(budget: int, expected: dict[str, list[bool]]) -> None:
    masks = select_neurons("velocity", scores=VELOCITY, neuron_params=PARAMS, budget=budget)
    assert chosen(masks) == expected
    assert all(m.dtype == torch.bool for m in masks.values())


def test_velocity_does_not_skip_ahead_to_a_smaller_neuron() -> None:
    params = {"x": torch.tensor([5, 1])}
    masks = select_neurons("velocity", scores={"x": torch.tensor([50.0, 0.1])}, neuron_params=params, budget=4)
    assert masks["x"].tolist() == [False, False]


def test_velocity_excludes_neurons_tied_with_the_first_excluded() -> None:
    params = {"x": torch.ones(4, dtype=torch.long)}
    masks = select_neurons("velocity", scores={"x": torch.tensor([3.0, 2.0, 2.0, 1.0])}, neuron_params=params, budget=2)
    assert masks["x"].tolist() == [True, False, False, False]


def test_random_is_seeded_and_within_budget() -> None:
    params = {"a": torch.full((50,), 3), "b": torch.full((30,), 7)}
    draw = [
        select_neurons("random", scores=None, neuron_params=params, budget=100, generator=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert chosen(draw[0]) == chosen(draw[1])
    assert chosen(draw[0]) != chosen(draw[2])
    for masks in draw:
        used = sum(int(params[k][m].sum()) for k, m in masks.items())
        assert used <= 100
        assert used > 100 - 7  # the fill stops only when the next neuron (at most 7 parameters) does not fit


def test_full_updates_everything() -> None:
    masks = select_neurons("full", scores=None, neuron_params=PARAMS, budget=0)
    assert chosen(masks) == {"a": [True, True], "b": [True, True, True]}


def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown policy 'greedy'.*full, random, velocity"):
        select_neurons("greedy", scores=None, neuron_params=PARAMS, budget=3)


def test_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="budget"):
        select_neurons("full", scores=None, neuron_params=PARAMS, budget=-1)


layer_sizes = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 40)), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(
    layers=layer_sizes, budget=st.integers(0, 600), seed=st.integers(0, 2**31 - 1), policy=st.sampled_from(["velocity", "random", "full"])
)
def test_every_policy_stays_within_budget_with_right_shapes(layers: list[tuple[int, int]], budget: int, seed: int, policy: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    params = {f"l{i}": torch.full((n,), p, dtype=torch.long) for i, (n, p) in enumerate(layers)}
    scores = {k: torch.randn(v.numel(), generator=gen) for k, v in params.items()}
    masks = select_neurons(policy, scores=scores, neuron_params=params, budget=budget, generator=gen)
    assert list(masks) == list(params)
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == params[name].shape
    used = sum(int(params[k][m].sum()) for k, m in masks.items())
    total = sum(int(p.sum()) for p in params.values())
    if policy == "full":
        assert used == total
    else:
        assert used <= budget
        if budget >= total:
            assert used == total


@settings(max_examples=50, deadline=None)
@given(layers=layer_sizes, budget=st.integers(0, 600), seed=st.integers(0, 2**31 - 1))
def test_policies_repeat_under_the_same_seed(layers: list[tuple[int, int]], budget: int, seed: int) -> None:
    params = {f"l{i}": torch.full((n,), p, dtype=torch.long) for i, (n, p) in enumerate(layers)}
    scores = {k: torch.randn(v.numel(), generator=torch.Generator().manual_seed(seed)) for k, v in params.items()}
    for policy in STUDY_SELECTIONS:
        a = select_neurons(policy, scores=scores, neuron_params=params, budget=budget, generator=torch.Generator().manual_seed(seed))
        b = select_neurons(policy, scores=scores, neuron_params=params, budget=budget, generator=torch.Generator().manual_seed(seed))
        assert chosen(a) == chosen(b)


def test_su_mask_freezes_smallest_norm_output_channels(small_net: nn.Module) -> None:
    with torch.no_grad():
        # conv c has 8 output neurons; give neuron i the norm (i * 7) % 8 + 1
        norms = torch.tensor([(i * 7) % 8 + 1 for i in range(8)], dtype=torch.float32)
        small_net.c.weight.copy_(norms.view(8, 1, 1, 1).expand(8, 4, 1, 1) / 2)
    masks = su_update_mask(small_net, manual_weight_idx=[2, 0], weight_update_ratio=[0.25, 1.0])
    # r = 0.25 on 8 neurons: int(8 * 0.75) = 6 smallest-norm frozen, the 2 largest (norms 8 and 7) updated
    assert masks["c"].tolist() == [bool(n >= 7) for n in norms.tolist()]
    assert masks["a"].tolist() == [True] * 4  # r = 1: everything
    assert masks["b"].tolist() == [False] * 4  # not listed: frozen


def test_su_mask_ratio_zero_freezes_the_conv(small_net: nn.Module) -> None:
    masks = su_update_mask(small_net, manual_weight_idx=[1], weight_update_ratio=[0.0])
    assert not any(m.any() for m in masks.values())


@pytest.mark.parametrize(
    "bad",
    [
        {"manual_weight_idx": [3], "weight_update_ratio": [1.0]},
        {"manual_weight_idx": [0], "weight_update_ratio": [1.5]},
        {"manual_weight_idx": [0, 1], "weight_update_ratio": [1.0]},
    ],
)
def test_su_mask_rejects_bad_schemes(small_net: nn.Module, bad: dict[str, list[float]]) -> None:
    with pytest.raises(ValueError):
        su_update_mask(small_net, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", [n for n in scheme_names() if n.startswith("mbv2-w0.35_")])
def test_su_schemes_of_mbv2_w035_update_exactly_their_budget(scheme: str) -> None:
    # The study's absolute budgets for mbv2-w0.35 are the parameter counts of its SU masks.
    model = build_model(ModelConfig(name="mbv2-w0.35"), 10)
    su = get_scheme(scheme).su
    assert su is not None
    masks = su_update_mask(model, manual_weight_idx=su.manual_weight_idx, weight_update_ratio=su.weight_update_ratio)
    params = conv_neuron_params(model)
    assert sum(int(params[k][m].sum()) for k, m in masks.items()) == get_scheme(scheme).budget
