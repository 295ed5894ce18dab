"""``fashion-mnist``: Zalando's Fashion-MNIST from its idx files.

``<root>/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}``,
each gzipped (``.gz``, as released and as Debian's ``dataset-fashion-mnist``
installs them under ``/usr/share/datasets/fashion-mnist``) or not; also
torchvision's layout ``<root>/FashionMNIST/raw/``. Official 60,000 train /
10,000 test split; the 28x28 grey images are repeated over three channels.
"""

from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import numpy as np

from neqtune.datasets.config import DataConfig
from neqtune.datasets.registry import DatasetError, DataSplits, register_check, register_dataset
from neqtune.datasets.roots import dataset_root, download_lock, require
from neqtune.datasets.samples import ArraySource, SplitSettings, official_splits

URL = "https://github.com/zalandoresearch/fashion-mnist (or: apt-get install dataset-fashion-mnist)"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_IDX_UBYTE = 0x08  # the idx type code of unsigned bytes


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def idx_folder(root: Path) -> Path:
    """``root``, or torchvision's ``root/FashionMNIST/raw`` when the files are there."""
    nested = root / "FashionMNIST" / "raw"
    return nested if _find(nested, FILES[0]) is not None else root


def check_fashion_mnist(config: DataConfig) -> None:
    """The four idx files exist, plain or gzipped (or ``download: true``)."""
    root = dataset_root(config)
    folder = idx_folder(root)
    missing = [name for name in FILES if _find(folder, name) is None]
    if missing and not config.download:
        require(
            False,
            f"no Fashion-MNIST at {root} (missing {', '.join(missing)}); expected {root}/{{{','.join(FILES)}}}[.gz]: "
            f"get them from {URL}, or set data.download: true",
        )


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes as an array of its shape (``[N, 28, 28]`` images or ``[N]`` labels)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read idx file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise DatasetError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: header says {shape} ({expected} bytes), file holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _pair(folder: Path, prefix: str) -> ArraySource:
    images_path, labels_path = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
    assert images_path is not None and labels_path is not None  # checked before
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{images_path}: {images.shape} images do not match {labels.shape} labels in {labels_path}")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise DatasetError(f"{labels_path}: label {int(labels.max())} outside 0..{len(CLASSES) - 1}")
    return ArraySource(images, labels.astype(np.int64))


@functools.cache
def read_fashion_mnist(folder: Path) -> tuple[ArraySource, ArraySource]:
    """Decoded train and test arrays (cached per process: Ray reuses workers)."""
    return _pair(folder, "train"), _pair(folder, "t10k")


@register_dataset("fashion-mnist")
def build_fashion_mnist(config: DataConfig) -> DataSplits:
    """Fashion-MNIST: 60,000 train / 10,000 test grey 28x28 images, 10 classes."""
    root = dataset_root(config)
    if config.download and any(_find(idx_folder(root), name) is None for name in FILES):
        from torchvision.datasets import FashionMNIST

        with download_lock(root):
            FashionMNIST(str(root), train=True, download=True)
    check_fashion_mnist(config)
    train, test = read_fashion_mnist(idx_folder(root).resolve())
    settings = SplitSettings.of(config)
    return official_splits(train, test, CLASSES, settings)


register_check("fashion-mnist")(check_fashion_mnist)
