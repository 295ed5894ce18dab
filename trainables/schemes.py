"""Budget schemes by name: how many parameters, and the static SU mask.

The study's schemes ship as data (``schemes.yaml`` beside this module).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from torch import nn

from trainables.config import ConfigError
from trainables.neurons import conv_layers

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
        n_convs = len(conv_layers(model))
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
