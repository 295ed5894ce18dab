"""Building and running neqtune's Ray Tune searches.

Public surface:

- :func:`load_space`: read and validate a space file.
- :func:`run_search`: run its search with Ray Tune and Optuna.
- :class:`Space`, :class:`SpaceError`.
"""

from __future__ import annotations

from search.experiment import SearchOutcome, run_search
from search.space import Space, SpaceError, load_space

__all__ = ["SearchOutcome", "Space", "SpaceError", "load_space", "run_search"]
