"""Result tables in Parquet: datasets of part files whose every write is atomic.

A table (``epochs.parquet``, ``trials.parquet``) is a *directory* of part
files, ``part-000000.parquet``, ``part-000001.parquet``, ..., that pandas,
pyarrow and DuckDB read as one table::

    pd.read_parquet("results/exp/epochs.parquet")
    pq.read_table("results/exp/epochs.parquet")
    duckdb.sql("SELECT * FROM 'results/exp/epochs.parquet/*.parquet'")

A flush writes only the rows added since the last one: they fill the newest
part up to :data:`PART_ROWS` rows, then start the next, so its cost does not
grow with the table. A row whose key is already in an older part (a
restarted trial reports an epoch again) replaces its row in that part. Every
part is written whole under a hidden name and renamed into place (on object
storage, uploaded in one request), so at any moment the directory holds
every row once and no part is ever half written: a reader, a crash or a full
disk mid-write never sees or leaves a partial table. All parts share one
schema (a new column rewrites the older parts once), so readers that take
the schema from one file read every column.

Rows already in a table written by an earlier run of the same experiment
are kept (appended to, never clobbered). A table written by neqtune before
the dataset layout (one ``epochs.parquet`` file) is read as it is and turned
into a dataset the first time a writer opens it.

A table lives on the local disk or, for cluster runs, under a URI that
pyarrow's file systems understand (``s3://bucket/exp/epochs.parquet``,
``gs://...``; ``s3://bucket/exp?endpoint_override=host:9000&scheme=http``
for an S3-compatible server).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import secrets
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
EPOCHS_TABLE = "epochs.parquet"
TRIALS_TABLE = "trials.parquet"
# Rows per part file. A flush rewrites at most the newest part plus the rows it adds: 256 realistic epoch
# rows (64 columns, two 52-entry per-layer lists) are about 340 kB and take 5 ms to write here, and a
# 60,000-row study is 235 files.
PART_ROWS = 256
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"


# A write that fails with one of these means the disk under it is full or read-only: the search stops.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


class StorageError(OSError):
    """A write under ``path`` failed because its disk is full or read-only (``reason``: the system's words).

    ``location``: the experiment it happened in, when known (what ``--resume`` takes).
    """

    def __init__(self, path: str, reason: str, *, location: str | None = None) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.location = location


def storage_fault(error: BaseException | str | None) -> str | None:
    """The reason ("No space left on device", "Read-only file system", ...) when ``error`` (an exception or
    its text) is, or was caused by, a full or read-only disk; None otherwise.

    Errors that come back from Ray workers arrive as text inside another
    exception, so the system's message for each errno is looked for too.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return os.strerror(error.errno)
        text = str(error)
        for number in STORAGE_ERRNOS:
            if os.strerror(number) in text or f"[Errno {number}]" in text or f"[errno {number}]" in text:
                return os.strerror(number)
        error = None if isinstance(error, str) else (error.__cause__ or error.__context__)
    return None


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` is a URI (``s3://...``) rather than a local path."""
    return "://" in str(location)


def join_location(location: str, *names: str) -> str:
    """``location/name/...`` for a local path or a URI, keeping a URI's query (``?endpoint_override=...``) at the end."""
    base, sep, query = location.partition("?") if is_uri(location) else (location, "", "")
    joined = "/".join([base.rstrip("/"), *names])
    return f"{joined}{sep}{query}"


def location_name(location: str) -> str:
    """The last path component of a local path or a URI (its query left out)."""
    base = location.partition("?")[0] if is_uri(location) else location
    return base.rstrip("/").rpartition("/")[2]


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


def filesystem_of(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """Like :func:`resolve_location`, with pyarrow's local file system for a local path."""
    fs, path = resolve_location(location)
    return (fs if fs is not None else pafs.LocalFileSystem()), path


def _hidden_name(name: str) -> str:
    """A temporary name next to ``name`` that dataset readers skip (a leading dot)."""
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _write_local(table: pa.Table, path: Path) -> None:
    """Write ``table`` to the local ``path`` through a hidden temporary file and one rename.

    The temporary file is created with the process's umask (as any other
    file the search writes), and removed if the write fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / _hidden_name(path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as stream:
            pq.write_table(table, stream)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_to(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write ``table`` to ``path`` in ``fs`` so that the file appears whole or not at all."""
    if isinstance(fs, pafs.LocalFileSystem):
        _write_local(table, Path(path))
        return
    parent = path.rpartition("/")[0]
    fs.create_dir(parent, recursive=True)
    # Object storage has no rename: the bytes are made in memory and uploaded in one request, which
    # either creates the object whole or fails (a streamed write cut short could leave a short object).
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue()
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def write_atomic(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` as one Parquet file at ``path`` (a local path or a URI), never leaving half a file."""
    fs, where = filesystem_of(path)
    _write_to(fs, where, table)


def _is_part(name: str) -> bool:
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def _part_name(number: int) -> str:
    return f"{PART_PREFIX}{number:06d}{PART_SUFFIX}"


def _part_number(name: str) -> int:
    digits = name[len(PART_PREFIX) : -len(PART_SUFFIX)]
    return int(digits) if digits.isdigit() else -1


def table_files(location: str | Path) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files of the table at ``location``: its parts (a dataset), the file itself (the older layout), or none."""
    fs, path = filesystem_of(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return fs, [path]
    if info.type != pafs.FileType.Directory:
        return fs, []
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.File and _is_part(i.base_name))
    return fs, [f"{path}/{name}" for name in names]


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table | None:
    """The table at ``path`` (local path or URI; a dataset directory or a single file), or None if there is none.

    The parts' schemas are unified, so a column that only newer parts hold
    reads as nulls in the older ones. ``columns``: only these (those the
    table has).
    """
    fs, files = table_files(path)
    if not files:
        return None
    if not isinstance(fs, pafs.LocalFileSystem):
        # Arrow reads an object in several ranged requests, and a flush may replace the newest part meanwhile:
        # each part is fetched in one request instead (one version of it, whole).
        parts = []
        for file in files:
            with fs.open_input_stream(file) as stream:
                parts.append(pq.read_table(pa.BufferReader(stream.read())))
        schema = pa.unify_schemas([part.schema for part in parts], promote_options="permissive")
        table = pa.concat_tables([_conform(part, schema) for part in parts])
        return table if columns is None else table.select([c for c in columns if c in schema.names])
    schema = pa.unify_schemas([pq.read_schema(f, filesystem=fs) for f in files], promote_options="permissive")
    dataset = ds.dataset(files, schema=schema, filesystem=fs, format="parquet")
    wanted = None if columns is None else [c for c in columns if c in schema.names]
    return dataset.to_table(columns=wanted)


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
        if "column_type" in f.metadata:  # a field written in several forms and stored in one (budget.memory: elements)
            found[name] = pa.type_for_alias(f.metadata["column_type"])
        elif dataclasses.is_dataclass(hints[f.name]):
            found.update(config_column_types(hints[f.name], f"{name}."))
        elif (tp := arrow_type(hints[f.name])) is not None:
            found[name] = tp
    return found


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in its order (missing ones null) and types."""
    arrays = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _keys_of(table: pa.Table, key: Sequence[str]) -> list[tuple[Any, ...]]:
    return list(zip(*(table.column(k).to_pylist() for k in key), strict=True)) if table.num_rows else []


def _key_strings(table: pa.Table, key: Sequence[str]) -> pa.Array:
    """One string per row joining its key values (for set membership across tables)."""
    parts = [pc.cast(table.column(k).combine_chunks(), pa.string()).fill_null("\x00null") for k in key]
    joined: pa.Array = pc.binary_join_element_wise(*parts, "\x1f")
    return joined


class ParquetTable:
    """A Parquet dataset that grows by whole rows; each flush writes only what changed.

    Args:
        path: the table's directory (a local path or a URI).
        key: columns that identify a row; a new row replaces an older one
            with the same key (a restarted trial reports an epoch again),
            also one written by an earlier run.
        types: Arrow types of known columns (see :func:`rows_to_table`).
        part_rows: rows per part file.

    Opening reads the key columns and the schema of every part (not the
    rows); memory then holds the keys, the newest part and the rows not yet
    flushed.
    """

    def __init__(
        self, path: str | Path, key: Sequence[str], types: Mapping[str, pa.DataType] | None = None, *, part_rows: int = PART_ROWS
    ) -> None:
        self.path = str(path)
        self.key = tuple(key)
        self.types = dict(types or {})
        self.part_rows = part_rows
        self._fs, self._root = filesystem_of(path)
        self._pending: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._added: set[tuple[Any, ...]] = set()
        self._where: dict[tuple[Any, ...], str] = {}  # key -> the part holding its row
        self._part_rows: dict[str, int] = {}
        self._part_schemas: dict[str, pa.Schema] = {}
        self._schema: pa.Schema | None = None
        self._newest: tuple[str, pa.Table] | None = None  # the part being filled, as written
        self._open()
        self._previous = frozenset(self._where)

    # --- opening ---------------------------------------------------------------
    def _open(self) -> None:
        info = self._fs.get_file_info(self._root)
        if info.type == pafs.FileType.File:
            self._convert_single_file()
        elif info.type == pafs.FileType.NotFound:
            self._finish_conversion()
        for name in self._part_names():
            part = pq.ParquetFile(f"{self._root}/{name}", filesystem=self._fs)
            keys = _keys_of(part.read(columns=list(self.key)), self.key)
            self._part_rows[name] = len(keys)
            self._part_schemas[name] = part.schema_arrow
            self._where.update(dict.fromkeys(keys, name))
        if self._part_schemas:
            self._schema = pa.unify_schemas(list(self._part_schemas.values()), promote_options="permissive")
        self._remove_stale_temporaries()

    def _part_names(self) -> list[str]:
        if self._fs.get_file_info(self._root).type != pafs.FileType.Directory:
            return []
        selector = pafs.FileSelector(self._root)
        return sorted(i.base_name for i in self._fs.get_file_info(selector) if i.type == pafs.FileType.File and _is_part(i.base_name))

    def _remove_stale_temporaries(self) -> None:
        """Hidden files of writes cut short by a crash (readers skip them; nothing else needs them)."""
        if not isinstance(self._fs, pafs.LocalFileSystem) or not Path(self._root).is_dir():
            return
        for leftover in Path(self._root).glob(f".{PART_PREFIX}*.tmp"):
            leftover.unlink(missing_ok=True)

    def _convert_single_file(self) -> None:
        """Turn a one-file table of the older layout into a dataset holding the same rows as its first part."""
        table = pq.read_table(self._root, filesystem=self._fs)
        if isinstance(self._fs, pafs.LocalFileSystem):
            root = Path(self._root)
            staging = root.parent / _hidden_name(root.name)
            _write_local(table, staging / _part_name(0))
            old = root.parent / _hidden_name(root.name)
            os.replace(root, old)  # between these two renames a reader finds no table, never a wrong one
            os.replace(staging, root)
            old.unlink()
            return
        # Object storage: the object ``epochs.parquet`` and the objects under ``epochs.parquet/`` can coexist.
        _write_to(self._fs, f"{self._root}/{_part_name(0)}", table)
        self._fs.delete_file(self._root)

    def _finish_conversion(self) -> None:
        """A conversion cut short between its two renames left the dataset under its hidden name: put it in place."""
        if not isinstance(self._fs, pafs.LocalFileSystem):
            return
        root = Path(self._root)
        for hidden in sorted(root.parent.glob(f".{root.name}.*.tmp")):
            if hidden.is_dir() and (hidden / _part_name(0)).is_file():
                os.replace(hidden, root)
            elif hidden.is_file():
                hidden.unlink()

    # --- rows --------------------------------------------------------------------
    def add(self, row: dict[str, Any]) -> None:
        """Add (or replace) a row; it is written by the next :meth:`flush`."""
        key = tuple(row[k] for k in self.key)
        self._pending[key] = row
        self._added.add(key)

    def __len__(self) -> int:
        """Rows added since the table was opened."""
        return len(self._added)

    def previous_keys(self) -> set[tuple[Any, ...]]:
        """Keys of the rows that were in the table when it was opened."""
        return set(self._previous)

    @property
    def pending(self) -> int:
        """Rows added and not yet written."""
        return len(self._pending)

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row: those written (less those replaced since) followed by those not yet written.

        ``columns``: only these (the ones the table has).
        """
        written = read_table(self._root if isinstance(self._fs, pafs.LocalFileSystem) else self.path, columns=None)
        new = rows_to_table(list(self._pending.values()), self.types)
        if written is None or written.num_rows == 0:
            merged = new
        elif new.num_rows == 0:
            merged = written
        else:
            keep = pc.invert(pc.is_in(_key_strings(written, self.key), value_set=_key_strings(new, self.key)))
            merged = pa.concat_tables([written.filter(keep), new], promote_options="permissive")
        if columns is None:
            return merged
        return merged.select([c for c in columns if c in merged.column_names])

    # --- writing -------------------------------------------------------------
    def flush(self) -> None:
        """Write the rows added since the last flush (nothing when there are none).

        Raises:
            OSError: a write failed (a full or read-only disk): the parts
                already there stay whole, and the rows not written stay
                pending for the next flush.
        """
        if not self._pending:
            return
        new = rows_to_table(list(self._pending.values()), self.types)
        schema = new.schema if self._schema is None else pa.unify_schemas([self._schema, new.schema], promote_options="permissive")
        for name, part_schema in list(self._part_schemas.items()):
            if not part_schema.equals(schema):  # a new column or a wider type: the older parts take it too
                self._rewrite(name, schema)
        self._schema = schema
        new = _conform(new, schema)
        keys = list(self._pending)
        replaced: dict[str, list[int]] = {}
        added: list[int] = []
        for index, key in enumerate(keys):
            if key in self._where:
                replaced.setdefault(self._where[key], []).append(index)
            else:
                added.append(index)
        for name, indices in replaced.items():
            self._replace_rows(name, new.take(indices), [keys[i] for i in indices])
        while added:
            name, current = self._newest_part()
            room = self.part_rows - current.num_rows
            chunk, added = added[:room], added[room:]
            rows = new.take(chunk)
            self._write_part(name, pa.concat_tables([current, rows]) if current.num_rows else rows, [keys[i] for i in chunk])

    def _read_part(self, name: str) -> pa.Table:
        if self._newest is not None and self._newest[0] == name:
            return self._newest[1]
        return pq.read_table(f"{self._root}/{name}", filesystem=self._fs)

    def _rewrite(self, name: str, schema: pa.Schema) -> None:
        self._write_part(name, _conform(self._read_part(name), schema), [])

    def _replace_rows(self, name: str, rows: pa.Table, keys: list[tuple[Any, ...]]) -> None:
        old = self._read_part(name)
        keep = pc.invert(pc.is_in(_key_strings(old, self.key), value_set=_key_strings(rows, self.key)))
        self._write_part(name, pa.concat_tables([_conform(old.filter(keep), rows.schema), rows]), keys)

    def _newest_part(self) -> tuple[str, pa.Table]:
        """The part new rows go to, with its rows: the newest one if it has room, else a new one."""
        names = sorted(self._part_rows, key=_part_number)
        if names and self._part_rows[names[-1]] < self.part_rows:
            return names[-1], self._read_part(names[-1])
        number = _part_number(names[-1]) + 1 if names else 0
        assert self._schema is not None
        return _part_name(number), self._schema.empty_table()

    def _write_part(self, name: str, table: pa.Table, keys: Iterable[tuple[Any, ...]]) -> None:
        """Write one part whole; only then count its rows as written."""
        _write_to(self._fs, f"{self._root}/{name}", table)
        self._part_rows[name] = table.num_rows
        self._part_schemas[name] = table.schema
        for key in keys:
            self._where[key] = name
            del self._pending[key]
        if name == max(self._part_rows, key=_part_number) or (self._newest is not None and self._newest[0] == name):
            self._newest = (name, table)
