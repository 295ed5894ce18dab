"""``c10`` and ``c100``: CIFAR-10 and CIFAR-100 in torchvision's layout (pickled batches).

``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``<root>/cifar-100-python/{train, test, meta}``, as the archives of
https://www.cs.toronto.edu/~kriz/cifar.html unpack (and as torchvision's
``CIFAR10`` / ``CIFAR100`` download them). ``<root>`` may also be the
batches directory itself. Official train / test splits; the decoded arrays
are cached per process.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neqtune.datasets.config import DataConfig
from neqtune.datasets.registry import DatasetError, DataSplits, register_check, register_dataset
from neqtune.datasets.roots import dataset_root, download_lock, require
from neqtune.datasets.samples import ArraySource, SplitSettings, official_splits

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarLayout:
    """The files of one CIFAR variant."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


LAYOUTS = {
    "c10": CifarLayout(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "c100": CifarLayout("CIFAR-100", "cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names"),
}


def batches_dir(root: Path, layout: CifarLayout) -> Path:
    """``root/<folder>`` if it exists, else ``root`` (pointing at the batches directory itself)."""
    nested = root / layout.folder
    return nested if nested.is_dir() else root


def check_cifar(config: DataConfig) -> None:
    """Every batch file exists (or ``download: true``)."""
    layout = LAYOUTS[config.name]
    root = dataset_root(config)
    folder = batches_dir(root, layout)
    missing = [name for name in layout.files if not (folder / name).is_file()]
    if missing and not config.download:
        require(
            False,
            f"no {layout.title} at {root} (missing {', '.join(missing)}); expected {root}/{layout.folder}/{{{','.join(layout.files)}}}: "
            f"unpack the python version from {URL} there, or set data.download: true",
        )


def _text(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _unpickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with text keys.

    The released batches are Python 2 pickles: read as latin-1 (as torchvision
    does), their keys and names come back as ``str``; keys pickled as
    ``bytes`` are decoded too.
    """
    try:
        with open(path, "rb") as handle:
            loaded = pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DatasetError(f"cannot read CIFAR batch {path}: {err}") from err
    if not isinstance(loaded, dict):
        raise DatasetError(f"cannot read CIFAR batch {path}: expected a pickled dict, got {type(loaded).__name__}")
    return {_text(key): value for key, value in loaded.items()}


def _read_batches(folder: Path, files: tuple[str, ...], label_key: str) -> ArraySource:
    images, labels = [], []
    for name in files:
        batch = _unpickle(folder / name)
        if "data" not in batch or label_key not in batch:
            raise DatasetError(f"{folder / name}: missing the key 'data' or {label_key!r}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(batch[label_key]):
            raise DatasetError(f"{folder / name}: expected [N, 3072] images with N labels, got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return ArraySource(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


@functools.cache
def read_cifar(name: str, folder: Path) -> tuple[ArraySource, ArraySource, tuple[str, ...]]:
    """Decoded train and test arrays and class names (cached per process: Ray reuses workers)."""
    layout = LAYOUTS[name]
    meta = _unpickle(folder / layout.meta_file)
    classes = tuple(str(_text(n)) for n in meta.get(layout.names_key, []))
    train = _read_batches(folder, layout.train_files, layout.label_key)
    test = _read_batches(folder, (layout.test_file,), layout.label_key)
    top = int(max(train.labels.max(), test.labels.max()))
    if top >= len(classes):
        raise DatasetError(f"{folder / layout.meta_file}: {len(classes)} class names for labels up to {top}")
    return train, test, classes


def _download(name: str, root: Path) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset_class = CIFAR10 if name == "c10" else CIFAR100
    with download_lock(root):
        dataset_class(str(root), train=True, download=True)


def _build(config: DataConfig) -> DataSplits:
    layout = LAYOUTS[config.name]
    root = dataset_root(config)
    if config.download and not all((batches_dir(root, layout) / f).is_file() for f in layout.files):
        _download(config.name, root)
    check_cifar(config)
    train, test, classes = read_cifar(config.name, batches_dir(root, layout).resolve())
    settings = SplitSettings.of(config)
    return official_splits(train, test, classes, settings)


@register_dataset("c10")
def build_c10(config: DataConfig) -> DataSplits:
    """CIFAR-10: 50,000 train / 10,000 test images, 10 classes."""
    return _build(config)


@register_dataset("c100")
def build_c100(config: DataConfig) -> DataSplits:
    """CIFAR-100 (fine labels): 50,000 train / 10,000 test images, 100 classes."""
    return _build(config)


register_check("c10")(check_cifar)
register_check("c100")(check_cifar)
