"""``image-folder``: the user's class-per-subdirectory images, from real PNG / JPEG files written here.

Split by ``train/`` / ``val/`` / ``test/`` or carved with the seed, the label
in the tables after a real one-trial search (with the decoded cache and the
batched augmentation), and every bad input refused by the real command line
in one line, exit 2, nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from search_procs import tiny_space

from neqtune.datasets import DataConfig, build_dataset, check_dataset, file_index
from neqtune.datasets.cache import source_digest
from neqtune.datasets.folders import index_folder, read_folder
from neqtune.datasets.parsing import ConfigError
from neqtune.datasets.samples import FileDigest, FileSource, SplitView
from neqtune.search.cli import main as cli_main
from neqtune.trainables.config import TrialConfig

ROOT = Path(__file__).resolve().parent.parent


def write_images(directory: Path, count: int, *, start: int = 0, suffix: str = ".png", size: tuple[int, int] = (20, 14)) -> None:
    """``count`` small real images (distinct pixels) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        pixels = np.full((size[1], size[0], 3), (i * 37) % 256, dtype=np.uint8)
        pixels[:, : size[0] // 2, 1] = (i * 11) % 256
        Image.fromarray(pixels).save(directory / f"img_{i:03d}{suffix}")


def write_folder(root: Path, classes: Sequence[str] = ("cat", "dog", "eel"), per_class: int = 10, splits: Sequence[str] = ()) -> Path:
    """An image folder: ``<root>/<class>/`` (flat), or ``<root>/<split>/<class>/`` for each of ``splits``; PNG and JPEG."""
    for split in splits or ("",):
        for c, name in enumerate(classes):
            write_images(root / split / name, per_class, start=100 * c, suffix=".jpg" if c % 2 else ".png")
    return root


def paths(view: Any) -> list[str]:
    assert isinstance(view, SplitView)
    return [view.source.paths[i] for i in view.indices]  # type: ignore[attr-defined]


def data(root: Path, **values: Any) -> DataConfig:
    return TrialConfig.from_dict(
        {"data": {"name": "image-folder", "root": str(root), "velocity_images": 4, "image_size": 16, **values}}
    ).data


# --- splits -------------------------------------------------------------------------


def test_train_val_test_subdirectories_are_the_splits(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "pond", splits=("train", "val", "test"), per_class=6)
    config = data(root)
    check_dataset(config)
    splits = build_dataset(config)
    assert splits.classes == ["cat", "dog", "eel"]
    assert len(splits.train) == 18 - 4 and len(splits.velocity) == 4
    assert all("/train/" in p for p in paths(splits.train) + paths(splits.velocity))
    assert len(splits.val) == 18 and all("/val/" in p for p in paths(splits.val))
    assert len(splits.test) == 18 and all("/test/" in p for p in paths(splits.test))
    image, label = splits.test[0]
    assert image.shape == (3, 16, 16) and label == 0


def test_a_flat_folder_is_carved_the_same_under_one_seed_and_differently_under_another(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "flat", per_class=20)  # 60 images

    def carve(seed: int) -> dict[str, list[str]]:
        splits = build_dataset(data(root, split_seed=seed))
        return {name: paths(getattr(splits, name)) for name in ("train", "val", "velocity", "test")}

    first, again, other = carve(0), carve(0), carve(1)
    assert first == again and first != other
    assert len(first["test"]) == 12 and len(first["velocity"]) == 4 and len(first["val"]) == int(0.2 * 44)
    everything = [p for split in first.values() for p in split]
    assert len(everything) == len(set(everything)) == 60


def test_a_train_only_folder_carves_test_fraction_and_flowers_says_how(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine", splits=("train",), per_class=10)
    splits = build_dataset(data(root, test_fraction=0.5))
    assert len(splits.test) == 15 and all("/train/" in p for p in paths(splits.test))
    with pytest.raises(ConfigError, match=r"data.test_fraction") as caught:
        check_dataset(DataConfig(name="flowers", root=str(root)))
    assert caught.value.key == "data.root" and "image-folder" in caught.value.message


def test_the_label_is_the_folder_name_unless_given(tmp_path: Path) -> None:
    assert data(tmp_path / "birds").label == "birds"
    assert data(tmp_path / "birds", label="my-birds").label == "my-birds"
    assert TrialConfig.from_dict({"data": {"name": "digits"}}).data.label == "digits"
    assert TrialConfig.from_dict({"data": {"name": "image-folder"}}).data.label == "image-folder"  # $NEQ_DATA/image-folder
    with pytest.raises(ConfigError, match="non-empty") as caught:
        data(tmp_path, label=" ")
    assert caught.value.key == "data.label"


# --- a real search ------------------------------------------------------------------


@pytest.fixture
def neq_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("NEQ_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache"


@pytest.mark.search
def test_a_search_writes_the_folder_name_as_data_label(tmp_path: Path, neq_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder(tmp_path / "pond", splits=("train", "test"), per_class=8)
    space = tiny_space(1, {"algorithm": "grid", "num_samples": 1, "max_concurrent": 1, "params": {"data.root": {"choice": [str(root)]}}})
    space["experiment"] = "folder"
    space["data"] = {
        "name": "image-folder",
        "image_size": 16,
        "batch_size": 8,
        "velocity_images": 4,
        "cache": "decoded",
        "augment": "batched",
        "workers": 1,
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    # run_search.py in a process of its own: its local Ray's workers get this environment, $NEQ_CACHE included
    done = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), "--space", "space.yaml", "--results", "results", "--name", "folder"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NEQ_CACHE": str(neq_cache)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    experiment = tmp_path / "results" / "folder"
    epochs, trials = pd.read_parquet(experiment / "epochs.parquet"), pd.read_parquet(experiment / "trials.parquet")
    assert epochs["data.label"].tolist() == ["pond"] and trials["data.label"].tolist() == ["pond"]
    assert epochs["data.name"].tolist() == ["image-folder"] and epochs.val_top1.notna().all()
    (run,) = (experiment / "tensorboard").iterdir()
    assert ",data=pond," in run.name
    assert any(neq_cache.glob("decoded-*.u8"))  # the trial built the folder's decoded cache where $NEQ_CACHE says

    from neqtune.results.loading import load_experiments
    from neqtune.results.outcomes import analyze

    table = analyze(load_experiments([experiment])).table
    assert table["data.label"].tolist() == ["pond"]


# --- bad input, through the command line -------------------------------------------


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], **data_values: Any) -> str:
    """The one error line of a dry run and of a run of a space with ``data_values``; both exit 2 and write nothing."""
    space = tiny_space(1, {"algorithm": "grid", "num_samples": 1, "params": {"training.seed": {"choice": [0]}}})
    space["data"] = {"name": "image-folder", "image_size": 16, **data_values}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    before = sorted(os.listdir(tmp_path))
    lines = []
    for extra in (["--dry-run"], ["--results", str(tmp_path / "results")]):
        assert cli_main(["--space", str(path), *extra]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1, err
        lines.append(err[0])
    assert sorted(os.listdir(tmp_path)) == before
    assert lines[0] == lines[1], lines
    return lines[0]


def test_one_class_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder(tmp_path / "one", classes=("cat",))
    line = refused(tmp_path, capsys, root=str(root))
    assert "data.root" in line and "at least 2 class directories, found only 'cat'" in line and str(root) in line


def test_an_empty_class_directory_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder(tmp_path / "gap", splits=("train",))
    (root / "train" / "fox").mkdir()
    line = refused(tmp_path, capsys, root=str(root))
    assert "data.root" in line and f"{root / 'train' / 'fox'}: empty class directory" in line


def test_an_unreadable_image_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder(tmp_path / "bad")
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    line = refused(tmp_path, capsys, root=str(root))
    assert "data.root" in line and f"{root / 'dog' / 'broken.jpg'}: not a readable image" in line


def test_a_missing_root_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(tmp_path, capsys, root=str(tmp_path / "nowhere"))
    assert "data.root" in line and f"no image folder at {tmp_path / 'nowhere'}" in line


def test_test_without_train_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder(tmp_path / "half", splits=("test",))
    line = refused(tmp_path, capsys, root=str(root))
    assert "data.root" in line and "test/ but no train/" in line


@pytest.mark.search
def test_an_unknown_data_set_is_reported_once_by_run_search(tmp_path: Path) -> None:
    space = tiny_space(1, {"algorithm": "grid", "num_samples": 1, "params": {"training.seed": {"choice": [0]}}})
    space["data"] = {"name": "imagefolder"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    done = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), "--space", "space.yaml", "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stderr.count("unknown data set 'imagefolder'") == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: space.yaml: data.name: unknown data set 'imagefolder'; known data sets: ")
    assert "image-folder" in lines[0].split("known data sets: ")[1].split(", ")  # the name the user meant is listed
    assert "data imagefolder: unknown data set" in done.stdout and sorted(os.listdir(tmp_path)) == ["space.yaml"]


def test_a_header_check_is_cached_while_the_folder_is_unchanged(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "cached", per_class=3)
    config = data(root, velocity_images=1)
    check_dataset(config)
    (root / "cat" / "late.png").write_bytes(b"garbage")  # a new file changes the class directory: checked again
    with pytest.raises(ConfigError, match=r"late\.png: not a readable image"):
        check_dataset(config)


# --- the node's file index ------------------------------------------------------------


def _age(root: Path, seconds: float = 60.0) -> None:
    """Set the mtime of ``root`` and every directory under it ``seconds`` back: a data set that has settled."""
    when = time.time_ns() - int(seconds * 1e9)
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(directory, ns=(when, when))


def _uncached(root: Path) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], FileDigest]]:
    """Each split's paths, labels and file digest, listed and stat-ed from the disk now."""
    listed = index_folder(root.resolve()).splits
    sources = {split: FileSource(tuple(p for p, _ in pairs), tuple(label for _, label in pairs)) for split, pairs in listed.items()}
    return {split: (source.paths, source.labels, source_digest(source)) for split, source in sources.items()}


def _indexed(config: DataConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], FileDigest | None]]:
    return {split: (source.paths, source.labels, source.digest) for split, source in read_folder(config).sources.items()}


@pytest.fixture
def settled(tmp_path: Path, neq_cache: Path) -> Path:
    """A split image folder whose directories last changed a minute ago, and a fresh process's memory."""
    root = write_folder(tmp_path / "pond", splits=("train", "test"), per_class=5)
    _age(root)
    file_index.clear_memory()
    return root


def _index_file(neq_cache: Path) -> Path:
    files = list(neq_cache.glob("index-*.json"))
    assert len(files) == 1, files
    return files[0]


def test_a_warm_start_reads_the_nodes_index_with_one_stat_per_directory(settled: Path, neq_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = data(settled)
    first = _indexed(config)
    assert first == _uncached(settled)  # the same files, labels and cache key as a listing and a stat of every file
    index = _index_file(neq_cache)
    written = index.read_bytes()
    file_index.clear_memory()  # a fresh worker process on the same node
    directories = {str(settled.resolve()), *(str(p.resolve()) for p in settled.rglob("*") if p.is_dir())}
    stats: list[str] = []
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        stats.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    def scandir(path: Any = ".") -> Any:
        raise AssertionError(f"listed {path} again")

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "scandir", scandir)
    assert _indexed(config) == first
    monkeypatch.undo()
    assert set(stats) <= directories | {str(settled), str(settled.resolve())}, "an image file was stat-ed"
    assert len(stats) <= len(directories) + 2  # root, train/, test/ and the six class directories (and the root's resolve)
    assert index.read_bytes() == written  # read, not rewritten
    splits = build_dataset(config)
    assert paths(splits.test) == list(first["test"][0])


def _add(root: Path) -> None:
    write_images(root / "train" / "dog", 1, start=500)


def _remove(root: Path) -> None:
    next((root / "train" / "eel").iterdir()).unlink()


def _new_class(root: Path) -> None:
    write_images(root / "train" / "fox", 2)


@pytest.mark.parametrize("in_memory", [False, True], ids=["from the file", "in the same process"])
@pytest.mark.parametrize("change", [_add, _remove, _new_class], ids=["file added", "file removed", "class added"])
def test_a_stale_index_is_rebuilt_never_read(settled: Path, neq_cache: Path, change: Callable[[Path], None], in_memory: bool) -> None:
    config = data(settled)
    before = _indexed(config)
    change(settled)
    if not in_memory:
        file_index.clear_memory()
    after = _indexed(config)
    assert after == _uncached(settled) and after != before
    assert read_folder(config).classes == tuple(sorted(p.name for p in (settled / "train").iterdir()))
    _age(settled)  # once the folder has settled, the index written again holds the new listing
    file_index.clear_memory()
    assert _indexed(config) == after
    file_index.clear_memory()
    assert _indexed(config) == after  # read back from the file written just before


def _flip_last(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def _other_version(path: Path) -> None:
    header, _, body = path.read_bytes().partition(b"\n")
    parts = header.split(b" ")
    path.write_bytes(b" ".join([parts[0], str(file_index.INDEX_VERSION + 1).encode(), parts[2]]) + b"\n" + body)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        _flip_last,
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(b"\xff\xfe not an index"),
        _other_version,
        lambda p: (p.unlink(), p.mkdir()),
    ],
    ids=["truncated", "a flipped bit", "empty", "garbage", "another version", "a directory"],
)
def test_a_corrupt_index_is_rebuilt_never_read(settled: Path, neq_cache: Path, damage: Callable[[Path], object]) -> None:
    config = data(settled)
    listed = _indexed(config)
    index = _index_file(neq_cache)
    good = index.read_bytes()
    damage(index)
    file_index.clear_memory()
    assert _indexed(config) == listed
    if index.is_file():
        assert index.read_bytes() == good  # written again whole
    assert list(neq_cache.glob("*.tmp.*")) == []


def test_an_index_for_another_root_is_not_read(settled: Path, neq_cache: Path, tmp_path: Path) -> None:
    """Two roots whose index files were swapped: each checks the root it names, and lists its own."""
    other = write_folder(tmp_path / "lake", classes=("ant", "bee"), per_class=4)
    _age(other)
    _indexed(data(settled))
    mine = _index_file(neq_cache)
    theirs = file_index.index_path("image-folder", other.resolve())
    theirs.write_bytes(mine.read_bytes())
    file_index.clear_memory()
    assert read_folder(data(other)).classes == ("ant", "bee")


def test_a_folder_written_just_now_is_listed_but_not_indexed_until_it_settles(tmp_path: Path, neq_cache: Path) -> None:
    root = write_folder(tmp_path / "fresh", per_class=3)
    file_index.clear_memory()
    assert _indexed(data(root)) == _uncached(root)
    assert not list(neq_cache.glob("index-*"))  # a change in the listing's clock tick would not move an mtime
    _age(root)
    _indexed(data(root))
    _index_file(neq_cache)


def test_an_image_overwritten_in_place_needs_a_touch_of_the_root(settled: Path, neq_cache: Path) -> None:
    """The documented limit (datasets/file_index.py): the directory's mtime does not move; ``touch <root>`` rebuilds."""
    config = data(settled)
    before = _indexed(config)
    image = settled / "train" / "cat" / "img_000.png"
    directory_mtime = (settled / "train" / "cat").stat().st_mtime_ns
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(image)  # same name, written in place
    assert (settled / "train" / "cat").stat().st_mtime_ns == directory_mtime
    file_index.clear_memory()
    assert _indexed(config) == before  # not seen: the limit
    os.utime(settled)  # touch <root>
    file_index.clear_memory()
    after = _indexed(config)
    assert after == _uncached(settled) and after["train"][2] != before["train"][2]


def test_an_unwritable_cache_directory_still_lists_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_folder(tmp_path / "pond", per_class=3)
    _age(root)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("NEQ_CACHE", str(tmp_path / "a-file" / "cache"))
    file_index.clear_memory()
    assert _indexed(data(root)) == _uncached(root)
