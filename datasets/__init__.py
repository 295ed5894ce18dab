"""Data sets by name: each builder returns the train / val / velocity / test splits.

Register a builder with ``@register_dataset("name")``; it takes a
:class:`~trainables.config.DataConfig` and returns :class:`DataSplits`.
"""

from __future__ import annotations

from datasets import digits as _digits  # noqa: F401  (registers "digits")
from datasets.registry import DataSplits, build_dataset, dataset_names, register_dataset, split_train

__all__ = ["DataSplits", "build_dataset", "dataset_names", "register_dataset", "split_train"]
