"""The one check of a trial's validity: every section's checks, then every check across sections.

:func:`trial_problems` is called wherever a trial config is judged: by space
loading (every combination of a space, :mod:`neqtune.search.space`), by the
dry run (through space loading, and :func:`trial_budget` for its warnings)
and by the trial itself (:class:`neqtune.trainables.trainer.BudgetedRun`).
A config that one of them refuses, the others refuse with the same line.

What a check computes is kept per process, by value: the probe network of an
architecture (random init, 10 classes), the class count of a data section,
the input-size problem of an architecture at an image side, the amount of a
budget for an architecture and side. A space of ten thousand combinations
builds each network once, and so does a worker process running trial after
trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from neqtune.datasets import DataConfig, build_dataset, check_dataset
from neqtune.trainables.budget.resolve import build_budget, check_scheme_fits
from neqtune.trainables.budget.schemes import get_scheme
from neqtune.trainables.checks import config_problems, input_size_problems, side_problems
from neqtune.trainables.config import BudgetConfig, ConfigError, ConfigProblems, ModelConfig, TrialConfig
from neqtune.trainables.models.registry import build_model
from neqtune.trainables.policies.base import check_policy_fit, needs_su_mask


class CombinationError(ConfigError):
    """A :class:`ConfigError` of one trial config that names the config keys it depends on.

    ``depends_on`` holds dotted keys or whole sections (``data``); a searched
    key among them is part of the cause, so space loading shows its value
    next to the message.
    """

    def __init__(self, key: str, message: str, depends_on: Sequence[str]) -> None:
        super().__init__(key, message)
        self.depends_on = tuple(depends_on)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.message, self.depends_on))


def value_key(value: Any) -> Hashable:
    """A config as a hashable value (dataclasses and mappings as sorted pairs, lists as tuples): equal configs, equal keys."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), value_key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(value_key(v) for v in value)
    return value  # type: ignore[no-any-return]


# What the checks computed once per distinct value: probe networks per architecture, class counts per data
# section, input-size problems per architecture and side, budget amounts per budget, architecture and side.
_PROBES: dict[Hashable, nn.Module] = {}
_CLASS_COUNTS: dict[Hashable, int] = {}
_INPUT_SIZE_PROBLEMS: dict[Hashable, ConfigError | None] = {}
_BUDGET_AMOUNTS: dict[Hashable, int] = {}


def _architecture(model: ModelConfig) -> ModelConfig:
    """What shapes the network of a model config: the config without its weights and class count."""
    return dataclasses.replace(model, pretrained=None, num_classes=None)


def probe_model(model: ModelConfig) -> nn.Module:
    """The network of a model config, random init, 10 classes: one per architecture and process, shared by the checks."""
    architecture = _architecture(model)
    key = value_key(architecture)
    if key not in _PROBES:
        _PROBES[key] = build_model(architecture, num_classes=10)
    return _PROBES[key]


def _dataset_num_classes(data: DataConfig) -> int:
    """The class count of the data set ``data`` names, read once per distinct config."""
    key = value_key(data)
    if key not in _CLASS_COUNTS:
        _CLASS_COUNTS[key] = build_dataset(data).num_classes
    return _CLASS_COUNTS[key]


def input_size_problem(model: ModelConfig, image_size: int) -> ConfigError | None:
    """Whether the model takes the data's image side (key ``data.image_size``): a side that is no multiple of its patch
    size (a declared property of the model), else one that a forward pass refuses; one probe per architecture and side."""
    key = (value_key(_architecture(model)), image_size)
    if key not in _INPUT_SIZE_PROBLEMS:
        found = side_problems(model, image_size) or input_size_problems(probe_model(model), model.name, image_size)
        _INPUT_SIZE_PROBLEMS[key] = found[0] if found else None
    return _INPUT_SIZE_PROBLEMS[key]


def _check_input_size(model: ModelConfig, image_size: int) -> None:
    problem = input_size_problem(model, image_size)
    if problem is not None:
        raise ConfigError(problem.key, problem.message)


def _budget_amount(budget: BudgetConfig, model: ModelConfig, image_size: int) -> int:
    """Resolve the budget against the model at the image size (scheme fit, memory bounds, the policy's options), once
    per distinct combination; its amount."""
    key = (value_key(budget), value_key(_architecture(model)), image_size)
    if key not in _BUDGET_AMOUNTS:
        resolved = build_budget(budget, probe_model(model), model_name=model.name, image_size=image_size)
        check_policy_fit(budget, resolved)
        _BUDGET_AMOUNTS[key] = resolved.amount
    return _BUDGET_AMOUNTS[key]


@contextlib.contextmanager
def _depending_on(*keys: str) -> Iterator[None]:
    """Re-raise a ConfigError inside the block as a :class:`CombinationError` that depends on ``keys``."""
    try:
        yield
    except ConfigError as err:
        raise CombinationError(err.key, err.message, keys) from None


def _data_problems(config: TrialConfig) -> list[ConfigError]:
    """The data set on disk (the built-in ``digits`` always is), then the model head's class count against it."""
    if config.data.name != "digits":  # every other data set must be on disk (or downloadable) before a search starts
        try:
            with _depending_on("data"):
                check_dataset(config.data)
        except ConfigError as err:
            return [err]
    if config.model.num_classes is None:
        return []
    try:
        with _depending_on("data", "model.num_classes"):
            found = _dataset_num_classes(config.data)
    except ConfigError as err:
        return [err]
    if found == config.model.num_classes:
        return []
    where = f" at {config.data.root}" if config.data.root else ""
    message = f"the model head has {config.model.num_classes} classes but data set {config.data.name!r}{where} has {found}"
    return [CombinationError("model.num_classes", message, ("data", "model.num_classes"))]


def _scheme_problems(config: TrialConfig) -> list[ConfigError]:
    """Whether a run that takes the scheme's SU mask (policy or first mask) has a scheme with one that fits the model."""
    budget = config.budget
    if not needs_su_mask(budget):
        return []
    scheme = get_scheme(budget.scheme) if budget.scheme else None
    if scheme is None or scheme.su is None:
        message = f"policy {budget.policy!r} with initialization {budget.initialization!r} needs a scheme with an SU part, got {budget.scheme!r}"
        return [CombinationError("budget.scheme", message, ("budget.policy", "budget.initialization", "budget.scheme"))]
    try:
        with _depending_on("budget.policy", "budget.initialization", "budget.scheme", "budget.unit", "model.name"):
            check_scheme_fits(scheme, probe_model(config.model), budget.unit)
    except ConfigError as err:
        return [err]
    return []


def trial_problems(config: TrialConfig, *, device: torch.device | None = None, data_read_by_caller: bool = False) -> list[ConfigError]:
    """Every problem of a parsed trial config: each section's (registered names, files, the precision on ``device``;
    see :func:`neqtune.trainables.checks.config_problems`), else every check across sections, each a
    :class:`CombinationError` naming the keys it depends on: the data set on disk, the model head's class count
    against it, the SU mask of the scheme on the model, the image side the model takes, the budget resolved
    against the model (memory bounds, the policy's options).

    Args:
        config: the trial's config.
        device: where the trial runs, when known (fp16 needs CUDA); else ``training.device``.
        data_read_by_caller: the caller reads the data set right after (a trial): the two checks that read it
            are left to that reading, which refuses a missing or malformed data set itself (under
            ``data.root``). The on-disk check of an image folder reads every image's header, work that grows
            with the data set beyond the listing its loading does anyway, and the class count would build the
            data set a second time; a trial builds its head with the count its data set has. Space loading
            refused both before the search began.

    Returns:
        The problems, first found first; empty for a valid trial.
    """
    checked = config_problems(config, device=device)
    if checked:
        return checked
    problems = [] if data_read_by_caller else _data_problems(config)
    problems += _scheme_problems(config)
    try:
        with _depending_on("model", "data.image_size"):
            _check_input_size(config.model, config.data.image_size)
        with _depending_on("budget", "model", "data.image_size"):
            _budget_amount(config.budget, config.model, config.data.image_size)
    except ConfigError as err:
        problems.append(err)
    return problems


def check_trial(config: TrialConfig, *, device: torch.device | None = None, data_read_by_caller: bool = False) -> None:
    """Raise the problems of :func:`trial_problems` (a :class:`ConfigProblems` that reads as the first), if any."""
    found = trial_problems(config, device=device, data_read_by_caller=data_read_by_caller)
    if found:
        raise ConfigProblems(found)


def trial_budget(config: TrialConfig) -> tuple[nn.Module, int]:
    """The model a trial's budget is resolved against when it is checked (random init, 10 classes, shared) and the
    budget's amount.

    Raises:
        ConfigError: the model does not take the image size, or the budget does not resolve.
    """
    _check_input_size(config.model, config.data.image_size)
    amount = _budget_amount(config.budget, config.model, config.data.image_size)
    return probe_model(config.model), amount
