"""The public contract of a selection policy, checked the way scikit-learn's ``check_estimator`` checks an estimator.

:func:`check_policy` runs a policy through the trainer's own run
(:class:`~neqtune.trainables.trainer.BudgetedRun`: built, stepped epoch by
epoch, checkpointed, resumed) on a network and data that need no download
(``mbv2-w0.35``, or the model asked for, on scikit-learn's 8x8 digits, two
epochs of three steps, on the CPU with one thread), once for every unit the policy selects, and
checks that

- **masks**: every mask set (the first, and each epoch's) has one 1-D bool
  tensor per budgeted layer (conv or Linear), keyed by its name, as long as the layer has units;
- **budget**: its cost under the run's pricing (parameters, or weight and
  activation elements) never exceeds the budget (unless the policy declares
  ``needs_budget = False``, as ``full`` does);
- **frozen**: the weights of the units left out stay bit-identical through
  an epoch of training (with momentum and weight decay);
- **seed**: a second run with the same seed picks the same first masks and
  the same masks after its first epoch;
- **round trip**: a fresh run loading a checkpoint (``state_dict`` through
  ``torch.save``) holds the same policy state and masks;
- **resume**: the resumed run's next epoch equals the uninterrupted run's.

An error raised while the run is built or stepped (the engine refusing a
mask of the wrong dtype, say) is a ``run`` failure. A failure raises
:class:`PolicyContractError` (an ``AssertionError``) naming the property,
the policy and the unit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import torch

from neqtune.trainables.budget.costs import mask_memory
from neqtune.trainables.budget.resolve import ResolvedBudget
from neqtune.trainables.budget.units import Masks, Unit, budgeted_layers, frozen_bias_elements, frozen_weight_elements
from neqtune.trainables.config import TrialConfig
from neqtune.trainables.policies.base import BudgetPolicy, get_policy, registered_as
from neqtune.trainables.trainer import BudgetedRun, run_epoch

__all__ = ["PolicyContractError", "check_policy"]

MEMORY_BUDGET = 1500  # elements per image; mbv2-w0.35 at 8 px holds 32,432
SCHEME = "mbv2-w0.35_scheme_3"  # the static SU mask (su, the su initialization); under unit neuron, the budget
TIMING = ("epoch_time_s", "velocity_time_s", "ranking_time_s", "grad_norm_time_s", "grad_norm_overhead_pct")


class PolicyContractError(AssertionError):
    """A policy broke its contract; the message names the property, the policy and the unit."""


def check_policy(
    policy: type[BudgetPolicy] | str, *, options: Mapping[str, Any] | None = None, epochs: int = 2, model: str = "mbv2-w0.35"
) -> None:
    """Check that ``policy`` keeps the contract every selection policy keeps (see the module docstring).

    Args:
        policy: a :class:`BudgetPolicy` subclass, registered or not (an
            unregistered one is registered for the check and removed after),
            or a registered policy name.
        options: its options (``budget.options.<name>``); its defaults if None.
        epochs: epochs of each run (>= 2: the resume check restarts after the first).
        model: the network, a registered name: ``mbv2-w0.35`` (convs only, the
            study's scheme 3 and its SU mask) or any other, for instance ``vit``
            (neqtune's small vision transformer: its units are Linear layers'),
            budgeted at a ratio of 0.2 from a random start (no SU mask: ``su``
            and the ``su`` initialization need the default).

    Raises:
        PolicyContractError: the first property that does not hold.
    """
    cls = get_policy(policy) if isinstance(policy, str) else policy
    if not (isinstance(cls, type) and issubclass(cls, BudgetPolicy)):
        raise TypeError(f"check_policy takes a BudgetPolicy subclass or a registered name, got {policy!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small gains nothing from threads, and loses much on a shared machine
    try:
        with registered_as(cls) as name:
            for unit in cls.units:
                _check_unit(cls, name, unit, _config(name, unit, dict(options or {}), max(epochs, 2), model))
    finally:
        torch.set_num_threads(threads)


def _config(name: str, unit: Unit, options: dict[str, Any], epochs: int, model: str = "mbv2-w0.35") -> TrialConfig:
    budget: dict[str, Any] = {"policy": name, "unit": unit, "options": {name: options} if options else {}}
    if model == "mbv2-w0.35":
        budget["scheme"] = SCHEME
        if unit == "input_channel":
            budget["memory"] = MEMORY_BUDGET
    else:
        budget.update(ratio=0.2, initialization="random")
    return TrialConfig.from_dict(
        {
            "data": {"name": "digits", "image_size": 8, "batch_size": 384, "velocity_images": 20, "workers": 0},
            "model": {"name": model},
            "training": {"epochs": epochs, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "device": "cpu"},
            "budget": budget,
        }
    )


def _check_unit(cls: type[BudgetPolicy], name: str, unit: Unit, config: TrialConfig) -> None:
    where = f"policy {name!r} ({cls.__module__}.{cls.__qualname__}), unit {unit}"
    epochs = config.training.epochs

    def fail(prop: str, detail: str) -> PolicyContractError:
        return PolicyContractError(f"{prop}: {where}: {detail}")

    straight = _build(config, fail)
    _check_masks(straight.masks, straight.budget, cls, fail, "the first masks")
    masks_seen = [_copy(straight.masks)]
    records, states = [], []
    for epoch in range(1, epochs + 1):
        before = {key: value.detach().clone() for key, value in straight.model.state_dict().items()}
        trained_with = _copy(straight.masks)
        records.append(_comparable(_epoch(straight, fail)))
        _check_frozen(straight.model, before, trained_with, unit, fail, epoch)
        _check_masks(straight.masks, straight.budget, cls, fail, f"the masks after epoch {epoch}")
        masks_seen.append(_copy(straight.masks))
        states.append(_through_a_file(straight.state_dict()))

    again = _build(config, fail)  # the first masks and one reselection are enough to see a stray random source
    same_seed = [_copy(again.masks)]
    _epoch(again, fail)
    same_seed.append(_copy(again.masks))
    for index, (first, second) in enumerate(zip(masks_seen, same_seed, strict=False)):
        if not _same(first, second):
            raise fail("seed", f"two runs with the same seed chose different masks {'at the start' if index == 0 else f'after epoch {index}'}")

    resumed = _build(config, fail)
    try:
        resumed.load_state_dict(states[0])
    except Exception as error:
        raise fail("round trip", f"loading the epoch-1 checkpoint raised {type(error).__name__}: {error}") from error
    saved = states[0]["policy"]
    if not _same(_through_a_file(resumed.policy.state_dict()), saved):
        raise fail("round trip", "a fresh policy given load_state_dict(state) returns a different state_dict() (load_state_dict drops or alters state)")
    if not _same(resumed.masks, masks_seen[1]):
        raise fail("round trip", "a run loaded from the epoch-1 checkpoint holds different masks")
    for epoch in range(2, epochs + 1):
        record = _comparable(_epoch(resumed, fail))
        if not _same(resumed.masks, masks_seen[epoch]):
            raise fail(
                "resume",
                f"a run resumed after epoch 1 chose different masks after epoch {epoch} than the uninterrupted run"
                " (does state_dict() hold everything reselect() depends on?)",
            )
        if not _same(record, records[epoch - 1]):
            differ = sorted(k for k in record if not _same(record[k], records[epoch - 1].get(k)))
            raise fail("resume", f"a run resumed after epoch 1 reports other metrics at epoch {epoch}: {', '.join(differ)}")


def _build(config: TrialConfig, fail: Any) -> BudgetedRun:
    """The run (its policy started, its first masks applied); an error on the way is the policy's ``run`` failure."""
    try:
        return BudgetedRun(config)
    except Exception as error:
        raise fail("run", f"building the run raised {type(error).__name__}: {error}") from error


def _epoch(run: BudgetedRun, fail: Any) -> dict[str, Any]:
    """One epoch of ``run`` (trained, reselected, evaluated), its metrics; an error is the policy's ``run`` failure."""
    try:
        return run_epoch(run)
    except Exception as error:
        raise fail("run", f"epoch {run.epoch + 1} raised {type(error).__name__}: {error}") from error


def _check_masks(masks: Masks, budget: ResolvedBudget, cls: type[BudgetPolicy], fail: Any, which: str) -> None:
    """Keys, shape and dtype of ``masks``, and their cost under the run's pricing."""
    if not isinstance(masks, Mapping) or list(masks) != list(budget.costs):
        keys = list(masks) if isinstance(masks, Mapping) else type(masks).__name__
        raise fail("masks", f"{which} must have one entry per conv, in module order {list(budget.costs)[:3]}..., got {keys}")
    for conv, mask in masks.items():
        units = int(budget.pricing.unit_cost[conv].numel())
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (units,):
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise fail("masks", f"{which}: conv {conv!r} needs a bool tensor of shape ({units},), got {got}")
    if cls.needs_budget:
        spent = _spent(masks, budget)
        if spent > budget.amount:
            currency = "elements per image" if budget.kind == "memory" else "parameters"
            raise fail("budget", f"{which} cost {spent:,} {currency}, above the budget of {budget.amount:,}")


def _spent(masks: Masks, budget: ResolvedBudget) -> int:
    """What ``masks`` cost in the budget's currency (the run reports the same as ``memory_used`` / ``params_updated``)."""
    if budget.kind == "memory":
        return mask_memory(masks, budget.costs, budget.unit).elements
    return sum(int(cost[masks[conv].cpu()].sum()) for conv, cost in budget.pricing.unit_cost.items())


def _check_frozen(model: torch.nn.Module, before: Mapping[str, torch.Tensor], masks: Masks, unit: Unit, fail: Any, epoch: int) -> None:
    """The conv weights (and biases) of the units out of ``masks`` are bit-identical to ``before``."""
    for conv_name, conv in budgeted_layers(model).items():
        mask = masks[conv_name].cpu()
        frozen = frozen_weight_elements(conv, mask, unit)
        weight, old = conv.weight.detach().cpu(), before[f"{conv_name}.weight"].cpu()
        if not torch.equal(weight[frozen], old[frozen]):
            raise fail("frozen", f"epoch {epoch} changed weights of units out of the mask in conv {conv_name!r}")
        if conv.bias is not None:
            bias_frozen = frozen_bias_elements(conv, mask, unit)
            if not torch.equal(conv.bias.detach().cpu()[bias_frozen], before[f"{conv_name}.bias"].cpu()[bias_frozen]):
                raise fail("frozen", f"epoch {epoch} changed the bias of units out of the mask in conv {conv_name!r}")


def _through_a_file(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` saved with ``torch.save`` and loaded back, as the search's checkpoints store it."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=False)
    return loaded


def _copy(masks: Masks) -> Masks:
    return {conv: mask.detach().clone().cpu() for conv, mask in masks.items()}


def _comparable(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metrics.items() if key not in TIMING}


def _same(a: Any, b: Any) -> bool:
    """Equal, tensors exactly, NaN equal to NaN, through nested dicts, lists and tuples."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and list(a.keys()) == list(b.keys()) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)
