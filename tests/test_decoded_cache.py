"""The decoded-image cache (:mod:`neqtune.datasets.cache`): built once per node, read exactly, never read when stale or corrupt.

The source is 25 small real image files (JPEG and PNG) of a few sizes; with
``IMAGE_SIZE = 32`` the cache stores short sides of 64 pixels. The expected
cached sizes are written out by hand, so the size rule is checked
independently of the module's own arithmetic.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neqtune.datasets import DatasetError
from neqtune.datasets.cache import CACHE_SCALE, DecodedImages, cache_dir, open_decoded, source_digest
from neqtune.datasets.samples import FileSource, SplitView, eval_transform
from neqtune.trainables.config import ConfigError

IMAGE_SIZE = 32
HEADER_BYTES, INDEX_ENTRY_BYTES = 32, 28  # the layout the module's docstring gives

# (file name, source (width, height), cached (width, height)) for the images after the 20 of 120x90.
ODD_IMAGES = [
    ("portrait.png", (90, 120), (64, 85)),
    ("wide.jpg", (150, 100), (96, 64)),
    ("exact.png", (64, 80), (64, 80)),  # short side already 64: kept as is
    ("small.png", (40, 30), (40, 30)),  # smaller than 2 * IMAGE_SIZE: not upscaled
    ("flat.jpg", (200, 50), (200, 50)),  # short side 50 < 64: not upscaled
]
PLAIN_SIZE, PLAIN_CACHED = (120, 90), (85, 64)  # 120 * 64 / 90 = 85.3


def _write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    """A textured image (a gradient plus noise), so that any resampling difference shows in the pixels."""
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width, dtype=np.float64)[None, :, None] + np.linspace(0, 55, height)[:, None, None]
    pixels = np.clip(ramp + rng.integers(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _expected_size(path: str) -> tuple[int, int]:
    name = Path(path).name
    for file, _, cached in ODD_IMAGES:
        if name == file:
            return cached
    return PLAIN_CACHED


def _expected(path: str) -> np.ndarray:
    """What the cache must hold for ``path``: PIL's bilinear resize to the hand-written size, or the image as is."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    size = _expected_size(path)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image)


@pytest.fixture
def source(tmp_path: Path) -> FileSource:
    folder = tmp_path / "images"
    folder.mkdir()
    specs = [(f"img_{i:02d}.jpg", PLAIN_SIZE) for i in range(20)] + [(name, size) for name, size, _ in ODD_IMAGES]
    for seed, (name, size) in enumerate(specs):
        _write_image(folder / name, size, seed)
    return FileSource(tuple(str(folder / name) for name, _ in specs), tuple(i % 3 for i in range(len(specs))))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("NEQ_CACHE", str(directory))
    return directory


def _cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.u8"))


def _only_file(directory: Path) -> Path:
    files = _cache_files(directory)
    assert len(files) == 1, files
    return files[0]


def _assert_matches_source(images: DecodedImages, source: FileSource) -> None:
    for i, path in enumerate(source.paths):
        np.testing.assert_array_equal(images.array(i), _expected(path), err_msg=path)
        assert images.label(i) == source.labels[i]


def _digest(images: DecodedImages) -> str:
    hashed = hashlib.sha256()
    for i in range(len(images)):
        hashed.update(f"{images.array(i).shape} {images.label(i)}".encode() + images.array(i).tobytes())
    return hashed.hexdigest()


def test_pixels_labels_and_sizes_match_pil(source: FileSource, cache: Path) -> None:
    assert CACHE_SCALE == 2
    images = open_decoded(source, IMAGE_SIZE)
    assert len(images) == len(source) == 25
    _assert_matches_source(images, source)
    expected_sizes = [(h, w) for w, h in (_expected_size(p) for p in source.paths)]
    np.testing.assert_array_equal(images.sizes, np.array(expected_sizes))
    image, label = images.load(20)
    assert (image.mode, image.size, label) == ("RGB", (64, 85), source.labels[20])
    array = images.array(0)
    assert array.dtype == np.uint8 and array.flags.writeable


def test_is_a_sample_source_for_split_views(source: FileSource, cache: Path) -> None:
    view = SplitView(open_decoded(source, IMAGE_SIZE), [3, 21], eval_transform(IMAGE_SIZE, square_resize=False))
    tensor, label = view[1]
    assert tuple(tensor.shape) == (3, IMAGE_SIZE, IMAGE_SIZE) and label == source.labels[21]


def test_built_once_then_reused(source: FileSource, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    open_decoded(source, IMAGE_SIZE)
    assert f"neqtune: decoding 25 images into {cache}" in capsys.readouterr().err
    path = _only_file(cache)
    before = path.stat()
    images = open_decoded(source, IMAGE_SIZE)
    after = path.stat()
    assert "decoding" not in capsys.readouterr().err
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert images.path == path and _cache_files(cache) == [path]
    _assert_matches_source(images, source)


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEQ_CACHE", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("NEQ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "neqtune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "neqtune"


def test_an_explicit_directory_wins(source: FileSource, cache: Path, tmp_path: Path) -> None:
    images = open_decoded(source, IMAGE_SIZE, directory=tmp_path / "elsewhere")
    assert images.path.parent == tmp_path / "elsewhere" and not cache.exists()


# A child process: opens the cache of the source in its spec (a global of this code, which runs under exec),
# optionally after a barrier and with a slowed decoder (so that its build is long enough to overlap or to be
# killed); it writes its stderr and a digest of what it read to the files the spec names.
CHILD = """
import hashlib, os, sys, time
from pathlib import Path

from neqtune.datasets import cache, samples
from neqtune.datasets.samples import FileSource

sys.stderr = open(spec["stderr"], "w", buffering=1)
real_load_image = samples.load_image

def slow_load_image(path):
    time.sleep(spec["delay_s"])
    return real_load_image(path)

samples.load_image = slow_load_image
if spec["ready"]:
    Path(spec["ready"]).touch()
    while not os.path.exists(spec["go"]):
        time.sleep(0.002)
source = FileSource(tuple(spec["paths"]), tuple(spec["labels"]))
images = cache.open_decoded(source, spec["image_size"], directory=Path(spec["directory"]))
hashed = hashlib.sha256()
for i in range(len(images)):
    hashed.update(f"{images.array(i).shape} {images.label(i)}".encode() + images.array(i).tobytes())
Path(spec["digest"]).write_text(hashed.hexdigest())
"""


@functools.cache
def _processes() -> multiprocessing.context.ForkServerContext:
    """Fresh processes forked from one clean server that has imported the cache module once.

    Each child is a separate process with its own file descriptors and locks,
    as under spawn, but without importing torch again (seconds per child).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["neqtune.datasets.cache"])
    return context


@dataclass(frozen=True)
class _Child:
    process: multiprocessing.process.BaseProcess
    stderr: Path
    digest: Path

    def err(self) -> str:
        return self.stderr.read_text() if self.stderr.exists() else ""


def _start_child(tmp_path: Path, name: str, source: FileSource, cache: Path, *, delay_s: float, barrier: bool = False) -> _Child:
    stderr, digest = tmp_path / f"{name}.err", tmp_path / f"{name}.digest"
    spec = {
        "paths": source.paths,
        "labels": source.labels,
        "image_size": IMAGE_SIZE,
        "directory": str(cache),  # the server's environment is that of its start, not this test's NEQ_CACHE
        "delay_s": delay_s,
        "ready": str(tmp_path / f"ready.{name}") if barrier else "",
        "go": str(tmp_path / "go"),
        "stderr": str(stderr),
        "digest": str(digest),
    }
    process = _processes().Process(target=exec, args=(CHILD, {"spec": spec}))
    process.start()
    return _Child(process, stderr, digest)


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_concurrent_opens_build_once(source: FileSource, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    children = [_start_child(tmp_path, f"child{n}", source, cache, delay_s=0.01, barrier=True) for n in range(3)]
    _wait_for(lambda: len(list(tmp_path.glob("ready.*"))) == 3, "three children ready")
    (tmp_path / "go").touch()
    for child in children:
        child.process.join(timeout=120)
    assert [child.process.exitcode for child in children] == [0, 0, 0], [child.err() for child in children]
    builders = [child for child in children if "neqtune: decoding" in child.err()]
    assert len(builders) == 1, [child.err() for child in children]
    digests = {child.digest.read_text() for child in children}
    images = open_decoded(source, IMAGE_SIZE)
    assert "decoding" not in capsys.readouterr().err
    assert digests == {_digest(images)}
    _assert_matches_source(images, source)


def test_a_killed_build_leaves_no_file(source: FileSource, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    child = _start_child(tmp_path, "doomed", source, cache, delay_s=0.2)  # 25 images: a 5 s build
    index_end = HEADER_BYTES + INDEX_ENTRY_BYTES * len(source)

    def some_pixels_written() -> bool:  # into any file: a build that wrote under the final name must fail below, not hang here
        return any(file.stat().st_size > index_end for file in cache.glob("decoded-*") if not file.name.endswith(".lock"))

    try:
        _wait_for(some_pixels_written, "the child to write pixels")
    finally:
        child.process.kill()
        child.process.join(timeout=60)
    assert child.process.exitcode == -signal.SIGKILL
    assert _cache_files(cache) == [] and list(cache.glob("*.tmp.*"))
    images = open_decoded(source, IMAGE_SIZE)
    assert "neqtune: decoding" in capsys.readouterr().err
    assert list(cache.glob("*.tmp.*")) == []  # the dead build's tmp file is removed
    _assert_matches_source(images, source)


def _touch(source: FileSource) -> FileSource:
    stat = os.stat(source.paths[0])
    os.utime(source.paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    return source


def _modify(source: FileSource) -> FileSource:
    _write_image(Path(source.paths[0]), PLAIN_SIZE, seed=999)
    return source


def _add(source: FileSource) -> FileSource:
    added = Path(source.paths[0]).with_name("added.jpg")
    _write_image(added, PLAIN_SIZE, seed=1000)
    return FileSource((*source.paths, str(added)), (*source.labels, 1))


@pytest.mark.parametrize("change", [_touch, _modify, _add], ids=["touch", "modify", "add"])
def test_a_changed_source_gets_a_new_file(
    source: FileSource, cache: Path, change: Callable[[FileSource], FileSource], capsys: pytest.CaptureFixture[str]
) -> None:
    old = open_decoded(source, IMAGE_SIZE)
    old_first = old.array(0)
    capsys.readouterr()
    changed = change(source)
    new = open_decoded(changed, IMAGE_SIZE)
    assert "neqtune: decoding" in capsys.readouterr().err
    assert new.path != old.path and len(new) == len(changed)
    _assert_matches_source(new, changed)
    if change is _modify:
        assert not np.array_equal(new.array(0), old_first)
    if change is not _add:
        assert not old.path.exists()  # the same files' older state is removed


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_corrupt_pixels_are_never_returned(source: FileSource, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sizes = open_decoded(source, IMAGE_SIZE).sizes
    path = _only_file(cache)
    victim = 7
    start = HEADER_BYTES + INDEX_ENTRY_BYTES * len(source) + int((sizes[:victim].prod(axis=1) * 3).sum())
    _flip(path, start + 1000)
    capsys.readouterr()
    images = open_decoded(source, IMAGE_SIZE)  # header and index are intact: opened without a rebuild
    assert "decoding" not in capsys.readouterr().err
    np.testing.assert_array_equal(images.array(victim), _expected(source.paths[victim]))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path} is corrupt" in err and source.paths[victim] in err
    assert not path.exists()
    _assert_matches_source(images, source)  # the open mapping still serves the good images, and the bad one from its source
    rebuilt = open_decoded(source, IMAGE_SIZE)
    assert "neqtune: decoding" in capsys.readouterr().err
    _assert_matches_source(rebuilt, source)


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 10)


def _extend(path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\0" * 3)


@pytest.mark.parametrize(
    "damage",
    [_truncate, _extend, lambda p: _flip(p, 0), lambda p: _flip(p, 9), lambda p: _flip(p, HEADER_BYTES + 5)],
    ids=["truncated", "extended", "magic", "version", "index"],
)
def test_a_damaged_file_is_rebuilt(
    source: FileSource, cache: Path, damage: Callable[[Path], None], capsys: pytest.CaptureFixture[str]
) -> None:
    open_decoded(source, IMAGE_SIZE)
    path = _only_file(cache)
    damage(path)
    capsys.readouterr()
    images = open_decoded(source, IMAGE_SIZE)
    assert "neqtune: decoding" in capsys.readouterr().err
    assert _only_file(cache) == path
    _assert_matches_source(images, source)


def test_a_corrupt_source_image_fails_the_build_and_leaves_nothing(source: FileSource, cache: Path) -> None:
    broken = Path(source.paths[5])
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated JPEG
    with pytest.raises(DatasetError, match=str(broken)):
        open_decoded(source, IMAGE_SIZE)
    assert _cache_files(cache) == [] and list(cache.glob("*.tmp.*")) == []


def test_a_missing_source_image_is_named(source: FileSource, cache: Path) -> None:
    os.unlink(source.paths[2])
    with pytest.raises(DatasetError, match=source.paths[2]):
        open_decoded(source, IMAGE_SIZE)


def test_a_cache_dir_under_a_file_is_a_config_error(source: FileSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("not a directory")
    directory = tmp_path / "afile" / "sub"
    monkeypatch.setenv("NEQ_CACHE", str(directory))
    with pytest.raises(ConfigError) as caught:
        open_decoded(source, IMAGE_SIZE)
    assert caught.value.key == "data.cache" and str(directory) in caught.value.message


def test_pickling_carries_the_path_and_maps_again(source: FileSource, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = open_decoded(source, IMAGE_SIZE)
    pickled = pickle.dumps(images)
    assert len(pickled) < 10_000  # the path and the file index, no pixels
    copy = pickle.loads(pickled)
    assert copy.path == images.path and len(copy) == len(images)
    assert _digest(copy) == _digest(images)
    capsys.readouterr()
    images.path.unlink()
    gone = pickle.loads(pickled)
    _assert_matches_source(gone, source)  # a receiver that finds the file gone builds it again
    assert "neqtune: decoding" in capsys.readouterr().err


def test_a_space_probes_the_cache_directory_once_and_a_failed_probe_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every combination of a space runs ``data_problems``; only the first writes a probe file in the cache directory."""
    from neqtune.datasets import checks
    from neqtune.datasets.config import DataConfig

    probed: list[Path] = []
    probe = checks.check_cache_dir

    def counting(directory: Path) -> None:
        probed.append(directory)
        probe(directory)

    monkeypatch.setattr(checks, "check_cache_dir", counting)
    good = tmp_path / "good"
    monkeypatch.setenv("NEQ_CACHE", str(good))
    config = DataConfig(name="digits", cache="decoded")
    assert [checks.data_problems(config) for _ in range(50)] == [[]] * 50
    assert probed == [good] and good.is_dir() and not any(good.iterdir())  # the probe file is gone
    (tmp_path / "afile").write_text("not a directory")
    bad = tmp_path / "afile" / "sub"
    monkeypatch.setenv("NEQ_CACHE", str(bad))
    for _ in range(2):
        [problem] = checks.data_problems(config)
        assert problem.key == "data.cache" and str(bad) in problem.message
    assert probed == [good, bad, bad]  # not remembered: the directory may become writable


def test_a_source_with_the_index_digest_opens_the_same_file_without_a_stat_per_image(
    source: FileSource, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's file index hands the cache its key (datasets/file_index.py): a warm open stats no source image."""
    built = open_decoded(source, IMAGE_SIZE)
    indexed = FileSource(source.paths, source.labels, source_digest(source))
    assert indexed == source  # the digest is not part of a source's identity
    stat_calls: list[str] = []
    real_stat = os.stat

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        stat_calls.append(os.fspath(path))  # type: ignore[arg-type]
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)
    images = open_decoded(indexed, IMAGE_SIZE)
    monkeypatch.undo()
    assert not set(stat_calls) & set(source.paths)
    assert images.path == built.path
    _assert_matches_source(images, source)
