"""The study's policies: full, su (the scheme's static mask), random, and NEq velocity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from neqtune.datasets.parsing import join, require
from neqtune.trainables.budget.resolve import scheme_su_mask
from neqtune.trainables.budget.schemes import get_scheme
from neqtune.trainables.budget.units import Masks, Unit
from neqtune.trainables.config import BudgetConfig
from neqtune.trainables.policies.base import BudgetPolicy, Need, PolicyContext, Probe, initial_masks_of, register_policy
from neqtune.trainables.policies.velocity import VelocityTracker


@register_policy("full")
class FullPolicy(BudgetPolicy):
    """Every unit updated, the budget ignored (the baseline)."""

    needs_budget: ClassVar[bool] = False

    def start(self, probe: Probe) -> Masks:
        return self.select("full")


@register_policy("su")
class SuPolicy(BudgetPolicy):
    """The scheme's static sparse-update mask, in the budget's unit (trimmed to fit a smaller budget)."""

    @classmethod
    def needs_scheme_mask(cls, budget: BudgetConfig) -> bool:
        return True

    def start(self, probe: Probe) -> Masks:
        return scheme_su_mask(self.context.model, self.context.config, self.context.budget)

    def layers_selected(self) -> list[int]:
        scheme = self.context.config.scheme
        su = get_scheme(scheme).su if scheme else None
        return sorted(su.manual_weight_idx) if su is not None else []


@register_policy("random")
class RandomPolicy(BudgetPolicy):
    """A uniformly random fill over all units, redrawn after every epoch; the first from the initialization."""

    @classmethod
    def needs_scheme_mask(cls, budget: BudgetConfig) -> bool:
        return budget.initialization == "su"

    @property
    def reselects_every_epoch(self) -> bool:
        return True

    def start(self, probe: Probe) -> Masks:
        return initial_masks_of(self)

    def reselect(self, probe: Probe) -> Masks | None:
        return self.select("random")


@dataclass
class VelocityOptions:
    """``budget.options.velocity``: ``mu``, the velocity momentum in [0, 1] (0.5 in the study; formerly ``budget.velocity_mu``)."""

    mu: float = 0.5

    def validate(self, path: str) -> None:
        require(0 <= self.mu <= 1, join(path, "mu"), f"must lie in [0, 1], got {self.mu}")


@register_policy("velocity")
class VelocityPolicy(BudgetPolicy):
    """NEq velocity over output neurons: a velocity pass after every epoch, the top ``|v| / p`` neurons filled."""

    needs: ClassVar[Need] = "velocity"
    options_type: ClassVar[type[Any] | None] = VelocityOptions
    units: ClassVar[tuple[Unit, ...]] = ("neuron",)
    unit_refusal: ClassVar[str] = (
        "policy 'velocity' measures output neurons; it needs unit neuron (give it a memory budget to bound its memory)"
    )

    def __init__(self, context: PolicyContext) -> None:
        super().__init__(context)
        options = context.options if context.options is not None else VelocityOptions()
        self.tracker = VelocityTracker(context.model, options.mu)

    @classmethod
    def needs_scheme_mask(cls, budget: BudgetConfig) -> bool:
        return budget.initialization == "su"

    @property
    def reselects_every_epoch(self) -> bool:
        return True

    def start(self, probe: Probe) -> Masks:
        masks = initial_masks_of(self)
        self.tracker.observe(probe.velocity_batches())  # the baseline outputs (no gradients, eval mode: masks do not matter)
        return masks

    def reselect(self, probe: Probe) -> Masks | None:
        return self.select("velocity", self.tracker.observe(probe.velocity_batches()))

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracker.load_state_dict(dict(state["tracker"]))
