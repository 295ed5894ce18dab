"""``flowers``, ``food``, ``pets``, ``cub``: image-file data sets, as an image folder or as released.

Two layouts of ``<root>`` are read:

- an **image folder** (what ``python -m neqtune.datasets.split`` writes, and what the
  study's ``train_test_split`` scripts wrote): ``train/<class>/<image>`` and
  ``test/<class>/<image>``; an optional ``val/<class>/<image>`` (Flowers'
  official validation split) joins the train split. Labels index the sorted
  class directory names of ``train/``.
- the **release** as its archive unpacks (for Flowers, Food and Pets also
  torchvision's layout, which ``download: true`` fetches):
  ``flowers-102/{jpg/, imagelabels.mat, setid.mat}``,
  ``food-101/{images/, meta/train.json, meta/test.json}``,
  ``oxford-iiit-pet/{images/, annotations/trainval.txt, annotations/test.txt}``,
  ``CUB_200_2011/{images/, images.txt, train_test_split.txt}``; ``<root>``
  may also be that release directory itself.

Official splits: Flowers train + val (2,040) / test (6,149), Food train
(75,750) / test (25,250), Pets trainval (3,680) / test (3,669), CUB train
(5,994) / test (5,794). The file index is made once per node and data set
state and checked with one stat per directory at each trial start
(:mod:`neqtune.datasets.file_index`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neqtune.datasets.config import DataConfig
from neqtune.datasets.file_index import FileIndex, Listing, node_index
from neqtune.datasets.registry import DatasetError, DataSplits, register_check, register_dataset
from neqtune.datasets.roots import dataset_root, download_lock, require
from neqtune.datasets.samples import IMAGE_EXTENSIONS, SplitSettings, official_splits


@dataclass(frozen=True)
class ReleaseIndex:
    """A release's classes and, per official split (``train``, ``val``, ``test``), its ``(image path, label)`` pairs."""

    classes: tuple[str, ...]
    splits: dict[str, tuple[tuple[str, int], ...]]


@dataclass(frozen=True)
class Release:
    """How one data set is released: its directory, the files that define it, where to get it."""

    key: str
    title: str
    folder: str
    required: tuple[str, ...]
    url: str
    read: Callable[[Path], ReleaseIndex]
    downloadable: bool


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """Non-empty, non-comment lines of a text file, split on white space, with their line numbers."""
    try:
        text = path.read_text()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")]


def _bad_line(path: Path, number: int, expected: str) -> DatasetError:
    return DatasetError(f"{path}, line {number}: expected {expected}")


def read_flowers(release: Path) -> ReleaseIndex:
    """Flowers-102: ``setid.mat`` (trnid, valid, tstid: 1-based image ids) and ``imagelabels.mat`` (labels 1..102)."""
    from scipy.io import loadmat

    def mat(name: str) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = loadmat(release / name)
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read {release / name}: {err}") from err
        return loaded

    setid, labels_mat = mat("setid.mat"), mat("imagelabels.mat")
    for key in ("trnid", "valid", "tstid"):
        if key not in setid:
            raise DatasetError(f"{release / 'setid.mat'}: no variable {key!r}")
    if "labels" not in labels_mat:
        raise DatasetError(f"{release / 'imagelabels.mat'}: no variable 'labels'")
    labels = [int(v) for v in labels_mat["labels"].ravel()]
    splits: dict[str, tuple[tuple[str, int], ...]] = {}
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        pairs = []
        for image_id in (int(v) for v in setid[key].ravel()):
            if not 1 <= image_id <= len(labels):
                raise DatasetError(f"{release / 'setid.mat'}: image id {image_id} has no label in imagelabels.mat ({len(labels)} labels)")
            pairs.append((str(release / "jpg" / f"image_{image_id:05d}.jpg"), labels[image_id - 1] - 1))
        splits[split] = tuple(pairs)
    # The release names no classes; zero-padded numbers keep their sorted order equal to the label order.
    return ReleaseIndex(tuple(f"{c:03d}" for c in range(1, max(labels) + 1)), splits)


def read_food(release: Path) -> ReleaseIndex:
    """Food-101: ``meta/train.json`` and ``meta/test.json`` map each class to its ``"<class>/<id>"`` images."""
    tables = {}
    for split in ("train", "test"):
        path = release / "meta" / f"{split}.json"
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read {path}: {err}") from err
        if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
            raise DatasetError(f"{path}: expected a mapping of class name to a list of image names")
        tables[split] = table
    classes = tuple(sorted(tables["train"]))
    label = {name: i for i, name in enumerate(classes)}
    splits = {}
    for split, table in tables.items():
        unknown = sorted(set(table) - set(label))
        if unknown:
            raise DatasetError(f"{release / 'meta' / f'{split}.json'}: classes not in train.json: {', '.join(unknown[:5])}")
        splits[split] = tuple((str(release / "images" / f"{image}.jpg"), label[name]) for name in classes for image in table.get(name, []))
    return ReleaseIndex(classes, splits)


def read_pets(release: Path) -> ReleaseIndex:
    """Oxford-IIIT Pets: ``annotations/{trainval,test}.txt`` lines ``<image> <class id 1..37> <species> <breed id>``."""
    names: dict[int, str] = {}
    splits = {}
    for split, file in (("train", "trainval.txt"), ("test", "test.txt")):
        path = release / "annotations" / file
        pairs = []
        for number, fields in _lines(path):
            if len(fields) < 2 or not fields[1].isdigit() or "_" not in fields[0]:
                raise _bad_line(path, number, "'<breed>_<n> <class id> <species> <breed id>'")
            class_id = int(fields[1])
            names.setdefault(class_id, fields[0].rsplit("_", 1)[0])
            pairs.append((str(release / "images" / f"{fields[0]}.jpg"), class_id - 1))
        splits[split] = tuple(pairs)
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DatasetError(f"{release / 'annotations'}: class ids are not 1..{len(names)}: {sorted(names)}")
    return ReleaseIndex(tuple(names[c] for c in sorted(names)), splits)


def read_cub(release: Path) -> ReleaseIndex:
    """CUB-200-2011: ``images.txt`` (``<id> <class dir>/<file>``) and ``train_test_split.txt`` (``<id> <1 train | 0 test>``)."""
    images_path, split_path = release / "images.txt", release / "train_test_split.txt"
    images = {}
    for number, fields in _lines(images_path):
        if len(fields) != 2 or "/" not in fields[1]:
            raise _bad_line(images_path, number, "'<image id> <class directory>/<file name>'")
        images[fields[0]] = fields[1]
    is_train = {}
    for number, fields in _lines(split_path):
        if len(fields) != 2 or fields[1] not in ("0", "1"):
            raise _bad_line(split_path, number, "'<image id> <1 for train, 0 for test>'")
        is_train[fields[0]] = fields[1] == "1"
    missing = sorted(set(images) - set(is_train), key=lambda i: int(i) if i.isdigit() else 0)
    if missing:
        raise DatasetError(f"{split_path}: no split for image ids {', '.join(missing[:5])} of images.txt")
    classes = tuple(sorted({relative.split("/")[0] for relative in images.values()}))
    label = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for image_id, relative in images.items():
        splits["train" if is_train[image_id] else "test"].append((str(release / "images" / relative), label[relative.split("/")[0]]))
    return ReleaseIndex(classes, {k: tuple(v) for k, v in splits.items()})


RELEASES = {
    "flowers": Release(
        "flowers",
        "Oxford Flowers-102",
        "flowers-102",
        ("jpg/", "imagelabels.mat", "setid.mat"),
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz, imagelabels.mat, setid.mat)",
        read_flowers,
        True,
    ),
    "food": Release(
        "food",
        "Food-101",
        "food-101",
        ("images/", "meta/train.json", "meta/test.json"),
        "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ (food-101.tar.gz)",
        read_food,
        True,
    ),
    "pets": Release(
        "pets",
        "Oxford-IIIT Pets",
        "oxford-iiit-pet",
        ("images/", "annotations/trainval.txt", "annotations/test.txt"),
        "https://www.robots.ox.ac.uk/~vgg/data/pets/ (images.tar.gz, annotations.tar.gz)",
        read_pets,
        True,
    ),
    "cub": Release(
        "cub",
        "CUB-200-2011",
        "CUB_200_2011",
        ("images/", "images.txt", "train_test_split.txt"),
        "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)",
        read_cub,
        False,
    ),
}


def _has(folder: Path, relative: str) -> bool:
    return (folder / relative).is_dir() if relative.endswith("/") else (folder / relative).is_file()


def release_dir(root: Path, release: Release) -> Path:
    """``root/<release folder>`` if it exists, else ``root`` (pointing at the release directory itself)."""
    nested = root / release.folder
    return nested if nested.is_dir() else root


def missing_release_files(root: Path, release: Release) -> list[str]:
    """Files and directories (``/``-terminated) that the release layout needs and ``root`` lacks."""
    folder = release_dir(root, release)
    return [relative for relative in release.required if not _has(folder, relative)]


def is_image_folder(root: Path) -> bool:
    """Whether ``root`` holds ``train/`` and ``test/`` directories."""
    return (root / "train").is_dir() and (root / "test").is_dir()


def _layouts(root: Path, release: Release) -> str:
    files = ", ".join(f"{root}/{release.folder}/{r}" for r in release.required)
    return f"expected an image folder {root}/{{train,test}}/<class>/<image> (python -m neqtune.datasets.split {release.key} ...) or the release: {files}"


def check_image_dataset(config: DataConfig) -> None:
    """An image folder with class directories, or every file of the release (or ``download: true``)."""
    release = RELEASES[config.name]
    require(
        release.downloadable or not config.download,
        f"{release.title} cannot be downloaded automatically; get it from {release.url}",
        key="data.download",
    )
    root = dataset_root(config)
    require(
        is_image_folder(root) or not (root / "train").is_dir(),
        f"{root}/train has no {root}/test beside it; {release.title}'s official test split is its test/ "
        f"(python -m neqtune.datasets.split {release.key} ...). To carve a test split out of train/ instead, "
        "use data.name: image-folder, which holds out data.test_fraction of it",
    )
    if is_image_folder(root):
        require(
            any(entry.is_dir() for entry in os.scandir(root / "train")),
            f"{root}/train has no class directories; {_layouts(root, release)}",
        )
        return
    missing = missing_release_files(root, release)
    if missing and not config.download:
        what = "download: true fetches the release" if release.downloadable else "it cannot be downloaded automatically"
        require(False, f"no {release.title} at {root}; {_layouts(root, release)}; get it from {release.url} ({what})")


def _folder_pairs(split_dir: Path, label: dict[str, int], train_dir: Path) -> list[tuple[str, int]]:
    pairs = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        if entry.name not in label:
            raise DatasetError(f"{entry.path}: class {entry.name!r} has no directory in {train_dir}")
        for file in sorted(os.scandir(entry.path), key=lambda e: e.name):
            if file.is_file() and file.name.lower().endswith(IMAGE_EXTENSIONS):
                pairs.append((file.path, label[entry.name]))
    return pairs


def read_image_folder(root: Path) -> ReleaseIndex:
    """``train/`` (+ ``val/``) and ``test/`` of an image folder; classes are the sorted directories of ``train/``."""
    train_dir = root / "train"
    classes = tuple(sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir()))
    label = {name: i for i, name in enumerate(classes)}
    train = _folder_pairs(train_dir, label, train_dir)
    if (root / "val").is_dir():
        train += _folder_pairs(root / "val", label, train_dir)
    test = _folder_pairs(root / "test", label, train_dir)
    for split, pairs in (("train", train), ("test", test)):
        if not pairs:
            raise DatasetError(f"{root / split}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class directories")
    return ReleaseIndex(classes, {"train": tuple(train), "test": tuple(test)})


def read_release(key: str, folder: Path) -> ReleaseIndex:
    """The index of a release directory, from its metadata files."""
    return RELEASES[key].read(folder)


def _folder_listing(root: Path) -> Listing:
    index = read_image_folder(root)
    directories = [str(root / name) for name in ("train", "val", "test") if (root / name).is_dir()]
    return Listing(index.classes, index.splits, (str(root), *directories))


def _release_listing(key: str, folder: Path) -> Listing:
    index = read_release(key, folder)
    splits = {"train": index.splits["train"] + index.splits.get("val", ()), "test": index.splits["test"]}
    files = tuple(str(folder / relative) for relative in RELEASES[key].required if not relative.endswith("/"))
    return Listing(index.classes, splits, (str(folder),), files)


def read_files(config: DataConfig) -> FileIndex:
    """The classes and the train (+ val) and test files of ``config``'s data set, from this node's file index.

    Listed once per node while the folder or the release's metadata is
    unchanged (:mod:`neqtune.datasets.file_index`).
    """
    release = RELEASES[config.name]
    root = dataset_root(config)
    if is_image_folder(root):
        folder = root.resolve()
        return node_index("image-files/folder", folder, lambda: _folder_listing(folder))
    folder = release_dir(root, release).resolve()
    return node_index(f"image-files/{config.name}", folder, lambda: _release_listing(config.name, folder))


def _download(key: str, root: Path) -> None:
    from torchvision.datasets import Flowers102, Food101, OxfordIIITPet

    with download_lock(root):
        if key == "flowers":
            Flowers102(str(root), split="train", download=True)
        elif key == "food":
            Food101(str(root), split="train", download=True)
        else:
            OxfordIIITPet(str(root), split="trainval", download=True)


def _build(config: DataConfig) -> DataSplits:
    release = RELEASES[config.name]
    root = dataset_root(config)
    if config.download and not is_image_folder(root) and missing_release_files(root, release):
        _download(config.name, root)
    check_image_dataset(config)
    index = read_files(config)
    return official_splits(index.sources["train"], index.sources["test"], index.classes, SplitSettings.of(config))


@register_dataset("flowers")
def build_flowers(config: DataConfig) -> DataSplits:
    """Oxford Flowers-102: official train + val / test, 102 classes."""
    return _build(config)


@register_dataset("food")
def build_food(config: DataConfig) -> DataSplits:
    """Food-101: official train / test, 101 classes."""
    return _build(config)


@register_dataset("pets")
def build_pets(config: DataConfig) -> DataSplits:
    """Oxford-IIIT Pets: official trainval / test, 37 classes."""
    return _build(config)


@register_dataset("cub")
def build_cub(config: DataConfig) -> DataSplits:
    """CUB-200-2011: official train / test, 200 classes."""
    return _build(config)


for _key in RELEASES:
    register_check(_key)(check_image_dataset)
