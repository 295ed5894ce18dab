"""Typed configuration from plain mappings (YAML): the parser every config section uses.

A section is a dataclass; :func:`from_mapping` builds it from a mapping,
rejecting unknown keys and wrong types with the dotted path of the key, then
calls its ``validate(path)``, which checks types' ranges only (a batch size
>= 1, a fraction in (0, 1)). Whether a name is registered, a file exists or
weights can be had is checked later, when a trial is checked or built: parsing
imports no registry and reads nothing from disk, so a driver can parse a
trial's config as often as it likes.

It lives in the lowest layer (the data sets) because the data section and the
data sets' own errors need it, and layers import one way: data sets, then
trainables, then search.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles a trial's exception to hand it to the driver; the default would call cls(str(self)).
        return (type(self), (self.key, self.message))


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (int -> float, mapping -> dataclass)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
        item_type = typing.get_args(tp)[0]
        return [_convert(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        _, value_type = typing.get_args(tp)
        return {str(k): _convert(v, value_type, join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_mapping(typing.cast(type[Any], tp), value, path)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")


def from_mapping(cls: type[T], data: Any, path: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.

    Missing keys take the field defaults. A section that renamed keys has a
    classmethod ``upgrade_keys(data, path)`` that returns ``data`` with its
    former keys moved to their new place; it runs first. After construction, a ``validate``
    method of the dataclass (if any) is called with ``path``.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a mapping, got {data!r}")
    upgrade = getattr(cls, "upgrade_keys", None)
    if upgrade is not None:  # a section that still reads its former keys moves them first
        data = upgrade(data, path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls))}
    for key in data:
        if key not in fields:
            raise ConfigError(join(path, str(key)), f"unknown key; known keys: {', '.join(fields)}")
    values = {name: _convert(data[name], hints[name], join(path, name)) for name in fields if name in data}
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


class ConfigProblems(ConfigError):
    """Several problems of one section: reads as the first (key and message), carries all in ``problems``."""

    def __init__(self, problems: list[ConfigError]) -> None:
        super().__init__(problems[0].key, problems[0].message)
        self.problems = list(problems)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay lists."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = join(prefix, str(key))
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def set_dotted(nested: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``nested["a"]["b"] = value`` for ``dotted = "a.b"``, creating sections."""
    *sections, leaf = dotted.split(".")
    node = nested
    for section in sections:
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, f"{section!r} is not a section")
        node = child
    node[leaf] = value


def with_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with dotted-key ``overrides`` applied."""
    merged: dict[str, Any] = _deep_copy(base)
    for dotted, value in overrides.items():
        set_dotted(merged, dotted, value)
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def iter_leaf_keys(cls: type[Any], prefix: str = "") -> Iterator[str]:
    """Dotted names of every leaf field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_leaf_keys(typing.cast(type[Any], tp), join(prefix, f.name))
        else:
            yield join(prefix, f.name)
