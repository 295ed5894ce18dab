"""The study's policies: full, su (the scheme's static mask), random, and NEq velocity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from neqtune.trainables.budget.resolve import scheme_su_mask
from neqtune.trainables.budget.schemes import get_scheme
from neqtune.trainables.budget.units import Masks, Unit
from neqtune.trainables.config import BudgetConfig
from neqtune.trainables.policies.base import BudgetPolicy, Need, PolicyContext, Probe, initial_masks_of, register_policy
from neqtune.trainables.policies.velocity import VelocityTracker


@register_policy("full")
class FullPolicy(BudgetPolicy):
    """Every unit updated, the budget ignored (the baseline)."""

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


@register_policy("velocity")
class VelocityPolicy(BudgetPolicy):
    """NEq velocity over output neurons: a velocity pass after every epoch, the top ``|v| / p`` neurons filled."""

    needs: ClassVar[Need] = "velocity"
    units: ClassVar[tuple[Unit, ...]] = ("neuron",)
    unit_refusal: ClassVar[str] = (
        "policy 'velocity' measures output neurons; it needs unit neuron (give it a memory budget to bound its memory)"
    )

    def __init__(self, context: PolicyContext) -> None:
        super().__init__(context)
        self.tracker = VelocityTracker(context.model, context.config.velocity_mu)

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
