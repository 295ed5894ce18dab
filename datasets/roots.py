"""Where each data set lives on disk: ``data.root``, else ``$NEQ_DATA/<key>``.

One convention for every data set: a space file may name the directory
of its data set in ``data.root``; without it, the directory is
``$NEQ_DATA/<key>`` (``$NEQ_DATA/c10``, ``$NEQ_DATA/vww``, ...). Only
Fashion-MNIST has a last fallback, the directory where Debian's
``dataset-fashion-mnist`` package installs its files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from neqtune.datasets.config import DataConfig
from neqtune.datasets.parsing import ConfigError

ENV_VAR = "NEQ_DATA"

# Used only when neither data.root nor NEQ_DATA is set.
SYSTEM_ROOTS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}


def dataset_root(config: DataConfig) -> Path:
    """The directory of the data set named in ``config``.

    ``config.root`` if given, else ``$NEQ_DATA/<config.name>``, else a system
    directory where one is known (Fashion-MNIST from Debian).

    Raises:
        ConfigError: (``data.root``) none of them is set.
    """
    if config.root:
        return Path(config.root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser() / config.name
    system = SYSTEM_ROOTS.get(config.name)
    if system is not None and system.is_dir():
        return system
    raise ConfigError(
        "data.root",
        f"data set {config.name!r} needs a directory: set data.root, or set {ENV_VAR} so that it is ${ENV_VAR}/{config.name}",
    )


@contextlib.contextmanager
def download_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root`` while one process downloads into it.

    Trials that start together on one machine would otherwise download the
    same archive side by side into the same directory.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".neqtune-download.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def require(condition: bool, message: str, key: str = "data.root") -> None:
    """Raise ``ConfigError(key, message)`` unless ``condition``."""
    if not condition:
        raise ConfigError(key, message)
