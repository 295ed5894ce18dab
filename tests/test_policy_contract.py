"""The public policy contract: every registered policy passes check_policy, and broken policies fail it by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import torch

from neqtune import check_policy
from neqtune.trainables.budget.units import Masks, Unit
from neqtune.trainables.policies import BudgetPolicy, Probe, policy_names
from neqtune.trainables.policies.contract import PolicyContractError


@pytest.mark.parametrize("name", policy_names())
def test_every_registered_policy_keeps_the_contract(name: str) -> None:
    check_policy(name)


@pytest.mark.parametrize("name", ["velocity", "trady"])
def test_the_contract_holds_on_a_vision_transformers_linear_layers(name: str) -> None:
    """The same checks on the small vit, whose units are Linear layers' (every policy on Linear units: test_linear_units)."""
    check_policy(name, model="vit")


class Overspending(BudgetPolicy):
    """Every unit, yet it claims to keep a budget."""

    units: ClassVar[tuple[Unit, ...]] = ("neuron",)

    def start(self, probe: Probe) -> Masks:
        return self.select("full")


class Forgetful(BudgetPolicy):
    """Redraws every second epoch; the count that decides it is not in its state_dict."""

    units: ClassVar[tuple[Unit, ...]] = ("neuron",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.epochs = 0

    @property
    def reselects_every_epoch(self) -> bool:
        return True

    def start(self, probe: Probe) -> Masks:
        return self.select("random")

    def reselect(self, probe: Probe) -> Masks | None:
        self.epochs += 1
        return self.select("random") if self.epochs % 2 == 1 else None


class Unseeded(BudgetPolicy):
    """Draws from torch's global generator after seeding it from the clock, not from the run's generator."""

    units: ClassVar[tuple[Unit, ...]] = ("neuron",)

    def start(self, probe: Probe) -> Masks:
        torch.seed()
        return {name: torch.rand(len(cost)) < 0.01 for name, cost in self.context.budget.pricing.unit_cost.items()}


class FloatMasks(BudgetPolicy):
    units: ClassVar[tuple[Unit, ...]] = ("neuron",)

    def start(self, probe: Probe) -> Masks:
        return {name: mask.float() for name, mask in self.select("random").items()}  # type: ignore[misc]


class LosesOnLoad(Forgetful):
    """Saves its count but loads nothing."""

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (Overspending, r"^budget: policy '[\w.]+Overspending' .*unit neuron: the first masks cost [\d,]+ parameters, above the budget of 55,920$"),
        (Forgetful, r"^resume: policy '[\w.]+Forgetful' .*chose different masks after epoch 2"),
        (LosesOnLoad, r"^round trip: policy '[\w.]+LosesOnLoad' .*load_state_dict drops or alters state"),
        (Unseeded, r"^seed: policy '[\w.]+Unseeded' .*two runs with the same seed chose different masks at the start"),
        (FloatMasks, r"^run: policy '[\w.]+FloatMasks' .*building the run raised ValueError: mask of conv 'features.0.0': a bool tensor"),
    ],
)
def test_a_broken_policy_fails_the_contract_by_name(policy: type[BudgetPolicy], message: str) -> None:
    with pytest.raises(PolicyContractError, match=message):
        check_policy(policy)
    assert policy.__qualname__ not in " ".join(policy_names())  # registered for the check only


def test_contract_errors_are_assertion_errors() -> None:
    assert issubclass(PolicyContractError, AssertionError)
