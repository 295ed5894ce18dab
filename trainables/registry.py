"""The name -> item registry, :class:`neqtune_datasets.names.Registry` (it lives in the lowest layer, the data sets)."""

from __future__ import annotations

from neqtune_datasets.names import Registry

__all__ = ["Registry"]
