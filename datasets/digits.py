"""``digits``: the 1,797 8x8 handwritten digits that ship inside scikit-learn.

No download: the images are read from scikit-learn's package data, scaled
to ``image_size`` (bilinear), repeated over three channels and normalised
with mean and std 0.5. Digits has no official test split, so a seeded
``test_fraction`` is held out first; velocity and validation splits are
then carved out of the rest (:func:`neqtune.datasets.registry.split_train`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from neqtune.datasets.config import DataConfig
from neqtune.datasets.registry import DatasetError, DataSplits, carve_test, register_dataset, split_train


@functools.cache
def digit_images(image_size: int) -> TensorDataset:
    """All digits as normalised ``[N, 3, image_size, image_size]`` images with labels.

    Cached per process, so trials that share a worker read and resize once.
    """
    pixels, labels = _read_digits()
    images = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    return TensorDataset(images, torch.as_tensor(labels, dtype=torch.long))


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 64 pixel values (0-16) and the label of every digit, from the CSV scikit-learn ships.

    The file is read where the installed package keeps it, without importing
    scikit-learn (seconds per process, in every trial's worker); the values
    are those of ``sklearn.datasets.load_digits()``.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("data.name: digits: scikit-learn is not installed (pip install scikit-learn)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


@register_dataset("digits")
def build_digits(config: DataConfig) -> DataSplits:
    """Seeded train / val / velocity / test splits of scikit-learn's digits."""
    images = digit_images(config.image_size)
    full = cast("Dataset[tuple[torch.Tensor, int]]", images)
    test_idx, pool = carve_test(len(images), test_fraction=config.test_fraction, seed=config.split_seed)
    train, val, velocity = split_train(
        len(pool), velocity_images=config.velocity_images, val_fraction=config.val_fraction, seed=config.split_seed + 1
    )
    return DataSplits(
        train=Subset(full, [pool[i] for i in train]),
        val=Subset(full, [pool[i] for i in val]),
        velocity=Subset(full, [pool[i] for i in velocity]),
        test=Subset(full, test_idx),
        classes=[str(d) for d in range(10)],
    )
