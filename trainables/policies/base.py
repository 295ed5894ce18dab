"""One object per selection policy, owning its whole lifecycle; the trainer calls its hooks and nothing else.

Optuna's samplers are the model: one base class, :class:`BudgetPolicy`,
whose hooks the trainer calls at fixed points of a run, and one registered
subclass per policy. A policy declares

- what it needs (:attr:`BudgetPolicy.needs`): nothing, a velocity pass, or
  gradient norms, which it asks of the trainer's :class:`Probe`;
- which units it selects (:attr:`BudgetPolicy.units`) and whether it takes
  a layer preselection (:attr:`BudgetPolicy.preselects`), both checked when
  the config loads;
- its own options (:attr:`BudgetPolicy.options_type`, a dataclass), written
  under ``budget.options.<policy>`` and parsed and checked by the policy
  (:meth:`BudgetPolicy.parse_options`, :meth:`BudgetPolicy.check_fit`);

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
:mod:`neqtune.trainables.policies.memory`); the contract tests run
:func:`neqtune.trainables.policies.contract.check_policy` over every
registered policy, and a plug-in author runs it on theirs.

Why ``budget.options.<policy>.<key>`` (one mapping per policy) rather than
one ``budget.options`` for the chosen policy: a search over
``budget.policy`` (``{choice: [velocity, rgn]}``) samples every trial from
one base config, so the base must carry the options of every policy it may
pick, and a searched option must name its policy
(``search.params: {budget.options.velocity.mu: {uniform: [0.1, 0.9]}}``);
each trial's policy reads its own entry and the others' stay inert, as the
old flat keys (``velocity_mu`` beside ``rgn_refresh``) did. Every entry is
parsed by its policy, so a bad or unknown key is refused with its path
whichever policy a trial picks.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import torch
from torch import nn

from neqtune.datasets.names import Registry
from neqtune.datasets.parsing import ConfigError, from_mapping, join
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

    def gradient_norms(self, masks: Masks, batches: int) -> GradientNorms:
        """The gradient norms of the units True in ``masks`` (the engine computes only those), weights unchanged.

        ``batches``: how many training batches to average over (the same
        batches at every call of a run).
        """
        ...


@dataclass
class PolicyContext:
    """What a policy knows of its run.

    Attributes:
        config: the budget section.
        model: the network (its convs in ``named_modules()`` order).
        budget: the resolved budget: amount, pricing, cost model.
        generator: the policy's own random source (in the run's checkpoint).
        options: the policy's parsed options (an instance of its
            :attr:`BudgetPolicy.options_type`; None for a policy without
            options). :func:`make_policy` fills it from ``budget.options``.
    """

    config: BudgetConfig
    model: nn.Module
    budget: ResolvedBudget
    generator: torch.Generator
    options: Any = None


class BudgetPolicy:
    """Base class of the selection policies' lifecycles; the defaults are a static policy that needs nothing.

    Class attributes:
        needs: ``nothing``, ``velocity`` or ``gradient_norms``.
        units: the units it can select (the first is its own).
        unit_refusal: the message for another unit ("" = a generic one).
        preselects: selects inside a preselected set of layers (its
            :meth:`layers_selected` is a subset; reported, not enforced).
        needs_budget: refuses a run without a budget (False: ``full``).
        metrics: names of its own metrics (declared in :mod:`neqtune.trainables.metrics`).
        options_type: the dataclass of its options (``budget.options.<name>``),
            parsed with :func:`~neqtune.datasets.parsing.from_mapping` (unknown
            keys refused with their path, then its ``validate(path)``); None:
            it takes none.
    """

    needs: ClassVar[Need] = "nothing"
    units: ClassVar[tuple[Unit, ...]] = UNITS
    unit_refusal: ClassVar[str] = ""
    preselects: ClassVar[bool] = False
    needs_budget: ClassVar[bool] = True
    metrics: ClassVar[tuple[str, ...]] = ()
    options_type: ClassVar[type[Any] | None] = None

    def __init__(self, context: PolicyContext) -> None:
        self.context = context

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any] | None, path: str) -> Any:
        """Its options from the mapping ``raw`` (``budget.options.<name>``; None: the defaults), checked.

        Raises:
            ConfigError: an unknown key, a wrong type or range (named by its
                path under ``path``), or options given to a policy that takes none.
        """
        if cls.options_type is None:
            if raw:
                raise ConfigError(join(path, next(iter(raw))), "unknown key: this policy takes no options")
            return None
        return from_mapping(cls.options_type, raw, path)

    @classmethod
    def check_fit(cls, options: Any, budget: ResolvedBudget, path: str) -> None:
        """Refuse options that the run's model and budget cannot take (a conv index out of range); ConfigError."""

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


@contextlib.contextmanager
def registered_as(cls: type[BudgetPolicy]) -> Iterator[str]:
    """The name ``cls`` is registered under; an unregistered class is registered for the block's duration, under its qualified name."""
    name = next((known for known in _POLICIES.names() if _POLICIES.get(known) is cls), None)
    if name is not None:
        yield name
        return
    name = f"{cls.__module__}.{cls.__qualname__}"
    _POLICIES.add(name, cls)
    try:
        yield name
    finally:
        _POLICIES.remove(name)


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


def options_path(name: str) -> str:
    """The dotted key of policy ``name``'s options."""
    return f"budget.options.{name}"


def policy_options(budget: BudgetConfig) -> Any:
    """The chosen policy's parsed options (its defaults where ``budget.options`` has no entry for it)."""
    return get_policy(budget.policy).parse_options(budget.options.get(budget.policy), options_path(budget.policy))


def options_problems(budget: BudgetConfig) -> list[ConfigError]:
    """Every entry of ``budget.options`` parsed by its policy: unknown policies, keys, types and ranges."""
    found: list[ConfigError] = []
    for name, raw in budget.options.items():
        if name not in _POLICIES.names():
            found.append(ConfigError(options_path(name), f"unknown policy {name!r}; known policies: {', '.join(_POLICIES.names())}"))
            continue
        try:
            get_policy(name).parse_options(raw, options_path(name))
        except ConfigError as err:
            found.append(err)
    return found


def check_policy_fit(budget: BudgetConfig, resolved: ResolvedBudget) -> None:
    """Refuse options of the chosen policy that the resolved budget and its model cannot take (ConfigError)."""
    get_policy(budget.policy).check_fit(policy_options(budget), resolved, options_path(budget.policy))


def make_policy(context: PolicyContext) -> BudgetPolicy:
    """The lifecycle object of ``context.config.policy`` for one run, given its parsed and checked options."""
    options = policy_options(context.config)
    get_policy(context.config.policy).check_fit(options, context.budget, options_path(context.config.policy))
    return get_policy(context.config.policy)(dataclasses.replace(context, options=options))


def initial_masks_of(policy: BudgetPolicy) -> Masks:
    """The first masks of a dynamic policy from ``budget.initialization``: all units, the scheme's SU mask, or a random fill."""
    ctx = policy.context
    if ctx.config.initialization == "full":
        return policy.select("full")
    if ctx.config.initialization == "su":
        return scheme_su_mask(ctx.model, ctx.config, ctx.budget)
    return policy.select("random")
