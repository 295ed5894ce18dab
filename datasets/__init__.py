"""Data sets by name: each builder returns the train / val / velocity / test splits.

Register a builder with ``@register_dataset("name")``; it takes a
:class:`~neqtune.datasets.config.DataConfig` and returns :class:`DataSplits`.
A data set read from disk also registers a cheap ``@register_check("name")``
that :func:`check_dataset` runs when a space is loaded. Directories come from
``data.root`` or ``$NEQ_DATA/<name>`` (:func:`dataset_root`).
"""

from __future__ import annotations

import sys as _sys

if __name__ == "datasets":  # pragma: no cover - exercised in a subprocess by tests/test_layout.py
    # This folder is neqtune.datasets. It is found as a top-level ``datasets`` only because the repository's root
    # is on sys.path (``python run_search.py`` from the root); the name is HuggingFace's: hand its package over.
    from neqtune.datasets.shadow import huggingface_datasets

    _sys.modules["datasets"] = huggingface_datasets(__file__)
else:
    del _sys

from neqtune.datasets import cifar as _cifar  # noqa: F401  (registers "c10", "c100")
from neqtune.datasets import digits as _digits  # noqa: F401  (registers "digits")
from neqtune.datasets import fashion_mnist as _fashion_mnist  # noqa: F401  (registers "fashion-mnist")
from neqtune.datasets import folders as _folders  # noqa: F401  (registers "image-folder")
from neqtune.datasets import hf_disk as _hf_disk  # noqa: F401  (registers "hf-disk")
from neqtune.datasets import images as _images  # noqa: F401  (registers "flowers", "food", "pets", "cub")
from neqtune.datasets import vww as _vww  # noqa: F401  (registers "vww")
from neqtune.datasets.checks import data_problems
from neqtune.datasets.config import DataConfig
from neqtune.datasets.registry import (
    DatasetError,
    DataSplits,
    build_dataset,
    check_dataset,
    dataset_names,
    register_check,
    register_dataset,
    split_train,
)
from neqtune.datasets.roots import ENV_VAR, dataset_root

__all__ = [
    "ENV_VAR",
    "DataConfig",
    "DataSplits",
    "DatasetError",
    "build_dataset",
    "check_dataset",
    "data_problems",
    "dataset_names",
    "dataset_root",
    "register_check",
    "register_dataset",
    "split_train",
]
