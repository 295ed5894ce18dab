"""HuggingFace's ``datasets``, for a process whose ``sys.path`` puts this repository's ``datasets/`` folder first.

The folder is the package ``neqtune.datasets``; from the repository's root (``python run_search.py``,
``python -m pytest``) the root is on ``sys.path`` and ``import datasets`` would find the folder instead of
HuggingFace's package. The folder's ``__init__`` then calls :func:`huggingface_datasets`, which loads the package
the name belongs to from the rest of ``sys.path``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType


def huggingface_datasets(shadowing_init: str) -> ModuleType:
    """The package ``datasets`` found on ``sys.path`` past the folder of ``shadowing_init`` (the folder's ``__init__.py``).

    Raises:
        ModuleNotFoundError: HuggingFace's package is not installed (neqtune's extra ``[hf]`` installs it).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(shadowing_init)))
    path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec("datasets", path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("No module named 'datasets' (HuggingFace's): pip install 'neqtune[hf]'", name="datasets")
    module = importlib.util.module_from_spec(spec)
    sys.modules["datasets"] = module
    spec.loader.exec_module(module)
    return module
