"""A small typed name -> item registry, shared by policies, models and data sets.

Each registry knows what it holds (``kind``, e.g. ``"policy"``) so that its
errors read the same everywhere::

    unknown policy 'vgg'; known policies: full, random, velocity
    policy 'random' is already registered by neqtune.trainables.policies.study (.../study.py); again by my_policies (.../my_policies.py)

Each entry remembers where it was registered (its origin: the module that
defined it and that module's file), so that a plug-in that takes a name
already taken is told which module holds it.

It imports nothing from the project; it sits in the lowest layer (the data
sets) so that every layer above may use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def origin_of(item: Any) -> str:
    """Where ``item`` (a function or class; else its type) was defined: its module's name and file (``my_models (/home/me/my_models.py)``)."""
    module = getattr(item, "__module__", None)
    if not isinstance(module, str):
        module = type(item).__module__
    file = getattr(sys.modules.get(module), "__file__", None)
    return f"{module} ({file})" if file else module


class DuplicateNameError(ValueError):
    """A second registration under a taken name; the message names both origins."""

    def __init__(self, message: str, *, name: str, existing: str, new: str) -> None:
        super().__init__(message)
        self.name = name
        self.existing = existing
        self.new = new


class Registry(Generic[T]):
    """Items of type ``T`` by name; names are unique.

    Args:
        kind: what one item is, for messages (``"data set"``).
        plural: the plural of ``kind`` (``"data sets"``).
        duplicate: message of a second registration under one name, with
            ``{name}`` for the quoted name; ``"<kind> <name> is already
            registered"`` by default.
    """

    def __init__(self, kind: str, plural: str, *, duplicate: str | None = None) -> None:
        self.kind = kind
        self.plural = plural
        self._duplicate = duplicate if duplicate is not None else f"{kind} {{name}} is already registered"
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def add(self, name: str, item: T, *, origin: str | None = None) -> None:
        """Store ``item`` under ``name``, registered from ``origin`` (default: :func:`origin_of` the item).

        Raises:
            DuplicateNameError: the name is taken (the message names the module that holds it and the new one).
        """
        origin = origin if origin is not None else origin_of(item)
        if name in self._items:
            existing = self._origins[name]
            message = f"{self._duplicate.format(name=repr(name))} by {existing}; again by {origin}"
            raise DuplicateNameError(message, name=name, existing=existing, new=origin)
        self._items[name] = item
        self._origins[name] = origin

    def origin(self, name: str) -> str:
        """Where the entry ``name`` was registered (see :func:`origin_of`); KeyError if it is not."""
        return self._origins[name]

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that stores the decorated object under ``name`` and returns it unchanged."""

        def add(item: T) -> T:
            self.add(name, item)
            return item

        return add

    def remove(self, name: str) -> None:
        """Drop ``name`` (a check that registered an item for its own duration); KeyError if absent."""
        del self._items[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def get(self, name: str) -> T:
        """The item registered as ``name``; ValueError listing the known names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}") from None

    def find(self, name: str) -> T | None:
        """The item registered as ``name``, or ``None``."""
        return self._items.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
