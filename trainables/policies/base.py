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
  in :mod:`neqtune.trainables.metrics`.

How a policy fills the budget is :func:`~neqtune.trainables.policies.fill.fill_budget`
under the run's pricing (the fill rule of ``budget.fill``). A new policy is
one subclass registered with :func:`register_policy` (see
:mod:`neqtune.trainables.policies.memory`) plus its entry in the contract tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import torch
from torch import nn

from neqtune.datasets.names import Registry
from neqtune.trainables.budget.costs import Pricing
from neqtune.trainables.budget.resolve import ResolvedBudget, scheme_su_mask
from neqtune.trainables.budget.units import UNITS, Masks, Unit
from neqtune.trainables.config import BudgetConfig
from neqtune.trainables.policies.fill import Policy as SelectionFn
from neqtune.trainables.policies.fill import Scores, select_units

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
        metrics: names of its own metrics (declared in :mod:`neqtune.trainables.metrics`).
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
_POLICIES: Registry[type[BudgetPolicy]] = Registry("policy", "policies")


def register_policy(name: str) -> Callable[[P], P]:
    """Class decorator that registers a :class:`BudgetPolicy` subclass under ``name`` (the value of ``budget.policy``)."""

    def add(cls: P) -> P:
        _POLICIES.add(name, cls)
        return cls

    return add


def policy_names() -> list[str]:
    """Names of every registered policy, the built-ins and the plug-ins', sorted."""
    return _POLICIES.names()


def get_policy(name: str) -> type[BudgetPolicy]:
    """The policy class registered as ``name``; ValueError listing the known ones otherwise."""
    return _POLICIES.get(name)


def needs_su_mask(budget: BudgetConfig) -> bool:
    """Whether the run uses the scheme's static SU mask (policy or first mask); the policy's lifecycle class says."""
    return get_policy(budget.policy).needs_scheme_mask(budget)


def policy_metric_names() -> list[str]:
    """The policies' own metric names, every registered policy's together (each declared in :mod:`neqtune.trainables.metrics`)."""
    names: list[str] = []
    for name in _POLICIES.names():
        names += [m for m in _POLICIES.get(name).metrics if m not in names]
    return names


def make_policy(context: PolicyContext) -> BudgetPolicy:
    """The lifecycle object of ``context.config.policy`` for one run."""
    return get_policy(context.config.policy)(context)


def initial_masks_of(policy: BudgetPolicy) -> Masks:
    """The first masks of a dynamic policy from ``budget.initialization``: all units, the scheme's SU mask, or a random fill."""
    ctx = policy.context
    if ctx.config.initialization == "full":
        return policy.select("full")
    if ctx.config.initialization == "su":
        return scheme_su_mask(ctx.model, ctx.config, ctx.budget)
    return policy.select("random")
