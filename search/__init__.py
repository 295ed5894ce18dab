"""Building and running neqtune's Ray Tune searches.

Public surface:

- :func:`load_space`: read and validate a space file.
- :func:`run_search`: run its search with Ray Tune and Optuna.
- :class:`Space`, :class:`SpaceError`.
- :func:`load_plugins`, :func:`resolve_plugins`, :class:`PluginError`,
  :data:`ENTRY_POINT_GROUP`: the researcher's own modules (see ``docs/plugins.md``).

The names are imported on first use: ``run_search.py --help`` and argument
errors answer without loading torch or Ray (seconds of imports).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neqtune.search.experiment import SearchOutcome, run_search
    from neqtune.search.plugins import ENTRY_POINT_GROUP, PluginError, load_plugins, resolve_plugins
    from neqtune.search.space import Space, SpaceError, load_space

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "SearchOutcome", "Space", "SpaceError", "load_plugins", "load_space", "resolve_plugins", "run_search"]

_HOMES = {
    "ENTRY_POINT_GROUP": "neqtune.search.plugins",
    "PluginError": "neqtune.search.plugins",
    "load_plugins": "neqtune.search.plugins",
    "resolve_plugins": "neqtune.search.plugins",
    "SearchOutcome": "neqtune.search.experiment",
    "run_search": "neqtune.search.experiment",
    "Space": "neqtune.search.space",
    "SpaceError": "neqtune.search.space",
    "load_space": "neqtune.search.space",
}


def __getattr__(name: str) -> Any:
    """The public names, imported from their modules when first asked for (PEP 562)."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
