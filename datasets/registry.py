"""The data set registry and the split rule shared by all data sets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from trainables.config import DataConfig


@dataclass(frozen=True)
class DataSplits:
    """The four splits of a data set.

    Attributes:
        train: what the optimiser sees.
        val: model selection (the best epoch).
        velocity: a few held-out training images, used only to measure
            neuron activity.
        test: the official test split where the data set has one.
        classes: class names, index = label.
    """

    train: Dataset[tuple[torch.Tensor, int]]
    val: Dataset[tuple[torch.Tensor, int]]
    velocity: Dataset[tuple[torch.Tensor, int]]
    test: Dataset[tuple[torch.Tensor, int]]
    classes: list[str]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


DatasetBuilder = Callable[["DataConfig"], DataSplits]
DatasetCheck = Callable[["DataConfig"], None]

_DATASETS: dict[str, DatasetBuilder] = {}
_CHECKS: dict[str, DatasetCheck] = {}


class DatasetError(RuntimeError):
    """A data set that cannot be read (a corrupt image, a malformed file); the message names the file."""


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator that registers a data set builder under ``name``."""

    def add(builder: DatasetBuilder) -> DatasetBuilder:
        if name in _DATASETS:
            raise ValueError(f"data set {name!r} is already registered")
        _DATASETS[name] = builder
        return builder

    return add


def register_check(name: str) -> Callable[[DatasetCheck], DatasetCheck]:
    """Decorator that registers the cheap load-time check of data set ``name``.

    The check looks only at files and directories (no image is read) and
    raises :class:`~trainables.config.ConfigError` naming ``data.root``.
    """

    def add(check: DatasetCheck) -> DatasetCheck:
        if name in _CHECKS:
            raise ValueError(f"data set {name!r} already has a check")
        _CHECKS[name] = check
        return check

    return add


def check_dataset(config: DataConfig) -> None:
    """Check, cheaply, that the data set named in ``config`` is where it should be.

    Data sets without a registered check (the built-in ``digits``) pass.

    Raises:
        trainables.config.ConfigError: the data set is missing or malformed
            (key ``data.root``), or cannot be downloaded (``data.download``).
    """
    check = _CHECKS.get(config.name)
    if check is not None:
        check(config)


def dataset_names() -> list[str]:
    """Names of the registered data sets, sorted."""
    return sorted(_DATASETS)


def build_dataset(config: DataConfig) -> DataSplits:
    """Build the splits of the data set named in ``config``.

    Raises:
        ValueError: unknown data set name (lists the known ones).
    """
    if config.name not in _DATASETS:
        raise ValueError(f"unknown data set {config.name!r}; known data sets: {', '.join(dataset_names())}")
    return _DATASETS[config.name](config)


def split_train(n: int, *, velocity_images: int, val_fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Carve the velocity and validation splits out of ``n`` training samples.

    A seeded permutation; its first ``velocity_images`` samples form the
    velocity split, the next ``int(val_fraction * rest)`` the validation
    split, the remainder the training split.

    Returns:
        ``(train, val, velocity)`` index lists.
    """
    if velocity_images >= n:
        raise ValueError(f"velocity_images ({velocity_images}) must be smaller than the training set ({n} samples)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    velocity = order[:velocity_images]
    rest = order[velocity_images:]
    n_val = int(val_fraction * len(rest))
    return rest[n_val:], rest[:n_val], velocity
