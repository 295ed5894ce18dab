"""Result tables in Parquet, written atomically.

A table is rewritten whole on every flush: rows go to a temporary file in
the same directory, which then replaces the table in one ``os.replace``, so
a reader never sees a half-written file and a crash mid-write leaves the
previous table intact. Rows already in a table written by an earlier run of
the same experiment are kept (appended to, never clobbered); a row of this
run with the key of an earlier row replaces it, so a resumed trial that
reports an epoch again leaves that epoch once.

A table lives on the local disk or, for cluster runs, under a URI that
pyarrow's file systems understand (``s3://bucket/exp/epochs.parquet``,
``gs://...``); there the upload of one object is the atomic step.
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
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
EPOCHS_TABLE = "epochs.parquet"
TRIALS_TABLE = "trials.parquet"


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` is a URI (``s3://...``) rather than a local path."""
    return "://" in str(location)


def resolve_location(location: str | Path) -> tuple[pafs.FileSystem | None, str]:
    """``(file system, path in it)`` of a URI; ``(None, absolute path)`` for a local path.

    Raises:
        ValueError: a URI whose scheme pyarrow does not know (one line naming it).
    """
    if not is_uri(location):
        return None, str(Path(location).expanduser().resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(str(location))
    except (pa.ArrowException, ValueError, OSError) as err:
        raise ValueError(f"{location}: not a storage URI pyarrow can open ({str(err).splitlines()[0]})") from None
    return fs, path


def write_atomic(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` to ``path`` (a local path or a URI) via a temporary file and a rename."""
    fs, where = resolve_location(path)
    if fs is not None:
        parent, _, name = where.rpartition("/")
        fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{name}.{os.getpid()}.tmp"
        try:
            pq.write_table(table, tmp, filesystem=fs)
            fs.move(tmp, where)
        except BaseException:
            if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                fs.delete_file(tmp)
            raise
        return
    local = Path(where)
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, local)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_table(path: str | Path) -> pa.Table | None:
    """The table at ``path`` (local path or URI), or None if there is none."""
    fs, where = resolve_location(path)
    if fs is None:
        return pq.read_table(where) if Path(where).is_file() else None
    if fs.get_file_info(where).type != pafs.FileType.File:
        return None
    return pq.read_table(where, filesystem=fs)


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
        path: the table file (a local path or a URI).
        key: columns that identify a row; a new row replaces an older one
            with the same key (a restarted trial reports an epoch again),
            also one read from the file.
        types: Arrow types of known columns (see :func:`rows_to_table`).
    """

    def __init__(self, path: str | Path, key: Sequence[str], types: Mapping[str, pa.DataType] | None = None) -> None:
        self.path = path
        self.key = tuple(key)
        self.types = dict(types or {})
        self._previous: pa.Table | None = read_table(path)
        self._rows: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add(self, row: dict[str, Any]) -> None:
        """Add (or replace) a row."""
        self._rows[tuple(row[k] for k in self.key)] = row

    def __len__(self) -> int:
        return len(self._rows)

    def previous_keys(self) -> set[tuple[Any, ...]]:
        """Keys of the rows read from the file when the table was opened."""
        if self._previous is None:
            return set()
        columns = [self._previous.column(k).to_pylist() for k in self.key]
        return set(zip(*columns, strict=True))

    def table(self) -> pa.Table:
        """Earlier rows of the file (less those this run replaced) followed by this run's rows."""
        new = rows_to_table(list(self._rows.values()), self.types)
        previous = self._previous
        if previous is None or previous.num_rows == 0:
            return new
        if new.num_rows == 0:
            return previous
        keep = pc.invert(pc.is_in(_key_strings(previous, self.key), value_set=_key_strings(new, self.key)))
        return pa.concat_tables([previous.filter(keep), new], promote_options="permissive")

    def flush(self) -> None:
        """Write the table atomically (nothing is written while it has no rows)."""
        if self._rows:
            write_atomic(self.table(), self.path)


def _key_strings(table: pa.Table, key: Sequence[str]) -> pa.Array:
    """One string per row joining its key values (for set membership across tables)."""
    parts = [pc.cast(table.column(k).combine_chunks(), pa.string()).fill_null("\x00null") for k in key]
    joined: pa.Array = pc.binary_join_element_wise(*parts, "\x1f")
    return joined
