"""One object per selection policy, owning its whole lifecycle; the trainer calls its hooks and nothing else.

Optuna's samplers are the model: one base class, :class:`BudgetPolicy`,
whose hooks the trainer calls at fixed points of a run, and one registered
subclass per policy. A policy declares

- what it needs (:attr:`BudgetPolicy.needs`): nothing, a velocity pass, or
  gradient norms, which it asks of the trainer's :class:`Probe`;
- which units it selects (:attr:`BudgetPolicy.units`) and whether it takes
  a layer preselection (:attr:`BudgetPolicy.preselects`), both checked when
  the config loads;

and implements

- :meth:`~BudgetPolicy.start`: the first epoch's masks;
- :meth:`~BudgetPolicy.observe_step`: after every training backward (the
  gradients of the trained units are at hand);
- :meth:`~BudgetPolicy.reselect`: after every epoch, new masks or None to
  keep the current ones;
- :meth:`~BudgetPolicy.state_dict` / :meth:`~BudgetPolicy.load_state_dict`:
  what goes into the checkpoint;
- :meth:`~BudgetPolicy.epoch_metrics`: its own per-epoch metrics, declared
  in :mod:`trainables.metrics`.

How a policy fills the budget is :func:`~trainables.policies.fill_budget`
under the run's pricing (the fill rule of ``budget.fill``). A new policy is
one subclass registered with :func:`register_budget_policy` (see
:mod:`trainables.memory_policies`) plus its entry in the contract tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import torch
from torch import nn

from trainables.budgets import ResolvedBudget, scheme_su_mask
from trainables.config import BudgetConfig
from trainables.costs import UNITS, Pricing, Unit
from trainables.neurons import Masks
from trainables.policies import Policy as SelectionFn
from trainables.policies import Scores, select_units
from trainables.registry import Registry
from trainables.velocity import VelocityTracker

Need = Literal["nothing", "velocity", "gradient_norms"]


@dataclass(frozen=True)
class GradientNorms:
    """Gradient norms measured over a few training batches, without a weight update.

    Attributes:
        units: per conv (module order), each unit's weight-gradient L2 norm,
            averaged over the batches (float64, CPU); 0 for units not measured.
        layers: per conv, the Frobenius norm of the measured part of its
            weight gradient, averaged over the batches.
        seconds: wall time of the measurement.
    """

    units: dict[str, torch.Tensor]
    layers: dict[str, float]
    seconds: float


class Probe(Protocol):
    """What the trainer measures for a policy on request."""

    def velocity_batches(self) -> Iterable[Any]:
        """The velocity split's batches."""
        ...

    def gradient_norms(self, masks: Masks) -> GradientNorms:
        """The gradient norms of the units True in ``masks`` (the engine computes only those), weights unchanged."""
        ...


@dataclass
class PolicyContext:
    """What a policy knows of its run.

    Attributes:
        config: the budget section.
        model: the network (its convs in ``named_modules()`` order).
        budget: the resolved budget: amount, pricing, cost model.
        generator: the policy's own random source (in the run's checkpoint).
    """

    config: BudgetConfig
    model: nn.Module
    budget: ResolvedBudget
    generator: torch.Generator


class BudgetPolicy:
    """Base class of the selection policies' lifecycles; the defaults are a static policy that needs nothing.

    Class attributes:
        needs: ``nothing``, ``velocity`` or ``gradient_norms``.
        units: the units it can select (the first is its own).
        unit_refusal: the message for another unit ("" = a generic one).
        preselects: takes ``budget.layers``.
        metrics: names of its own metrics (declared in :mod:`trainables.metrics`).
    """

    needs: ClassVar[Need] = "nothing"
    units: ClassVar[tuple[Unit, ...]] = UNITS
    unit_refusal: ClassVar[str] = ""
    preselects: ClassVar[bool] = False
    metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: PolicyContext) -> None:
        self.context = context

    @classmethod
    def needs_scheme_mask(cls, budget: BudgetConfig) -> bool:
        """Whether a run of this policy needs the scheme's static SU mask (checked when the space loads)."""
        return False

    @property
    def reselects_every_epoch(self) -> bool:
        """Whether :meth:`reselect` may return new masks (False: the first masks stay)."""
        return False

    # --- helpers -------------------------------------------------------------
    def select(self, policy: str | SelectionFn, scores: Scores | None = None, pricing: Pricing | None = None) -> Masks:
        """The masks the selection function ``policy`` (a registered name or the function) picks under the run's budget and pricing."""
        ctx = self.context
        pricing = pricing or ctx.budget.pricing
        if callable(policy):
            return policy(scores, pricing, ctx.budget.amount, ctx.generator)
        return select_units(policy, scores=scores, pricing=pricing, budget=ctx.budget.amount, generator=ctx.generator)

    def conv_names(self) -> list[str]:
        """The convs of the model, in order (the keys of every mask)."""
        return list(self.context.budget.costs)

    # --- hooks ---------------------------------------------------------------
    def start(self, probe: Probe) -> Masks:
        """The masks of the first epoch (called once, when the run is built)."""
        raise NotImplementedError

    def observe_step(self) -> None:
        """After each training backward, before the optimizer step: the trained units' gradients are in ``.grad``."""

    def reselect(self, probe: Probe) -> Masks | None:
        """After an epoch: the next epoch's masks, or None to keep the current ones."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint must hold to continue exactly (the run saves the generator)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` output."""

    def epoch_metrics(self, epoch_time_s: float) -> dict[str, Any]:
        """Its own metrics of the epoch just trained (names in :attr:`metrics`); ``epoch_time_s`` for overhead shares."""
        return {}

    def layers_selected(self) -> list[int]:
        """Indices of the convs it may select from (all, unless it preselects)."""
        return list(range(len(self.context.budget.costs)))


P = TypeVar("P", bound=type[BudgetPolicy])
_BUDGET_POLICIES: Registry[type[BudgetPolicy]] = Registry("policy", "policies")


def register_budget_policy(name: str) -> Callable[[P], P]:
    """Class decorator that registers a :class:`BudgetPolicy` subclass under ``name``."""

    def add(cls: P) -> P:
        _BUDGET_POLICIES.add(name, cls)
        return cls

    return add


def budget_policy_names() -> list[str]:
    """Names of every policy a run can use (the selection functions' and ``su``), sorted."""
    _load_builtin()
    return _BUDGET_POLICIES.names()


def get_budget_policy(name: str) -> type[BudgetPolicy]:
    """The lifecycle class registered as ``name``; ValueError listing the known ones otherwise."""
    _load_builtin()
    return _BUDGET_POLICIES.get(name)


def needs_su_mask(budget: BudgetConfig) -> bool:
    """Whether the run uses the scheme's static SU mask (policy or first mask); the policy's lifecycle class says."""
    return get_budget_policy(budget.policy).needs_scheme_mask(budget)


def policy_metric_names() -> list[str]:
    """The policies' own metric names, every registered policy's together (each declared in :mod:`trainables.metrics`)."""
    _load_builtin()
    names: list[str] = []
    for name in _BUDGET_POLICIES.names():
        names += [m for m in _BUDGET_POLICIES.get(name).metrics if m not in names]
    return names


def make_policy(context: PolicyContext) -> BudgetPolicy:
    """The lifecycle object of ``context.config.policy`` for one run."""
    return get_budget_policy(context.config.policy)(context)


def _load_builtin() -> None:
    """Register the memory-budget policies (their module imports this one)."""
    import trainables.memory_policies  # noqa: F401


def initial_masks_of(policy: BudgetPolicy) -> Masks:
    """The first masks of a dynamic policy from ``budget.initialization``: all units, the scheme's SU mask, or a random fill."""
    ctx = policy.context
    if ctx.config.initialization == "full":
        return policy.select("full")
    if ctx.config.initialization == "su":
        return scheme_su_mask(ctx.model, ctx.config, ctx.budget)
    return policy.select("random")


@register_budget_policy("full")
class FullPolicy(BudgetPolicy):
    """Every unit updated, the budget ignored (the baseline)."""

    def start(self, probe: Probe) -> Masks:
        return self.select("full")


@register_budget_policy("su")
class SuPolicy(BudgetPolicy):
    """The scheme's static sparse-update mask, in the budget's unit (trimmed to fit a smaller budget)."""

    @classmethod
    def needs_scheme_mask(cls, budget: BudgetConfig) -> bool:
        return True

    def start(self, probe: Probe) -> Masks:
        return scheme_su_mask(self.context.model, self.context.config, self.context.budget)

    def layers_selected(self) -> list[int]:
        scheme = self.context.config.scheme
        from trainables.schemes import get_scheme

        su = get_scheme(scheme).su if scheme else None
        return sorted(su.manual_weight_idx) if su is not None else []


@register_budget_policy("random")
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


@register_budget_policy("velocity")
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
