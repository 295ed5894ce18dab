"""A node's index of a data set's image files: listed, and their state hashed, once per node and data set state.

Without it every trial start lists every class directory of an image folder
and, with ``data.cache: decoded``, stats every image to name its cache file:
about 101 k stats per trial on Food-101, on every node, on a cluster's shared
file system too. The index keeps what that work found in one small file under
:func:`~neqtune.datasets.cache.cache_dir`, ``index-<hash of kind and root>.json``:

- the data set's classes and, per split, its files and labels;
- per split, the digest of its files' paths, labels, sizes and
  ``st_mtime_ns`` (:class:`~neqtune.datasets.samples.FileDigest`): the
  decoded cache's key, so that the cache stats no file;
- the ``st_mtime_ns`` of every directory the listing read and of every
  directory that holds a listed file, and the size and ``st_mtime_ns`` of
  every metadata file it read (Food-101's ``meta/train.json``).

A trial start stats those directories and files only (about 205 for Food-101
as an image folder, instead of 101 k files) and reuses the index when every
one is unchanged. When anything differs, or the index file is missing,
unreadable, corrupt (its SHA-256 does not match its body), of another version
or for another data set, the files are listed and stat-ed again and the index
rewritten: a stale or corrupt index is rebuilt, never read. It is written
into ``<file>.tmp.<pid>`` and renamed into place, so a reader sees the old
file or the new one, never part of one; concurrent trials that rebuild it
write the same thing, so no lock is needed. An index that cannot be written
(an unwritable cache directory) is not an error: the listing is used, and the
next trial start lists again.

Adding, removing or renaming a file changes its directory's mtime, and so
does a copy that writes a temporary file and renames it over the old one
(rsync, most download tools). **Known limit:** a file overwritten in place
under the same name (``cp new.jpg old.jpg``, an image ``save`` over it)
changes only its own mtime, which a trial start does not look at, so the
decoded cache would keep serving the old pixels. Seeing it would take a stat
of every file at every trial start, the very cost this index removes; neqtune
leaves it to the user instead: after overwriting images in place, run
``touch <data set root>``. The root's mtime is checked at every trial start
on every node, so each node's index is rebuilt, every file stat-ed once more,
and the decoded cache rebuilt under its new key. Deleting the node's
``index-*.json`` files in the cache directory does the same on that node.

A build lists the data set, stats what it watches, then lists it again and
stats every file: a change made after those stats moves an mtime the next
trial start compares, and one made before them is in the listing kept (two
listings that differ are not kept). A directory's mtime only moves at the
file system's clock tick (a few milliseconds on Linux, up to 2 s on FAT and
some network file systems), so a second change in the tick of the first
would leave it where the stats saw it. As git does with "racily clean"
files, an index whose directories or metadata files changed less than
:data:`SETTLE_SECONDS` before the build began is used but neither kept in
memory nor written: trial starts list again until the data set has settled.
(A file system whose clock runs ahead of this node's by more than that never
looks settled: its trials list at every start, as they did before the index.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neqtune.datasets.cache import cache_dir, source_digest
from neqtune.datasets.registry import DatasetError
from neqtune.datasets.samples import FileDigest, FileSource

__all__ = ["INDEX_VERSION", "SETTLE_SECONDS", "FileIndex", "Listing", "Watched", "clear_memory", "index_path", "node_index"]

INDEX_VERSION = 2
SETTLE_SECONDS = 2.0
_MAGIC = "neqtune-file-index"
_ABSENT = -1  # the mtime (and size) recorded for a path that does not exist: it must still not exist


@dataclass(frozen=True)
class Listing:
    """What a data set's lister found: its classes, its ``(path, label)`` pairs per split, and what it read to find them.

    ``directories`` and ``files`` are the directories it listed and the
    metadata files it read; the directory of every listed file is watched as
    well, without being named here.
    """

    classes: tuple[str, ...]
    splits: dict[str, tuple[tuple[str, int], ...]]
    directories: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Watched:
    """What an index depends on, as it was: ``(path, mtime_ns)`` of directories, ``(path, size, mtime_ns)`` of metadata files.

    A missing path is recorded with ``-1`` for each number: it must still be missing.
    """

    directories: tuple[tuple[str, int], ...] = ()
    files: tuple[tuple[str, int, int], ...] = ()

    @classmethod
    def now(cls, directories: Iterable[str], files: Iterable[str]) -> Watched:
        """The paths stat-ed now: one ``stat`` each."""
        return cls(tuple((path, _stat(path)[1]) for path in directories), tuple((path, *_stat(path)) for path in files))

    def unchanged(self) -> bool:
        """Whether every path still has the recorded state."""
        return Watched.now((path for path, _ in self.directories), (path for path, _, _ in self.files)) == self

    def settled(self, started_ns: int) -> bool:
        """Whether nothing changed within :data:`SETTLE_SECONDS` before ``started_ns``, or since."""
        mtimes = [mtime for _, mtime in self.directories] + [mtime for _, _, mtime in self.files]
        return all(mtime < started_ns - int(SETTLE_SECONDS * 1e9) for mtime in mtimes if mtime != _ABSENT)


def _stat(path: str) -> tuple[int, int]:
    """``(size, mtime_ns)`` of ``path``, or ``(-1, -1)`` if it cannot be stat-ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return _ABSENT, _ABSENT
    return stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class FileIndex:
    """A data set's classes and one :class:`FileSource` per split, each carrying its files' digest where every file could be stat-ed."""

    classes: tuple[str, ...]
    sources: dict[str, FileSource]
    watched: Watched = field(default_factory=Watched, repr=False)


# Per process: an index already read or built, revalidated with the same stats at each use (Ray reuses a worker for many trials).
_memory: dict[str, FileIndex] = {}


def clear_memory() -> None:
    """Forget the indexes this process holds (what a fresh worker process starts with); the files stay."""
    _memory.clear()


def _key(kind: str, root: Path) -> str:
    return hashlib.sha256(f"{INDEX_VERSION}\0{kind}\0{root}".encode()).hexdigest()[:16]


def index_path(kind: str, root: Path, directory: Path | None = None) -> Path:
    """Where the node's index of ``kind`` at ``root`` lives: ``<cache dir>/index-<hash>.json``."""
    return (cache_dir() if directory is None else directory) / f"index-{_key(kind, root)}.json"


def _watch(listing: Listing) -> Watched:
    """Every directory the listing read or that holds a listed file, and its metadata files, stat-ed now."""
    directories = dict.fromkeys(listing.directories)
    for pairs in listing.splits.values():
        directories.update(dict.fromkeys(os.path.dirname(path) for path, _ in pairs))
    return Watched.now(directories, listing.files)


def _build(listing: Listing, watched: Watched) -> FileIndex:
    sources = {}
    for split, pairs in listing.splits.items():
        source = FileSource(tuple(path for path, _ in pairs), tuple(label for _, label in pairs))
        try:
            digest: FileDigest | None = source_digest(source)
        except DatasetError:
            digest = None  # a file that cannot be stat-ed: the decoded cache stats them itself, and names it
        sources[split] = FileSource(source.paths, source.labels, digest)
    return FileIndex(listing.classes, sources, watched)


def _encode(kind: str, root: Path, index: FileIndex) -> bytes:
    prefix = f"{root}{os.sep}"
    splits = {}
    for split, source in index.sources.items():
        # relative to the root when all are under it (about half the bytes to write and parse), else as they are
        relative = all(path.startswith(prefix) for path in source.paths)
        splits[split] = {
            "relative": relative,
            "paths": [path[len(prefix) :] for path in source.paths] if relative else list(source.paths),
            "labels": list(source.labels),
            "digest": None if source.digest is None else [source.digest.files, source.digest.state],
        }
    body = json.dumps(
        {
            "kind": kind,
            "root": str(root),
            "classes": list(index.classes),
            "splits": splits,
            "directories": index.watched.directories,
            "files": index.watched.files,
        },
        separators=(",", ":"),
    ).encode()
    return f"{_MAGIC} {INDEX_VERSION} {hashlib.sha256(body).hexdigest()}\n".encode() + body


def _decode(data: bytes, kind: str, root: Path) -> FileIndex | None:
    """The index in ``data``, or None unless it is whole, of this version and for ``kind`` at ``root``."""
    header, _, body = data.partition(b"\n")
    if header != f"{_MAGIC} {INDEX_VERSION} {hashlib.sha256(body).hexdigest()}".encode():
        return None
    try:
        stored: Any = json.loads(body)
        if stored["kind"] != kind or stored["root"] != str(root):
            return None
        prefix = f"{root}{os.sep}"
        sources = {}
        for split, entry in stored["splits"].items():
            # Whole-list operations: a warm trial start decodes every path of the data set here, once per process.
            paths = tuple(map(prefix.__add__, entry["paths"])) if entry["relative"] is True else tuple(map(str, entry["paths"]))
            labels = tuple(entry["labels"])
            if not all(type(label) is int for label in labels):
                return None
            digest = None if entry["digest"] is None else FileDigest(str(entry["digest"][0]), str(entry["digest"][1]))
            if len(paths) != len(labels):
                return None
            sources[str(split)] = FileSource(paths, labels, digest)
        watched = Watched(
            tuple((str(path), int(mtime)) for path, mtime in stored["directories"]),
            tuple((str(path), int(size), int(mtime)) for path, size, mtime in stored["files"]),
        )
        return FileIndex(tuple(str(name) for name in stored["classes"]), sources, watched)
    except (ValueError, KeyError, TypeError, IndexError):  # sound checksum, unexpected shape: rebuilt all the same
        return None


def _read(path: Path, kind: str, root: Path) -> FileIndex | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return _decode(data, kind, root)


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (tmp file, then rename); an unwritable directory is skipped."""
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def node_index(kind: str, root: Path, list_files: Callable[[], Listing], *, directory: Path | None = None) -> FileIndex:
    """The index of the data set ``kind`` at ``root`` on this node: reused while nothing it watches changed, else listed again.

    Args:
        kind: what the listing is (a data set and its layout); part of the key.
        root: the data set's resolved directory; part of the key.
        list_files: lists the data set from the disk (its errors pass through).
        directory: where index files live; default :func:`~neqtune.datasets.cache.cache_dir`.

    Returns:
        The classes and a :class:`FileSource` per split, with the files' digests.
    """
    key = _key(kind, root)
    held = _memory.get(key)
    if held is not None and held.watched.unchanged():
        return held
    path = index_path(kind, root, directory)
    stored = _read(path, kind, root)
    if stored is not None and stored.watched.unchanged():
        _memory[key] = stored
        return stored
    started_ns = time.time_ns()
    first = list_files()
    watched = _watch(first)
    # Listed again after the stats, and the files stat-ed after them too: a change made after the stats moves an
    # mtime that the next trial start compares, and one made before them shows in this listing (or in both).
    listing = list_files()
    index = _build(listing, watched)
    if listing == first and watched.settled(started_ns):
        _memory[key] = index
        _write(path, _encode(kind, root, index))
    else:
        _memory.pop(key, None)
    return index
