"""``run_search.py --dry-run``: what a space would run, resolved without training.

After :func:`~search.space.load_space` has validated the space, the dry run
resolves every data set, model and budget the space can reach: it reads the
data sets (their splits and classes), builds every model once (random init,
no weights are fetched) and computes the budget in parameters of every
scheme / ratio / absolute budget for every model.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from search.space import Space, SpaceError
from trainables.config import BudgetConfig, ConfigError, DataConfig, ModelConfig, from_mapping


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


def describe_data(space: Space) -> Iterator[str]:
    """One line per data set of the space: classes and split sizes (reads the data)."""
    from datasets import build_dataset
    from datasets.registry import check_dataset

    for name in choices(space, "data.name"):
        config = from_mapping(DataConfig, _section(space, "data", {"name": name}), "data")
        check_dataset(config)
        splits = build_dataset(config)
        sizes = ", ".join(f"{split} {len(getattr(splits, split))}" for split in ("train", "val", "velocity", "test"))
        yield f"data {name}: {splits.num_classes} classes; images: {sizes}"


def budget_lines(space: Space, model: Any, total: int) -> list[BudgetLine]:
    """Every budget the space reaches for ``model`` (``total`` conv parameters)."""
    from trainables.budgets import resolve_budget
    from trainables.schemes import get_scheme

    lines = []
    combos = itertools.product(choices(space, "budget.scheme"), choices(space, "budget.ratio"), choices(space, "budget.params"))
    for scheme_name, ratio, params in combos:
        budget = BudgetConfig(policy="full", scheme=scheme_name, ratio=ratio, params=params)
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


def describe_models(space: Space) -> Iterator[str]:
    """Per model: its source, convs and conv parameters, then every budget in parameters."""
    from trainables.models import build_model, imagenet_weights_path, model_spec, ungrouped_conv_params
    from trainables.neurons import conv_neuron_params, total_params

    sizes = sorted({s for s in choices(space, "data.image_size") if s is not None}) or [DataConfig().image_size]
    for name in choices(space, "model.name"):
        values = _section(space, "model", {"name": name})
        pretrained = values.get("pretrained")
        config = from_mapping(ModelConfig, {**values, "pretrained": None}, "model")
        spec = model_spec(name)
        if pretrained == "imagenet":
            pretrained = f"imagenet from {imagenet_weights_path(config)}"
        model = build_model(config, num_classes=10)
        total = total_params(conv_neuron_params(model))
        yield (
            f"model {name} ({spec.source}, native {spec.input_size} px, run at {'/'.join(map(str, sizes))} px, "
            f"pretrained {pretrained or 'none (random init)'}): {len(conv_neuron_params(model))} convs, "
            f"{total:,} conv parameters ({ungrouped_conv_params(model):,} without / groups)"
        )
        for line in budget_lines(space, model, total):
            note = f"; {line.su}" if line.su else ""
            yield f"  {line.label}: budget {line.params:,} parameters ({line.share_pct:.2f}% of the convs){note}"


def describe_space(space: Space) -> list[str]:
    """The dry-run report of a validated space.

    Raises:
        SpaceError: a data set cannot be read or a model cannot be built (names the file and key).
    """
    lines = [f"{space.source}: valid; {space.num_trials()} trials ({space.search.algorithm})"]
    lines += [f"  {key}: {spec.kind} {getattr(spec, spec.kind)}" for key, spec in space.search.params.items()]
    try:
        lines += list(describe_data(space))
        lines += list(describe_models(space))
    except ConfigError as err:
        raise SpaceError(space.source, err.key, err.message) from None
    except (OSError, ValueError, RuntimeError) as err:
        raise SpaceError(space.source, "", str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    return lines
