"""What a trial's config is checked for once it has parsed: registered names, files, the device.

Parsing (:mod:`neqtune.trainables.config`) checks types and ranges and imports no
registry. The checks here look names up in the registries (data sets,
models, policies, schemes) and look at files, and fetch nothing: a dry run
fetches nothing, and a search fetches the ImageNet weights of every model it
can reach before Ray starts (``neqtune.search.weights.fetch_space_weights``). They
are the section-by-section half of the one check of a trial,
:func:`neqtune.trainables.trial_checks.trial_problems`, which space loading, the
dry run and :class:`neqtune.trainables.trainer.BudgetedRun` call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neqtune.datasets import data_problems
from neqtune.datasets.parsing import join
from neqtune.trainables.budget.schemes import scheme_names
from neqtune.trainables.config import BudgetConfig, ConfigError, ConfigProblems, ModelConfig, TrainingConfig, TrialConfig
from neqtune.trainables.models.registry import ClassifierError, build_model, model_names, model_spec
from neqtune.trainables.policies.base import get_policy, options_problems, policy_names


@functools.cache
def _build_problem(name: str, classifier: str | None) -> ConfigError | None:
    """Build ``name`` once (random init, 10 classes) to see that it is an ``nn.Module`` with a classifier; the
    problem, if any, under the key (``name`` or ``classifier``) it concerns."""
    try:
        build_model(ModelConfig(name=name, classifier=classifier), num_classes=10)
    except ClassifierError as err:
        return ConfigError("classifier", f"model {name!r}: {err}")
    except ValueError as err:
        return ConfigError("name", str(err))
    return None


def model_problems(model: ModelConfig, path: str = "model") -> list[ConfigError]:
    """The model's name, its ImageNet weights (in the registry entry, not fetched), its checkpoint and net-config files.

    A ``torchvision:`` or ``module:callable`` model, and one with a named
    ``classifier``, is built once (random init) to check that it is an
    ``nn.Module`` whose classifier can be found.
    """
    try:
        spec = model_spec(model.name)
    except ValueError as err:
        return [ConfigError(join(path, "name"), str(err))]
    found: list[ConfigError] = []
    if ":" in model.name or model.classifier is not None:
        problem = _build_problem(model.name, model.classifier)
        if problem is not None:
            return [ConfigError(join(path, problem.key), problem.message)]
    for key in model.shape_keys():
        if key not in spec.keys:
            takers = [name for name in model_names() if key in model_spec(name).keys]
            found.append(ConfigError(join(path, key), f"model {model.name!r} does not take {key}; it shapes {' and '.join(takers) or 'no model'}"))
    if spec.shape is not None and not found:
        try:
            spec.shape(model)
        except ConfigError as err:
            found.append(ConfigError(join(path, err.key), err.message))
    if model.pretrained == "imagenet" and spec.imagenet is None:
        found.append(ConfigError(join(path, "pretrained"), f"model {model.name!r} has no ImageNet weights"))
    elif model.pretrained is not None and model.pretrained != "imagenet" and not Path(model.pretrained).expanduser().is_file():
        found.append(ConfigError(join(path, "pretrained"), f"no checkpoint file at {model.pretrained}"))
    if model.net_config is not None:
        if spec.source != "mcunet-zoo":
            found.append(ConfigError(join(path, "net_config"), f"only MCUNet-zoo models take a net config, not {model.name!r}"))
        elif not Path(model.net_config).expanduser().is_file():
            found.append(ConfigError(join(path, "net_config"), f"no net config file at {model.net_config}"))
    return found


def budget_problems(budget: BudgetConfig, path: str = "budget") -> list[ConfigError]:
    """The policy and scheme names, what the policy accepts (its units, whether it needs a budget), and every
    policy's options (each parsed by its policy)."""
    known = policy_names()
    if budget.policy not in known:
        return [ConfigError(join(path, "policy"), f"unknown policy {budget.policy!r}; known policies: {', '.join(sorted(known))}")]
    found: list[ConfigError] = []
    policy = get_policy(budget.policy)
    if budget.unit not in policy.units:
        refusal = policy.unit_refusal or f"policy {budget.policy!r} does not select {budget.unit} channels; it needs unit {' or '.join(policy.units)}"
        found.append(ConfigError(join(path, "unit"), refusal))
    if policy.needs_budget and not budget.has_budget:
        found.append(ConfigError(path, "give a scheme, a ratio, params or memory (the budget)"))
    found += options_problems(budget)
    if budget.scheme is not None and budget.scheme not in scheme_names():
        found.append(ConfigError(join(path, "scheme"), f"unknown scheme {budget.scheme!r}; known schemes: {', '.join(scheme_names())}"))
    return found


def side_problems(model: ModelConfig, image_size: int, key: str = "data.image_size") -> list[ConfigError]:
    """Whether ``image_size`` is a multiple of what the model's side must be a multiple of (a ViT's patch size); builds nothing.

    A checked model config is assumed (its name and keys are known).
    """
    spec = model_spec(model.name)
    if spec.side_multiple is None:
        return []
    multiple = spec.side_multiple(model)
    if image_size % multiple == 0:
        return []
    below, above = image_size // multiple * multiple, (image_size // multiple + 1) * multiple
    nearest = f"{below} or {above}" if below else str(above)
    return [ConfigError(key, f"model {model.name} takes image sides that are multiples of its patch size {multiple}, not {image_size} (use {nearest})")]


@torch.no_grad()
def input_size_problems(model: nn.Module, model_name: str, image_size: int, key: str = "data.image_size") -> list[ConfigError]:
    """Whether ``model`` takes square ``image_size`` inputs: one forward pass of a zero image (batch 1, eval mode, no gradients).

    A model that asserts its input size (torchvision's ``vit_b_16`` wants
    224 px) or whose layers stop fitting a small image fails here, and its
    exception becomes one line under ``key`` instead of a traceback in a trial.
    """
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else 3
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, channels, image_size, image_size, device=device))
    except Exception as err:  # any failure of the model's own code is the answer: it does not take this size
        lines = str(err).strip().splitlines()
        why = lines[0] if lines else type(err).__name__
        return [ConfigError(key, f"model {model_name} does not take {image_size} px inputs ({why})")]
    finally:
        model.train(was_training)
    return []


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def training_problems(training: TrainingConfig, path: str = "training", *, device: torch.device | None = None) -> list[ConfigError]:
    """Whether the precision runs on the trial's device (``device``: where it runs, when known; else ``training.device``).

    fp16 autocast needs CUDA. With ``device: auto`` and no device given,
    nothing is refused: the trial may well run on a GPU the checking process
    does not have (a driver without a GPU, workers with one).
    """
    if device is None and training.device == "auto":
        return []
    where = device if device is not None else resolve_device(training.device)
    if training.precision == "fp16" and where.type != "cuda":
        return [ConfigError(join(path, "precision"), f"fp16 needs a CUDA device; this trial runs on {where.type} (use fp32 or bf16)")]
    return []


def section_problems(section: str, values: Any) -> list[ConfigError]:
    """The checks of one parsed section (``data``, ``model``, ``training`` or ``budget``), keys under the section's name."""
    checks: dict[str, Callable[[Any], list[ConfigError]]] = {
        "data": data_problems,
        "model": model_problems,
        "training": training_problems,
        "budget": budget_problems,
    }
    return checks[section](values)


def config_problems(config: TrialConfig, *, device: torch.device | None = None) -> list[ConfigError]:
    """Every problem of a parsed config, section by section (nothing is fetched)."""
    return [
        *data_problems(config.data),
        *model_problems(config.model),
        *training_problems(config.training, device=device),
        *budget_problems(config.budget),
    ]


def check_config(config: TrialConfig, *, device: torch.device | None = None) -> None:
    """Raise the first of :func:`config_problems` (a :class:`ConfigProblems` carrying them all)."""
    found = config_problems(config, device=device)
    if found:
        raise ConfigProblems(found)
