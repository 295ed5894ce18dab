"""``run_search.py --dry-run``: what a space would run, resolved without training, with every problem.

The dry run loads the space collecting the problems of its trial values
instead of stopping at the first (:func:`~neqtune.search.space.load_space` with
``problems``), then resolves every data set, model and budget the space can
reach: it reads the data sets (their splits and classes), builds every model
once (random init), says per ``pretrained: imagenet`` model whether its
weights are cached and where a run would download them from, and computes the
budget in parameters of every scheme / ratio / absolute budget for every
model. Nothing is fetched: no weights, no data. Every problem is reported,
one line each, after the description of what could be resolved.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from neqtune.datasets import build_dataset, check_dataset, dataset_names
from neqtune.search.plugins import Plugin
from neqtune.search.space import MAX_CHECKED_COMBINATIONS, Space, SpaceError, load_space
from neqtune.trainables.budget.accounting import account_parameters, frozen_note, outside_warning
from neqtune.trainables.budget.costs import network_memory
from neqtune.trainables.budget.resolve import budget_kind, build_budget, model_costs, resolve_budget
from neqtune.trainables.budget.schemes import get_scheme
from neqtune.trainables.budget.units import budgeted_layers, conv_neuron_params, total_params
from neqtune.trainables.checks import budget_problems, model_problems
from neqtune.trainables.config import (
    BudgetConfig,
    ConfigError,
    ConfigProblems,
    DataConfig,
    ModelConfig,
    TrialConfig,
    from_mapping,
    with_overrides,
)
from neqtune.trainables.models.registry import imagenet_weights_source, model_spec, ungrouped_conv_params
from neqtune.trainables.trial_checks import input_size_problem, probe_model, trial_budget


@dataclass(frozen=True)
class BudgetLine:
    """One reachable budget for one model."""
    label: str
    params: int
    share_pct: float
    su: str


def choices(space: Space, key: str) -> list[Any]:
    """The values ``key`` (dotted) takes in ``space``: its choices, else the base value (or None)."""
    spec = space.search.params.get(key)
    if spec is not None and spec.choice is not None:
        return list(spec.choice)
    section, leaf = key.split(".", 1)
    return [space.base.get(section, {}).get(leaf)]


def _section(space: Space, section: str, overrides: dict[str, Any]) -> dict[str, Any]:
    values = dict(space.base.get(section, {}))
    values.update({k: v for k, v in overrides.items() if v is not None or k in values})
    return values


class Problems:
    """The problems a dry run found, each once, in the order found."""
    def __init__(self, source: str, found: Sequence[SpaceError] = ()) -> None:
        self.source = source
        self.found: list[SpaceError] = list(found)

    def add(self, err: Exception) -> None:
        """Record ``err`` (a SpaceError, ConfigError or another error of reading data or building a model)."""
        if isinstance(err, SpaceError):
            problem = err
        elif isinstance(err, ConfigError):
            problem = SpaceError(self.source, err.key, err.message)
        else:
            problem = SpaceError(self.source, "", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        if str(problem) not in {str(p) for p in self.found}:
            self.found.append(problem)


# What reading a data set or building a model raises for a problem of the user's files (not a bug of neqtune).
INPUT_ERRORS = (ConfigError, OSError, ValueError, RuntimeError)


def describe_data(space: Space, problems: Problems) -> Iterator[str]:
    """One line per data set of the space: classes and split sizes (reads the data; never downloads)."""
    for name in (DataConfig().name if given is None else given for given in choices(space, "data.name")):  # no data.name: the default
        if name not in dataset_names():  # refused with the known names when the space loaded: not again
            yield f"data {name}: unknown data set (see the errors below)"
            continue
        values = _section(space, "data", {"name": name})
        try:
            config = from_mapping(DataConfig, {**values, "download": False}, "data")  # read what is there, fetch nothing
            check_dataset(config)
            splits = build_dataset(config)
        except INPUT_ERRORS as err:
            if values.get("download"):
                yield f"data {name}: not on disk; a run downloads it first (data.download: true)"
                continue
            problems.add(err)
            yield f"data {name}: not readable (see the errors below)"
            continue
        sizes = ", ".join(f"{split} {len(getattr(splits, split))}" for split in ("train", "val", "velocity", "test"))
        label = "" if config.label == name else f" ({config.label})"
        yield f"data {name}{label}: {splits.num_classes} classes; images: {sizes}"


def budget_lines(space: Space, model: Any, total: int) -> list[BudgetLine]:
    """Every budget the space reaches for ``model`` (``total`` conv parameters)."""
    lines = []
    combos = itertools.product(choices(space, "budget.scheme"), choices(space, "budget.ratio"), choices(space, "budget.params"))
    for scheme_name, ratio, params in combos:
        budget = BudgetConfig(policy="full", scheme=scheme_name, ratio=ratio, params=params)
        try:
            budget.validate("budget")
        except ConfigError:
            continue  # a ratio out of range: reported when the space loaded
        if budget_problems(budget):
            continue  # an unknown scheme: reported when the space loaded
        parts = [
            f"scheme {scheme_name}" if scheme_name else "",
            f"ratio {ratio}" if ratio is not None else "",
            f"params {params}" if params else "",
        ]
        label = ", ".join(p for p in parts if p) or "no budget (full update)"
        su = ""
        if scheme_name:
            scheme = get_scheme(scheme_name)
            if scheme.su is not None:
                try:
                    scheme.su.check_fits(model, scheme_name)
                    su = f"SU mask on {len(scheme.su.manual_weight_idx)} convs fits"
                except ConfigError as err:
                    su = f"SU mask does not fit ({err.message}); usable by velocity/random only"
        params_b = resolve_budget(budget, total)
        lines.append(BudgetLine(label, params_b, 100.0 * params_b / total, su))
    return lines


def weights_line(config: ModelConfig) -> str:
    """Whether the ImageNet weights of ``config``'s model are cached, and where a run would get them; fetches nothing."""
    source = imagenet_weights_source(config)
    if source.cached:
        return f"  ImageNet weights: cached at {source.path}"
    return f"  ImageNet weights: not cached; a run downloads {source.url} to {source.path} first (or put the file there)"


def describe_models(space: Space, problems: Problems) -> Iterator[str]:
    """Per model: its source, convs and conv parameters, its ImageNet weights, then every budget in parameters."""
    sizes = sorted({s for s in choices(space, "data.image_size") if s is not None}) or [DataConfig().image_size]
    for name in (ModelConfig().name if given is None else given for given in choices(space, "model.name")):  # no model.name: the default
        try:
            spec = model_spec(name)
        except ValueError:
            continue  # reported when the space loaded
        values = _section(space, "model", {"name": name})
        pretrained = values.get("pretrained")
        try:
            config = from_mapping(ModelConfig, {**values, "pretrained": None}, "model")
            found = model_problems(config)
            if found:
                raise ConfigProblems(found)
            model = probe_model(config)  # random init, shared with the trials' checks: the weights are neither loaded nor fetched
        except INPUT_ERRORS as err:
            for problem in getattr(err, "problems", [err]):
                problems.add(problem)
            yield f"model {name} ({spec.source}): cannot be built (see the errors below)"
            continue
        total = total_params(conv_neuron_params(model))
        layers = budgeted_layers(model)
        linear = sum(1 for layer in layers.values() if isinstance(layer, nn.Linear))
        held = (
            f"{len(layers)} convs, {total:,} conv parameters"
            if not linear
            else f"{len(layers) - linear} convs and {linear} Linear layers, {total:,} parameters in them"
        )
        yield (
            f"model {name} ({spec.source}, native {spec.input_size} px, run at {'/'.join(map(str, sizes))} px, "
            f"pretrained {pretrained or 'none (random init)'}): {held} ({ungrouped_conv_params(model):,} without / groups)"
        )
        if pretrained == "imagenet" and spec.imagenet is not None:
            yield weights_line(ModelConfig(name=name, pretrained="imagenet", zoo_dir=config.zoo_dir))
        yield from accounting_lines(space, model, name)
        # the sizes it does not take are problems of the space, reported with them
        sizes_taken = [size for size in sizes if input_size_problem(config, size) is None]
        if len(sizes_taken) < len(sizes):
            yield f"  does not take {'/'.join(str(s) for s in sizes if s not in sizes_taken)} px inputs (see the errors below)"
        for line in budget_lines(space, model, total):
            note = f"; {line.su}" if line.su else ""
            yield f"  {line.label}: budget {line.params:,} parameters ({line.share_pct:.2f}% of the convs){note}"
        yield from memory_budget_lines(space, model, name, sizes_taken)


def accounting_lines(space: Space, model: Any, model_name: str) -> Iterator[str]:
    """What trains under the space's budgets: budgeted, outside-the-budget and frozen parameters, and a note naming the frozen layers.

    Counted under the first budgeted policy of the space (the ``full``
    policy trains everything); ``budget.bn_update: selected`` makes the
    norms' count a ceiling.
    """

    policies = [p for p in choices(space, "budget.policy") if p not in (None, "full")]
    if not policies:
        total = sum(p.numel() for p in model.parameters())
        yield f"  parameters: full update, all {total:,} train"
        return
    bn_updates = [b for b in choices(space, "budget.bn_update") if b is not None] or [BudgetConfig().bn_update]
    account = account_parameters(model, BudgetConfig(policy=policies[0], bn_update=bn_updates[0]))
    ceiling = " at most" if "selected" in bn_updates else ""
    yield (
        f"  parameters under a budget: {account.budgeted:,} budgeted (units of convs and Linear layers), {account.outside:,}{ceiling} trained outside "
        f"the budget ({', '.join(account.reasons_of('outside')) or 'none'}), {account.frozen:,} frozen"
    )
    note = frozen_note(model_name, account)
    if note is not None:
        yield f"  {note}"


def budget_warnings(space: Space) -> list[str]:
    """One warning per model whose parameters trained outside the budget exceed its smallest budget in the space.

    A parameter budget is compared in parameters; a memory budget in
    elements, each parameter outside counting one weight element (its
    activations are not counted, so the comparison understates it).
    Combinations that do not check out are skipped: they are the space's
    problems, reported on their own.
    """

    smallest: dict[str, tuple[int, str, Any]] = {}
    for combination in itertools.islice(space.combinations(), MAX_CHECKED_COMBINATIONS):
        try:
            config = TrialConfig.from_dict(with_overrides(space.base, combination))
            if config.budget.policy == "full":
                continue
            model, amount = trial_budget(config)
        except INPUT_ERRORS:
            continue
        name = config.model.name
        if name not in smallest or amount < smallest[name][0]:
            unit = "elements per image" if budget_kind(config.budget) == "memory" else "parameters"
            smallest[name] = (amount, unit, account_parameters(model, config.budget))
    warnings = []
    for name, (amount, unit, account) in smallest.items():
        line = outside_warning(name, account, amount, unit=unit)
        if line is not None:
            warnings.append(line)
    return warnings


def memory_budget_lines(space: Space, model: Any, model_name: str, sizes: list[int]) -> Iterator[str]:
    """Every memory budget the space reaches for ``model``: elements per image, share of the network, kB (builds nothing else)."""
    units = choices(space, "budget.unit")
    memories = choices(space, "budget.memory")
    if "input_channel" not in units and all(m is None for m in memories):
        return
    bytes_per_element = next((b for b in choices(space, "budget.bytes_per_element") if b is not None), BudgetConfig().bytes_per_element)
    for size in sizes:
        total = network_memory(model_costs(model, size))
        combos = itertools.product(units, choices(space, "budget.scheme"), memories)
        for unit, scheme_name, memory in combos:
            values = {"policy": "full", "unit": unit or "neuron", "scheme": scheme_name, "memory": memory}
            try:
                budget = from_mapping(BudgetConfig, {k: v for k, v in values.items() if v is not None}, "budget")
                resolved = build_budget(budget, model, model_name=model_name, image_size=size)
            except ConfigError:
                continue  # reported with the space's problems
            if resolved.kind != "memory":
                continue
            label = ", ".join(p for p in (f"unit {budget.unit}", f"scheme {scheme_name}" if scheme_name and memory is None else "", f"memory {memory}" if memory else "") if p)
            kb = resolved.amount * bytes_per_element / 1024
            yield f"  {label} at {size} px: memory budget {resolved.amount:,} elements per image ({100 * resolved.amount / total:.2f}% of {total:,}; {kb:.1f} kB)"


def describe_space(space: Space, problems: Problems | None = None) -> list[str]:
    """The dry-run report of a loaded space; the problems found on the way go to ``problems``.

    Raises:
        SpaceError: without ``problems``, the first problem found (names the file and key).
    """
    collected = problems if problems is not None else Problems(space.source)
    lines = [f"{space.source}: valid; {space.num_trials()} trials ({space.search.algorithm})"]
    lines += [f"  {key}: {spec.kind} {getattr(spec, spec.kind)}" for key, spec in space.search.params.items()]
    lines += list(describe_data(space, collected))
    try:
        lines += list(describe_models(space, collected))
        lines += budget_warnings(space)
    except INPUT_ERRORS as err:  # a budget that cannot be resolved for a model
        collected.add(err)
    if problems is None and collected.found:
        raise collected.found[0]
    return lines


def dry_run(
    path: str | Path | None,
    *,
    overrides: Sequence[tuple[str, Any]] = (),
    search_overrides: Mapping[str, Any] | None = None,
    variant: str | None = None,
    plugins: Sequence[Plugin] = (),
) -> tuple[list[str], list[SpaceError]]:
    """Load the space at ``path`` (with the ``--plugin`` plug-ins ``plugins``, loaded already) and describe it:
    the report's lines and every problem found.

    The first line says ``valid`` only when there is no problem. Problems of
    the file's structure (YAML, unknown sections, the search section) stop
    the loading and are raised.

    Raises:
        SpaceError: the file cannot be loaded at all.
    """
    found: list[SpaceError] = []
    space = load_space(path, overrides=overrides, search_overrides=search_overrides, problems=found, variant=variant, plugins=plugins)
    problems = Problems(space.source, found)
    lines = describe_space(space, problems)
    if problems.found:
        lines[0] = f"{space.source}: {len(problems.found)} problem(s); {space.num_trials()} trials ({space.search.algorithm})"
    return lines, problems.found
