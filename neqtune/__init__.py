"""neqtune: which neurons or channels to update under a budget, found by search (Ray Tune + Optuna).

The parts, each a subpackage:

- :mod:`neqtune.datasets`: data sets by name (``register_dataset``), their splits and input pipeline.
- :mod:`neqtune.trainables`: the budgeted-update trainer in plain PyTorch, its budgets, policies, update
  mechanics and models (``register_model``, ``register_policy``).
- :mod:`neqtune.search`: spaces, the Ray Tune / Optuna search, plug-ins, the command line.
- :mod:`neqtune.results`: the result tables' analysis, plots and the papers' tables.

What a plug-in author needs is re-exported here and imported on first use, so that ``import neqtune``
stays cheap and the data sets' layer imports nothing above it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neqtune.datasets import DataSplits, register_check, register_dataset
    from neqtune.trainables import BudgetPolicy, register_model, register_policy
    from neqtune.trainables.metrics import Metric, register_metric
    from neqtune.trainables.policies.contract import check_policy

__version__ = "0.2.0"

PARTS = ("datasets", "results", "search", "trainables")
"""The subpackages, each a top-level folder of the repository (the design card's layout)."""


class _CheckoutParts(importlib.abc.MetaPathFinder):
    """Finds ``neqtune.<part>`` in the folder ``<part>/`` beside this package's folder, in a source checkout.

    An installed wheel holds the parts inside ``neqtune/`` (pyproject.toml maps them there), and an editable
    install maps them with setuptools' finder; this one serves a checkout that is not installed: ``python
    run_search.py`` from a fresh clone, and the copy of the repository that ``ray job submit --working-dir``
    ships to a cluster's workers.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, part = fullname.partition(".")
        if prefix != "neqtune" or part not in PARTS:
            return None
        folder = self.root / part
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


_ROOT = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "search").is_dir() and all((_ROOT / part / "__init__.py").is_file() for part in PARTS):
    sys.meta_path.insert(0, _CheckoutParts(_ROOT))  # first: the parts beside the neqtune/ folder that was imported

_HOMES = {
    "BudgetPolicy": "neqtune.trainables",
    "DataSplits": "neqtune.datasets",
    "Metric": "neqtune.trainables.metrics",
    "register_metric": "neqtune.trainables.metrics",
    "check_policy": "neqtune.trainables.policies.contract",
    "register_check": "neqtune.datasets",
    "register_dataset": "neqtune.datasets",
    "register_model": "neqtune.trainables",
    "register_policy": "neqtune.trainables",
}

__all__ = [
    "BudgetPolicy",
    "DataSplits",
    "Metric",
    "__version__",
    "check_policy",
    "register_check",
    "register_dataset",
    "register_metric",
    "register_model",
    "register_policy",
]


def __getattr__(name: str) -> Any:
    """The public names, imported from their modules when first asked for (PEP 562)."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'neqtune' has no attribute {name!r}")
