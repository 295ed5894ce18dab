"""Budget schemes by name: how many parameters, and the static SU mask.

The study's schemes ship as data (``schemes.yaml`` beside this module).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from neqtune.trainables.budget.units import Unit, budgeted_layers, channel_norms, unit_length
from neqtune.trainables.config import ConfigError

SCHEMES_FILE = Path(__file__).with_name("schemes.yaml")


@dataclass(frozen=True)
class SUScheme:
    """A static sparse-update scheme (after Lin et al., NeurIPS 2022).

    Attributes:
        n_bias_update: how many of the last convs update their bias.
        manual_weight_idx: convs (module order) whose weights are updated.
        weight_update_ratio: share of output neurons updated in each of them.
    """

    n_bias_update: int
    manual_weight_idx: tuple[int, ...]
    weight_update_ratio: tuple[float, ...]

    def check_fits(self, model: nn.Module, scheme: str) -> None:
        """Raise ConfigError unless the scheme's indices fit ``model``'s convs.

        Every weight-updated conv must exist and lie inside the bias-updated
        tail (the last ``n_bias_update`` convs): the SU rule updates a conv's
        weights only where backward already reaches its bias.
        """
        n_convs = len(budgeted_layers(model))
        tail_start = n_convs - self.n_bias_update
        for index in self.manual_weight_idx:
            if not 0 <= index < n_convs:
                raise ConfigError(
                    "budget.scheme",
                    f"{scheme}: manual_weight_idx {index} is out of range: the model has {n_convs} convs (0..{n_convs - 1})",
                )
            if index < tail_start:
                raise ConfigError(
                    "budget.scheme",
                    f"{scheme}: manual_weight_idx {index} lies outside the bias-updated tail: n_bias_update {self.n_bias_update} "
                    f"of {n_convs} convs covers indices {tail_start}..{n_convs - 1}",
                )


@dataclass(frozen=True)
class Scheme:
    """A named budget: ``ratio`` of the conv parameters or an absolute ``budget``, maybe with SU.

    ``memory`` holds, per model and image size, the memory budget (elements
    per image) that TraDy printed for the scheme on input channels.
    """

    name: str
    ratio: float | None = None
    budget: int | None = None
    su: SUScheme | None = None
    memory: dict[str, dict[int, int]] = field(default_factory=dict)

    def budget_params(self, total_params: int) -> int:
        """The budget in parameters for a model with ``total_params`` conv parameters."""
        if self.budget is not None:
            return self.budget
        assert self.ratio is not None
        return int(total_params * self.ratio)


@functools.cache
def load_schemes(path: Path = SCHEMES_FILE) -> dict[str, Scheme]:
    """Every scheme of the schemes file, by name."""
    raw = yaml.safe_load(path.read_text())["schemes"]
    schemes = {}
    for name, entry in raw.items():
        su = entry.get("su")
        schemes[name] = Scheme(
            name=name,
            ratio=entry.get("ratio"),
            budget=entry.get("budget"),
            su=SUScheme(su["n_bias_update"], tuple(su["manual_weight_idx"]), tuple(float(r) for r in su["weight_update_ratio"]))
            if su
            else None,
            memory={str(model): {int(size): int(n) for size, n in sizes.items()} for model, sizes in entry.get("memory", {}).items()},
        )
    return schemes


def scheme_names() -> list[str]:
    """Names of the shipped schemes, in file order."""
    return list(load_schemes())


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``; ValueError listing the known ones otherwise."""
    schemes = load_schemes()
    if name not in schemes:
        raise ValueError(f"unknown scheme {name!r}; known schemes: {', '.join(schemes)}")
    return schemes[name]


def su_update_mask(
    model: nn.Module,
    *,
    manual_weight_idx: Sequence[int],
    weight_update_ratio: Sequence[float],
    unit: Unit = "neuron",
) -> dict[str, torch.Tensor]:
    """The static sparse-update (SU) mask of a scheme.

    Args:
        model: the network; convs are indexed in ``named_modules()`` order.
        manual_weight_idx: indices of the convs whose weights are updated.
        weight_update_ratio: for each of them, the share ``r`` of its units
            updated.
        unit: ``"neuron"`` (the study's reading): the ``int(C_out * (1 - r))``
            output neurons with the smallest L2 weight norm are frozen, the
            rest updated. ``"input_channel"`` (tiny-training's own): the
            ``int(C_in * r)`` input channels with the largest L2 norm of
            ``W[:, c]`` are updated, the rest frozen.

    Returns:
        Per conv, bool over the channels of ``unit`` (True = updated); every
        conv not listed is frozen entirely.
    """
    convs = list(budgeted_layers(model).items())
    if len(manual_weight_idx) != len(weight_update_ratio):
        raise ValueError(f"manual_weight_idx has {len(manual_weight_idx)} entries but weight_update_ratio has {len(weight_update_ratio)}")
    if len(set(manual_weight_idx)) != len(manual_weight_idx):
        raise ValueError(f"manual_weight_idx repeats an index: {list(manual_weight_idx)}")
    masks = {name: torch.zeros(unit_length(conv, unit), dtype=torch.bool) for name, conv in convs}
    for index, ratio in zip(manual_weight_idx, weight_update_ratio, strict=True):
        if not 0 <= index < len(convs):
            raise ValueError(f"manual_weight_idx {index} is out of range: the model has {len(convs)} convs")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"weight_update_ratio {ratio} is outside [0, 1]")
        name, conv = convs[index]
        n = unit_length(conv, unit)
        order = torch.sort(channel_norms(conv, unit), stable=True).indices  # smallest norm first
        if unit == "neuron":
            mask = torch.ones(n, dtype=torch.bool)
            mask[order[: int(n * (1 - ratio))]] = False
        else:
            mask = torch.zeros(n, dtype=torch.bool)
            mask[order.flip(0)[: int(n * ratio)]] = True
        masks[name] = mask
    return masks
