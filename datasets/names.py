"""A small typed name -> item registry, shared by policies, models and data sets.

Each registry knows what it holds (``kind``, e.g. ``"policy"``) so that its
errors read the same everywhere::

    unknown policy 'vgg'; known policies: full, random, velocity
    policy 'random' is already registered

It imports nothing from the project; it sits in the lowest layer (the data
sets) so that every layer above may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


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

    def add(self, name: str, item: T) -> None:
        """Store ``item`` under ``name``; ValueError if the name is taken."""
        if name in self._items:
            raise ValueError(self._duplicate.format(name=repr(name)))
        self._items[name] = item

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
