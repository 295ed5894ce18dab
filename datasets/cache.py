"""A decoded-image cache: a data set's image files decoded once per node into one memory-mapped ``uint8`` file.

Image-folder data sets otherwise decode a JPEG per sample per epoch through
PIL (about 420 images/s per core for 500x375 JPEGs), for every trial. The
cache decodes each image once, resized so that its short side is
``CACHE_SCALE * image_size`` (never upscaled), and stores the RGB pixels in
one file under :func:`cache_dir`; later trials and epochs on that node read
them through :class:`numpy.memmap`, with no decoding.

The file's name is a hash of the format version, ``CACHE_SCALE``,
``image_size`` and the source's file index (path, size and ``mtime_ns`` of
each file, and its label, in order): adding, removing or changing a source
file gives a new name, so a stale file is never read. That index is the
node's file index of the data set (:mod:`neqtune.datasets.file_index`),
made once per node and data set state rather than by a stat of every file
at every trial start; see there for what it checks at a trial start, and
for the one change it does not see (a file overwritten in place). One process builds a
file under an exclusive ``flock`` on ``<file>.lock``, into
``<file>.tmp.<pid>``, and renames it into place only once it is complete and
synced; a killed build leaves no file under the final name.

File layout (little-endian)::

    header  32 bytes   magic b"NEQDECO\\0", format version u32, image count u64,
                       index length in bytes u64, CRC-32 of the index u32
    index   count x 28 per image: byte offset of its pixels from the file's
                       start u64, height u32, width u32, CRC-32 of its pixels u32,
                       label i64
    pixels             each image's [height, width, 3] uint8 pixels, in order,
                       back to back

A file is used only if its magic, version, count, index CRC, offsets and
exact size all match; each image's CRC is checked on every read. A cache
file found corrupt or stale is rebuilt, never read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from neqtune.datasets import samples
from neqtune.datasets.parsing import ConfigError
from neqtune.datasets.registry import DatasetError
from neqtune.datasets.samples import FileDigest, FileSource

__all__ = ["CACHE_SCALE", "ENV_VAR", "DecodedImages", "cache_dir", "check_cache_dir", "decode_resized", "open_decoded", "source_digest"]

ENV_VAR = "NEQ_CACHE"
# Stored short side = CACHE_SCALE * image_size: room for RandomResizedCrop's zoom and for the
# evaluation resize (image_size / 0.875) without decoding the full-size JPEG again.
CACHE_SCALE = 2
FORMAT_VERSION = 1
MAGIC = b"NEQDECO\x00"
_HEADER = struct.Struct("<8sIQQI")
_INDEX = np.dtype([("offset", "<u8"), ("height", "<u4"), ("width", "<u4"), ("crc", "<u4"), ("label", "<i8")])
_SUFFIX = ".u8"
_PROGRESS_SECONDS = 5.0


def cache_dir() -> Path:
    """The directory of decoded-image caches: ``$NEQ_CACHE``, else ``$XDG_CACHE_HOME/neqtune``, else ``~/.cache/neqtune``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "neqtune"


def _config_error(message: str) -> Exception:
    """A ``ConfigError`` on ``data.cache``."""
    return ConfigError("data.cache", message)


def check_cache_dir(path: Path) -> None:
    """Create ``path`` if needed and check that a file can be written in it.

    A probe file is written and removed, because permission bits say nothing
    for root or on some network file systems.

    Raises:
        ConfigError: (``data.cache``) the directory cannot be created or
            written; the message names it.
    """
    probe = path / f".neqtune-probe.{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise _config_error(
            f"cannot create or write the decoded-image cache directory {path}: {err}; set {ENV_VAR} to a writable directory"
        ) from err


def _cached_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """``(width, height)`` with the short side ``CACHE_SCALE * image_size``, or the source's own size if that is smaller."""
    short = min(width, height)
    target = min(CACHE_SCALE * image_size, short)
    if target == short:
        return width, height
    if width <= height:
        return target, max(1, round(height * target / width))
    return max(1, round(width * target / height)), target


def decode_resized(path: str, image_size: int) -> np.ndarray:
    """The file at ``path`` as cached: RGB ``uint8`` ``[h, w, 3]``, resized by :func:`_cached_size`.

    Raises:
        DatasetError: the file cannot be read as an image; names the file.
    """
    return resized_array(samples.load_image(path), image_size)


def resized_array(image: Image.Image, image_size: int) -> np.ndarray:
    """An RGB image as cached: ``uint8`` ``[h, w, 3]``, its short side shrunk to ``CACHE_SCALE * image_size`` (never enlarged)."""
    size = _cached_size(image.width, image.height, image_size)
    if size != image.size:
        # BILINEAR in PIL widens its filter when shrinking (antialiased); reducing_gap=None: no JPEG draft shortcut.
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    return np.array(image, dtype=np.uint8)


def source_digest(source: FileSource) -> FileDigest:
    """The digests of ``source``'s files (:class:`~neqtune.datasets.samples.FileDigest`): one ``stat`` per file.

    Raises:
        DatasetError: a source file cannot be read (its stat fails); names it.
    """
    files = hashlib.sha256()
    state = hashlib.sha256()
    for path, label in zip(source.paths, source.labels, strict=True):
        entry = os.fsencode(path) + f"\0{label}\n".encode()
        try:
            stat = os.stat(path)
        except OSError as err:
            raise DatasetError(f"cannot read image {path}: {err}") from err
        files.update(entry)
        state.update(entry + f"{stat.st_size} {stat.st_mtime_ns}\n".encode())
    return FileDigest(files.hexdigest(), state.hexdigest())


def _file_name(source: FileSource, image_size: int) -> str:
    """``decoded-<files>-s<image_size>-<state>.u8``: ``files`` hashes the paths and labels, ``state`` also their stats.

    The ``files`` part names the data set split, so that a rebuild can remove
    the files of its older states. The digest comes from the node's file
    index where the source carries one (no file is stat-ed), else from a stat
    of every file.

    Raises:
        DatasetError: a source file cannot be read (its stat fails).
    """
    digest = source.digest if source.digest is not None else source_digest(source)
    state = hashlib.sha256(f"{FORMAT_VERSION} {CACHE_SCALE} {image_size}\n{digest.state}".encode())
    return f"{_prefix(digest.files[:16], image_size)}{state.hexdigest()[:16]}{_SUFFIX}"


def _prefix(files_digest: str, image_size: int) -> str:
    return f"decoded-{files_digest}-s{image_size}-"


@dataclass(frozen=True, eq=False)
class _Mapped:
    """An open, validated cache file: its whole bytes mapped, its index, and which inode it is."""

    data: np.ndarray
    index: np.ndarray
    inode: tuple[int, int]


def _pixels_end(index: np.ndarray, start: int) -> int | None:
    """The file size that ``index`` implies, or None unless its images lie back to back from ``start``."""
    heights, widths = index["height"].astype(np.int64), index["width"].astype(np.int64)
    if np.any(heights <= 0) or np.any(widths <= 0):
        return None
    bounds = np.concatenate([[start], start + np.cumsum(heights * widths * 3)])
    if not np.array_equal(index["offset"], bounds[:-1]):
        return None
    return int(bounds[-1])


def _map(path: Path, count: int) -> _Mapped | None:
    """The cache file at ``path`` mapped read-only, or None if it is missing, unreadable, incomplete or not for ``count`` images."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(_HEADER.size)
            if len(header) != _HEADER.size:
                return None
            magic, version, stored_count, index_length, index_crc = _HEADER.unpack(header)
            if (magic, version, stored_count, index_length) != (MAGIC, FORMAT_VERSION, count, count * _INDEX.itemsize):
                return None
            index_bytes = handle.read(index_length)
            if len(index_bytes) != index_length or zlib.crc32(index_bytes) != index_crc:
                return None
            index = np.frombuffer(index_bytes, dtype=_INDEX)
            stat = os.fstat(handle.fileno())
            if _pixels_end(index, _HEADER.size + index_length) != stat.st_size:
                return None
            # The mapping outlives the file handle, and the inode outlives a later unlink or replace.
            data = np.memmap(handle, dtype=np.uint8, mode="r")
    except OSError:
        return None
    return _Mapped(data, index, (stat.st_dev, stat.st_ino))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock ``<path>.lock``: one process builds or removes ``path`` at a time."""
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers(path: Path) -> None:
    """Remove, under ``path``'s lock, files no one will read: tmp files of dead builds and older states of this split.

    ``path``'s own tmp files are dead for sure (their builder held this lock);
    those of other states only if their process is gone (the cache is per
    node). An older state's file may still be mapped by a reader; unlinking
    it leaves that mapping intact.
    """
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for entry in path.parent.glob(prefix + "*"):
        name = entry.name
        if name.endswith(_SUFFIX) and name != path.name:
            stale = True
        elif ".tmp." in name:
            owner, _, pid = name.rpartition(".tmp.")
            stale = owner == path.name or (pid.isdigit() and not _pid_alive(int(pid)))
        else:
            stale = False
        if stale:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


class _Progress:
    """Prints ``neqtune: decoding <n> images into <path> ... k/n`` on stderr: at the start, at the end, and in between every 10 % once a few seconds passed."""

    def __init__(self, total: int, path: Path) -> None:
        self.total = total
        self.path = path
        self.step = max(1, total // 10)
        self.next_count = self.step
        self.next_time = time.monotonic() + _PROGRESS_SECONDS
        self._print(0)

    def _print(self, done: int) -> None:
        print(f"neqtune: decoding {self.total} images into {self.path} ... {done}/{self.total}", file=sys.stderr, flush=True)

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done == self.total or (done >= self.next_count and now >= self.next_time):
            self._print(done)
            self.next_count = (done // self.step + 1) * self.step
            self.next_time = now + _PROGRESS_SECONDS


def _build(path: Path, source: FileSource, image_size: int) -> None:
    """Decode every image of ``source`` into a complete, synced cache file, then rename it to ``path``.

    Raises:
        DatasetError: a source image cannot be read; no file is left behind.
    """
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    index = np.zeros(len(source), dtype=_INDEX)
    offset = _HEADER.size + index.nbytes
    try:
        with open(tmp, "wb") as out:
            out.seek(offset)  # the header and index go in last, once the CRCs are known
            progress = _Progress(len(source), path)
            for i, (file, label) in enumerate(zip(source.paths, source.labels, strict=True)):
                pixels = decode_resized(file, image_size)
                out.write(pixels.data)
                index[i] = (offset, pixels.shape[0], pixels.shape[1], zlib.crc32(pixels.data), label)
                offset += pixels.nbytes
                progress.update(i + 1)
            index_bytes = index.tobytes()
            out.seek(0)
            out.write(_HEADER.pack(MAGIC, FORMAT_VERSION, len(source), len(index_bytes), zlib.crc32(index_bytes)))
            out.write(index_bytes)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable: without it a crash may forget it, which is safe but means a rebuild."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_or_build(path: Path, source: FileSource, image_size: int) -> _Mapped:
    """Map the cache file at ``path``, building it first (once across processes) if it is missing or invalid."""
    mapped = _map(path, len(source))
    if mapped is not None:
        return mapped
    with _locked(path):
        mapped = _map(path, len(source))  # another process may have built it while this one waited
        if mapped is None:
            _remove_leftovers(path)
            _build(path, source, image_size)
            mapped = _map(path, len(source))
    if mapped is None:
        raise DatasetError(f"the decoded-image cache {path} is not readable right after building it")
    return mapped


class DecodedImages:
    """The images of a :class:`FileSource`, decoded and resized once, read from a memory-mapped cache file.

    A :class:`~neqtune.datasets.samples.SampleSource`. Picklable for
    DataLoader workers and Ray: the file's path travels, and the file is
    mapped again on first use in the receiving process (rebuilt if it has
    gone).
    """

    def __init__(self, path: Path, source: FileSource, image_size: int) -> None:
        self.path = path
        self.source = source
        self.image_size = image_size
        self._mapped: _Mapped | None = None
        self._reported = False

    def __len__(self) -> int:
        return len(self.source)

    def _file(self) -> _Mapped:
        if self._mapped is None:
            self._mapped = _open_or_build(self.path, self.source, self.image_size)
        return self._mapped

    @property
    def sizes(self) -> np.ndarray:
        """``[N, 2]`` int64: each cached image's ``(height, width)`` in pixels."""
        index = self._file().index
        return np.stack([index["height"], index["width"]], axis=1).astype(np.int64)

    def label(self, index: int) -> int:
        """The label of image ``index``."""
        return int(self._file().index[index]["label"])

    def array(self, index: int) -> np.ndarray:
        """Image ``index`` as a writable ``uint8`` ``[h, w, 3]`` copy, checked against its CRC.

        On a CRC mismatch the cache file is removed (the next open rebuilds
        it), one line goes to stderr, and the image is decoded from its
        source file instead: corrupt pixels are never returned.
        """
        mapped = self._file()
        entry = mapped.index[index]
        start, height, width = int(entry["offset"]), int(entry["height"]), int(entry["width"])
        # Copy, then check the copy: what is returned is exactly what was checked.
        pixels = np.array(mapped.data[start : start + height * width * 3]).reshape(height, width, 3)
        if zlib.crc32(pixels.data) == int(entry["crc"]):
            return pixels
        self._discard(mapped, index)
        return decode_resized(self.source.paths[index], self.image_size)

    def load(self, index: int) -> tuple[Image.Image, int]:
        """Image ``index`` as an RGB PIL image, and its label."""
        return Image.fromarray(self.array(index)), self.label(index)

    def _discard(self, mapped: _Mapped, index: int) -> None:
        """Remove the corrupt cache file, unless another process has already replaced it, and say so once."""
        with _locked(self.path):
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(self.path)
                if (stat.st_dev, stat.st_ino) == mapped.inode:
                    self.path.unlink()
        if not self._reported:
            self._reported = True
            print(
                f"neqtune: decoded-image cache {self.path} is corrupt (image {index}: CRC mismatch); removed it, "
                f"decoding from {self.source.paths[index]} instead; the next open rebuilds the cache",
                file=sys.stderr,
                flush=True,
            )

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "source": self.source, "image_size": self.image_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.source, self.image_size = state["path"], state["source"], state["image_size"]
        self._mapped = None
        self._reported = False


def open_decoded(source: FileSource, image_size: int, directory: Path | None = None) -> DecodedImages:
    """The decoded-image cache of ``source`` at ``image_size``, built now if this node has no valid one.

    Args:
        source: the image files and labels, in sample order.
        image_size: the training resolution in pixels; images are stored with
            their short side ``CACHE_SCALE * image_size``, or their own if smaller.
        directory: where cache files live; default :func:`cache_dir`.

    Raises:
        ConfigError: (``data.cache``) the directory cannot be created or written.
        DatasetError: a source image cannot be read; names the file, and no
            cache file is left.
    """
    directory = cache_dir() if directory is None else directory
    check_cache_dir(directory)
    images = DecodedImages(directory / _file_name(source, image_size), source, image_size)
    images._file()  # build here, before DataLoader workers each find no file
    return images
