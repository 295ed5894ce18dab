"""The checks of a parsed data section that look beyond its values: a registered name, a writable cache."""

from __future__ import annotations

from pathlib import Path

from neqtune.datasets.cache import cache_dir, check_cache_dir
from neqtune.datasets.config import DataConfig
from neqtune.datasets.parsing import ConfigError, join
from neqtune.datasets.registry import dataset_names

# Cache directories this process has already written a probe file in: a space checks every combination of its
# searched values, and one probe per directory answers for all of them (a directory that failed is probed again).
_writable: set[Path] = set()


def data_problems(config: DataConfig, path: str = "data") -> list[ConfigError]:
    """Whether ``config.name`` is a registered data set, and whether the decoded cache (``cache: decoded``) can be written.

    Its files are :func:`neqtune.datasets.check_dataset`'s.
    """
    found = []
    if config.name not in dataset_names():
        found.append(ConfigError(join(path, "name"), f"unknown data set {config.name!r}; known data sets: {', '.join(dataset_names())}"))
    if config.cache == "decoded" and (directory := cache_dir()) not in _writable:
        try:
            check_cache_dir(directory)
        except ConfigError as err:
            found.append(ConfigError(join(path, "cache"), err.message))
        else:
            _writable.add(directory)
    return found
