"""The data set registry and the split rule shared by all data sets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from neqtune.datasets.config import DataConfig
from neqtune.datasets.names import Registry


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


DatasetBuilder = Callable[[DataConfig], DataSplits]
DatasetCheck = Callable[[DataConfig], None]

_DATASETS: Registry[DatasetBuilder] = Registry("data set", "data sets")
_CHECKS: Registry[DatasetCheck] = Registry("data set check", "data set checks", duplicate="data set {name} already has a check")


class DatasetError(RuntimeError):
    """A data set that cannot be read (a corrupt image, a malformed file); the message names the file."""


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator that registers a data set builder under ``name``."""
    return _DATASETS.register(name)


def register_check(name: str) -> Callable[[DatasetCheck], DatasetCheck]:
    """Decorator that registers the cheap load-time check of data set ``name``.

    The check looks only at files and directories (no image is read) and
    raises :class:`~neqtune.datasets.parsing.ConfigError` naming ``data.root``.
    """
    return _CHECKS.register(name)


def check_dataset(config: DataConfig) -> None:
    """Check, cheaply, that the data set named in ``config`` is where it should be.

    Data sets without a registered check (the built-in ``digits``) pass.

    Raises:
        neqtune.datasets.parsing.ConfigError: the data set is missing or malformed
            (key ``data.root``), or cannot be downloaded (``data.download``).
    """
    check = _CHECKS.find(config.name)
    if check is not None:
        check(config)


def dataset_names() -> list[str]:
    """Names of the registered data sets, sorted."""
    return _DATASETS.names()


def build_dataset(config: DataConfig) -> DataSplits:
    """Build the splits of the data set named in ``config``.

    Raises:
        ValueError: unknown data set name (lists the known ones).
    """
    return _DATASETS.get(config.name)(config)


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


def carve_test(n: int, *, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out a test split of ``n`` samples, for data sets without one (digits, a folder without ``test/``).

    A permutation seeded with ``seed``: its first ``int(test_fraction * n)``
    samples are the test split. The rest is carved further by
    :func:`split_train`, seeded with ``seed + 1`` so that the two draws differ.

    Returns:
        ``(test, rest)`` index lists.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = int(test_fraction * n)
    return order[:n_test], order[n_test:]
