"""``hf-disk``: a HuggingFace ``datasets`` folder written by ``save_to_disk`` (neqtune's extra ``[hf]``).

``<root>`` (``data.root``, else ``$NEQ_DATA/hf-disk``) holds either one
``Dataset`` (``state.json``, ``dataset_info.json``, ``*.arrow``) or a
``DatasetDict`` (``dataset_dict.json`` and one folder per split). The image
column (``data.image_column``, default ``image``) must have HuggingFace's
``Image`` feature; the label column (``data.label_column``, default
``label``) a ``ClassLabel`` (its names are the classes) or integers 0..K-1.

Splits: a ``DatasetDict``'s ``train`` is the train split, its
``validation`` (or ``val``) the validation split and its ``test`` the test
split; whatever is missing, and everything of a single ``Dataset``, is
carved as an image folder's (:func:`neqtune.datasets.folders.carved_splits`).
The Arrow files are memory-mapped; images are decoded at each read (in the
loader workers), so ``data.cache: decoded``, which indexes image files, is
refused; ``data.augment: batched`` works.

Checked when the space loads (no image decoded): the package, the folder,
the columns and their features, at least 2 classes.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from neqtune.datasets.config import DataConfig
from neqtune.datasets.folders import carved_splits
from neqtune.datasets.parsing import ConfigError
from neqtune.datasets.registry import DatasetError, DataSplits, register_check, register_dataset
from neqtune.datasets.roots import dataset_root, require

INSTALL_HINT = "pip install 'neqtune[hf]' (HuggingFace's datasets)"
VAL_SPLITS = ("validation", "val")


def huggingface() -> Any:
    """HuggingFace's ``datasets`` module.

    Raises:
        ConfigError: (``data.name``) it is not installed; says how to install it.
    """
    try:
        return importlib.import_module("datasets")
    except ModuleNotFoundError as err:
        if err.name != "datasets":
            raise
        raise ConfigError(
            "data.name", f"data set 'hf-disk' reads HuggingFace folders, which needs the extra [hf]: {INSTALL_HINT}"
        ) from None


def _is_saved(root: Path) -> bool:
    return (root / "dataset_dict.json").is_file() or (root / "state.json").is_file()


@functools.cache
def _images(root: str, split: str | None, image_column: str) -> Any:
    """The image column of the saved ``Dataset`` at ``root`` (``split`` of a ``DatasetDict``), memory-mapped; once per process.

    Only that column: a row read decodes its image and nothing else.
    """
    loaded = huggingface().load_from_disk(root)
    return (loaded[split] if split is not None else loaded).select_columns([image_column])


@dataclass(frozen=True)
class HFSource:
    """The samples of one saved split: images decoded at each read, labels held in memory.

    Only the folder, split and column names are pickled (for Ray and the
    loader workers); each process maps the Arrow files itself.
    """

    root: str
    split: str | None
    image_column: str
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[Image.Image, int]:
        try:
            image = _images(self.root, self.split, self.image_column)[int(index)][self.image_column]
            return image.convert("RGB"), self.labels[index]
        except (OSError, SyntaxError, ValueError) as err:
            where = f"{self.root} (split {self.split})" if self.split else self.root
            raise DatasetError(f"cannot read image {index} of {where}: {err}") from err


@dataclass(frozen=True)
class SavedFolder:
    """What the check found: the class names and each split's name (None: a single ``Dataset``) with its labels."""

    classes: tuple[str, ...]
    splits: dict[str, tuple[str | None, tuple[int, ...]]]


def _classes(feature: Any, labels: list[Any], config: DataConfig) -> tuple[str, ...]:
    names = getattr(feature, "names", None)
    if names:
        return tuple(str(n) for n in names)
    require(
        all(isinstance(v, int) and not isinstance(v, bool) for v in labels),
        f"column {config.label_column!r} holds {type(labels[0]).__name__ if labels else 'nothing'}, not class indices "
        "(a ClassLabel or integers 0..K-1)",
        key="data.label_column",
    )
    count = max(labels) + 1 if labels else 0
    require(min(labels, default=0) >= 0, f"column {config.label_column!r} has negative labels", key="data.label_column")
    return tuple(str(c) for c in range(count))


def _columns(dataset: Any, config: DataConfig, where: str) -> tuple[Any, list[Any]]:
    """The label column's feature and values, after checking that both columns exist with usable features."""
    features = dataset.features
    known = ", ".join(features)
    require(
        config.image_column in features, f"{where} has no column {config.image_column!r}; its columns: {known}", key="data.image_column"
    )
    require(
        config.label_column in features, f"{where} has no column {config.label_column!r}; its columns: {known}", key="data.label_column"
    )
    image_feature = features[config.image_column]
    require(
        type(image_feature).__name__ == "Image",
        f"{where}: column {config.image_column!r} is {type(image_feature).__name__}, not HuggingFace's Image feature",
        key="data.image_column",
    )
    return features[config.label_column], list(dataset[config.label_column])


@functools.cache
def _read(root: Path, image_column: str, label_column: str) -> SavedFolder:
    config = DataConfig(name="hf-disk", root=str(root), image_column=image_column, label_column=label_column)
    loaded = huggingface().load_from_disk(str(root))
    names = list(loaded) if hasattr(loaded, "keys") else [None]
    if names != [None]:
        require("train" in names, f"{root}: a DatasetDict without a 'train' split (its splits: {', '.join(map(str, names))})")
    splits: dict[str, tuple[str | None, tuple[int, ...]]] = {}
    classes: tuple[str, ...] = ()
    for split in names:
        role = "train" if split in (None, "train") else "val" if split in VAL_SPLITS else "test" if split == "test" else None
        if role is None or role in splits:
            continue
        dataset = loaded[split] if split is not None else loaded
        feature, labels = _columns(dataset, config, f"{root}" + (f" (split {split})" if split else ""))
        found = _classes(feature, labels, config)
        if role == "train":
            classes = found
        splits[role] = (split, tuple(int(v) for v in labels))
    require(
        len(classes) >= 2, f"{root}: needs at least 2 classes in column {label_column!r}, found {len(classes)}", key="data.label_column"
    )
    for role, (_, indices) in splits.items():
        bad = [v for v in indices if not 0 <= v < len(classes)]
        require(
            not bad, f"{root}: {role} label {bad[0] if bad else ''} is not one of train's {len(classes)} classes", key="data.label_column"
        )
    return SavedFolder(classes, splits)


def _saved(config: DataConfig) -> tuple[Path, SavedFolder]:
    root = dataset_root(config).resolve()
    expected = "expected a folder written by HuggingFace's Dataset.save_to_disk or DatasetDict.save_to_disk"
    require(root.is_dir(), f"no HuggingFace folder at {root} (no such directory); {expected}")
    huggingface()
    require(_is_saved(root), f"{root} is not a folder written by save_to_disk (no dataset_dict.json or state.json); {expected}")
    require(
        config.cache != "decoded",
        "hf-disk is read from its memory-mapped Arrow files; the decoded cache indexes image files: use cache: none",
        key="data.cache",
    )
    try:
        return root, _read(root, config.image_column, config.label_column)
    except (OSError, ValueError, KeyError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError("data.root", f"cannot read the HuggingFace folder {root}: {err}") from None


def check_hf_disk(config: DataConfig) -> None:
    """The extra, the folder, its columns and at least 2 classes (no image decoded)."""
    _saved(config)


@register_dataset("hf-disk")
def build_hf_disk(config: DataConfig) -> DataSplits:
    """A ``save_to_disk`` folder's train / validation / test, what it lacks carved with ``split_seed``."""
    root, saved = _saved(config)

    def source(role: str) -> HFSource | None:
        if role not in saved.splits:
            return None
        split, labels = saved.splits[role]
        return HFSource(str(root), split, config.image_column, labels)

    train = source("train")
    assert train is not None  # _read requires it
    return carved_splits(train, saved.classes, config, val=source("val"), test=source("test"))


register_check("hf-disk")(check_hf_disk)
