"""What trains under a budget: every parameter of a model is budgeted, trained outside the budget, or frozen.

A budget prices units of ``nn.Conv2d`` and ``nn.Linear`` layers (:mod:`neqtune.trainables.budget.units`).
Every entry of ``model.named_parameters()`` falls in exactly one of three kinds:

- **budgeted**: the weights and biases of the convs and of the Linear
  layers but the classifier, the units a policy selects; only the
  selected ones train, and the budget counts them (a bias with its neuron,
  or under input channels once with its layer's first selected channel);
- **outside** the budget: the normalisation layers (as ``budget.bn_update``
  says: ``all`` trains them always, ``selected`` only after a layer that
  holds a selected unit, so their count here is a ceiling) and the
  classifier (the last ``nn.Linear``, the study's rule: it is always
  trained and never counted);
- **frozen**: everything else: class tokens, position embeddings, relative
  position bias tables, the packed input projection of
  ``nn.MultiheadAttention`` (a parameter, not an ``nn.Linear``), any other
  layer's parameters.

Why freeze the rest rather than train it beside the budget: a trial's
budget is the claim its result rows make ("10 % of the parameters"). On an
MLP-mixer a 10 % budget once reported 579 parameters updated while 10,693
Linear parameters trained in full; such a row compares a nearly full
fine-tuning with genuinely budgeted runs and nothing in it says so. Frozen,
the claim stays true: what trains is the budget plus the study's declared
set (norms, classifier), and the frozen count says what the budget could not
reach. Swin-T's relative-position tables alone hold 23,322 parameters, most
of TraDy's smallest budget (27,946): trained beside it they would double
what a row claims, and TraDy's printed totals do not count them either.

Under the ``full`` policy there is no budget: every parameter trains
(budgeted layers have all their units selected, everything else is outside).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from torch import nn

from neqtune.trainables.budget.units import NORM_TYPES, budgeted_layers
from neqtune.trainables.config import BudgetConfig
from neqtune.trainables.models.registry import classifier_name

Kind = Literal["budgeted", "outside", "frozen"]
"""Where a parameter stands under a budget (module docstring)."""


@dataclass(frozen=True)
class ParameterAccount:
    """Every parameter of a model by kind, with its element count.

    Attributes:
        kinds: parameter name (``named_parameters()``) -> its kind.
        sizes: parameter name -> its number of elements.
        reasons: parameter name -> why it is outside the budget or frozen
            (``norm``, ``classifier``, a layer type such as ``Linear``, or
            ``parameter`` for one held by a container: a class token); absent for budgeted ones.
        layers: parameter name -> the layer it belongs to, for messages (its
            module's name; a container's own parameter is named as itself).
    """

    kinds: dict[str, Kind]
    sizes: dict[str, int]
    reasons: dict[str, str]
    layers_of: dict[str, str]

    def names(self, kind: Kind) -> list[str]:
        """Names of the parameters of ``kind``, in ``named_parameters()`` order."""
        return [name for name, k in self.kinds.items() if k == kind]

    def count(self, kind: Kind) -> int:
        """Elements of the parameters of ``kind``."""
        return sum(self.sizes[name] for name in self.names(kind))

    @property
    def budgeted(self) -> int:
        """Parameters of the budgeted layers (weights and biases of the convs and Linear layers but the classifier)."""
        return self.count("budgeted")

    @property
    def outside(self) -> int:
        """Parameters that train outside the budget (norms, the classifier); a ceiling under ``bn_update: selected``."""
        return self.count("outside")

    @property
    def frozen(self) -> int:
        """Parameters that never train under the budget."""
        return self.count("frozen")

    def layers(self, kind: Kind) -> list[str]:
        """The layers (module names; a parameter of its own is named as itself) holding parameters of ``kind``, in order."""
        return list(dict.fromkeys(self.layers_of[name] for name in self.names(kind)))

    def reasons_of(self, kind: Kind) -> list[str]:
        """The distinct reasons of the parameters of ``kind``, in order of first appearance."""
        return list(dict.fromkeys(self.reasons[name] for name in self.names(kind)))


def _classifier(model: nn.Module) -> str | None:
    """The classifier's module name (:func:`~neqtune.trainables.models.registry.classifier_name`), or None without an ``nn.Linear``."""
    try:
        return classifier_name(model)
    except ValueError:
        return None


def _owned_parameters(model: nn.Module) -> Iterator[tuple[str, str, nn.Module, int]]:
    """``(parameter name, owning module's name, owning module, elements)`` for every parameter, once."""
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            yield (f"{module_name}.{leaf}" if module_name else leaf), module_name, module, param.numel()


def account_parameters(model: nn.Module, budget: BudgetConfig) -> ParameterAccount:
    """Classify every parameter of ``model`` under ``budget`` (module docstring); pure, the model is not changed.

    Args:
        model: the network.
        budget: the budget section; ``policy`` (``full`` trains everything)
            and ``bn_update`` decide.

    Returns:
        The kind, size and reason of every parameter.
    """
    head = _classifier(model)
    budgeted = set(budgeted_layers(model))
    everything = budget.policy == "full"
    kinds: dict[str, Kind] = {}
    sizes: dict[str, int] = {}
    reasons: dict[str, str] = {}
    layers: dict[str, str] = {}
    for name, module_name, module, size in _owned_parameters(model):
        sizes[name] = size
        loose = not module_name or next(module.children(), None) is not None  # held by a container, not by a layer
        layers[name] = name if loose else module_name
        if module_name in budgeted and not loose:
            kinds[name] = "budgeted"
            continue
        if isinstance(module, NORM_TYPES):
            kinds[name], reasons[name] = "outside", "norm"
        elif head is not None and module_name == head:
            kinds[name], reasons[name] = "outside", "classifier"
        else:
            kinds[name] = "outside" if everything else "frozen"
            reasons[name] = "parameter" if loose else type(module).__name__
    return ParameterAccount(kinds, sizes, reasons, layers)


ALWAYS_TRAINED = {"norm": "the normalisation layers", "classifier": "the classifier"}

UNBUDGETED_WHY = {
    "parameter": (
        "parameters of no layer (class tokens, position embeddings, relative-position tables, "
        "nn.MultiheadAttention's packed input projection) are not budgeted units"
    ),
}


def outside_warning(model_name: str, account: ParameterAccount, budget_amount: int, *, unit: str = "parameters") -> str | None:
    """The warning line of a model whose parameters outside the budget exceed the budget itself, else None.

    Args:
        model_name: the registered model name, for the message.
        account: its :func:`account_parameters`.
        budget_amount: the budget, in parameters (a parameter budget) or
            elements per image (a memory budget: each parameter outside
            counts as one weight element, its activations not counted, so
            the comparison is a lower bound of what it would cost).
        unit: the budget's unit in words.
    """
    if account.outside <= budget_amount:
        return None
    layers = account.layers("outside")
    shown = ", ".join(layers[:4]) + (", ..." if len(layers) > 4 else "")
    trained = [ALWAYS_TRAINED.get(reason, reason) for reason in account.reasons_of("outside")]
    why = " and ".join(trained) + " always train, outside any budget"
    return (
        f"warning: model {model_name}: {account.outside:,} parameters in {len(layers)} layers train outside "
        f"the budget of {budget_amount:,} {unit} ({shown}): {why}"
    )


def frozen_note(model_name: str, account: ParameterAccount) -> str | None:
    """The line naming what a budget freezes in ``model_name`` (parameters of no budgeted layer, norm or classifier), else None."""
    if not account.frozen:
        return None
    layers = account.layers("frozen")
    shown = ", ".join(layers[:4]) + (", ..." if len(layers) > 4 else "")
    why = "; ".join(UNBUDGETED_WHY.get(reason, f"{reason} layers are not budgeted units") for reason in account.reasons_of("frozen"))
    return f"note: model {model_name}: {account.frozen:,} parameters in {len(layers)} layers are frozen under a budget ({shown}): {why}"
