"""Result tables in Parquet, written atomically.

A table is rewritten whole on every flush: rows go to a temporary file in
the same directory, which then replaces the table in one ``os.replace``, so
a reader never sees a half-written file and a crash mid-write leaves the
previous table intact. Rows already in a table written by an earlier run of
the same experiment are kept (appended to, never clobbered).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
EPOCHS_TABLE = "epochs.parquet"
TRIALS_TABLE = "trials.parquet"


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rows_to_table(rows: Sequence[dict[str, Any]], types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """One flat Arrow table from dict rows (columns in first-seen order).

    ``types`` fixes the Arrow type of known columns, so that a column that
    happens to hold only nulls (an unset ``budget.ratio``) keeps its real
    type and tables of several runs concatenate cleanly.
    """
    types = types or {}
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    arrays = [pa.array([row.get(c) for row in rows], type=types.get(c)) for c in columns]
    return pa.Table.from_arrays(arrays, names=list(columns))


def arrow_type(annotation: Any) -> pa.DataType | None:
    """The Arrow type of a config field annotation (None if there is no single one)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return arrow_type(args[0]) if len(args) == 1 else None
    if origin is typing.Literal:
        return pa.string()
    if origin is list:
        item = arrow_type(args[0])
        return pa.list_(item) if item is not None else None
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}.get(annotation)


def config_column_types(cls: type[Any], prefix: str = "") -> dict[str, pa.DataType]:
    """Arrow types of the flattened columns of the config dataclass ``cls``."""
    found: dict[str, pa.DataType] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            found.update(config_column_types(hints[f.name], f"{name}."))
        elif (tp := arrow_type(hints[f.name])) is not None:
            found[name] = tp
    return found


class ParquetTable:
    """A Parquet table that grows by whole rows and is flushed atomically.

    Args:
        path: the table file.
        key: columns that identify a row; a new row replaces an older one
            with the same key (a restarted trial reports an epoch again).
        types: Arrow types of known columns (see :func:`rows_to_table`).
    """

    def __init__(self, path: Path, key: Sequence[str], types: Mapping[str, pa.DataType] | None = None) -> None:
        self.path = path
        self.key = tuple(key)
        self.types = dict(types or {})
        self._previous: pa.Table | None = pq.read_table(path) if path.exists() else None
        self._rows: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add(self, row: dict[str, Any]) -> None:
        """Add (or replace) a row."""
        self._rows[tuple(row[k] for k in self.key)] = row

    def __len__(self) -> int:
        return len(self._rows)

    def table(self) -> pa.Table:
        """Earlier rows of the file followed by this run's rows."""
        new = rows_to_table(list(self._rows.values()), self.types)
        if self._previous is None or self._previous.num_rows == 0:
            return new
        if new.num_rows == 0:
            return self._previous
        return pa.concat_tables([self._previous, new], promote_options="permissive")

    def flush(self) -> None:
        """Write the table atomically (nothing is written while it has no rows)."""
        if self._rows:
            write_atomic(self.table(), self.path)
