"""``image-folder``: the user's own images, one subdirectory per class.

``<root>`` (``data.root``, else ``$NEQ_DATA/image-folder``) is either

- **split by subdirectories**: ``train/<class>/<image>``, with an optional
  ``val/<class>/<image>`` (the validation split; ``val_fraction`` is then not
  used) and an optional ``test/<class>/<image>`` (the test split); or
- **flat**: ``<class>/<image>`` directly under ``<root>``.

Classes are the sorted directory names of ``train/`` (or of ``<root>``); a
class directory of ``val/`` or ``test/`` must also be one of ``train/``.
What the folder lacks is carved by neqtune's split rules, seeded with
``split_seed``: without ``test/`` a ``test_fraction`` share is held out
first (:func:`~neqtune.datasets.registry.carve_test`, as for digits), then
velocity and, without ``val/``, validation come out of the rest
(:func:`~neqtune.datasets.registry.split_train`).

A folder without ``test/`` is carved by default rather than refused: the
default ``test_fraction`` (0.2) already means "the held-out share of a data
set without a test split", and the dry run prints the split sizes, so a
carve is never silent.

The load-time check (:func:`check_image_folder`) reads the directory tree and
the header of every image (``PIL.Image.open``, which parses the header and
decodes nothing), once per process and folder state: a file that is not an
image is refused before Ray starts, with its path. A file whose header is
sound but whose body is damaged fails the trial at its first read, again
with its path (:func:`~neqtune.datasets.samples.load_image`).

A trial reads the folder's listing from the node's file index
(:mod:`neqtune.datasets.file_index`): listed once per node and folder
state, then checked at each trial start with one stat per directory.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torchvision import transforms as T

from neqtune.datasets.config import DataConfig
from neqtune.datasets.file_index import FileIndex, Listing, node_index
from neqtune.datasets.parsing import ConfigError
from neqtune.datasets.registry import DataSplits, carve_test, register_check, register_dataset, split_train
from neqtune.datasets.roots import dataset_root, require
from neqtune.datasets.samples import IMAGE_EXTENSIONS, SampleSource, SplitSettings, SplitView, eval_transform, train_transform

SPLIT_DIRS = ("train", "val", "test")
MIN_CLASSES = 2


@dataclass(frozen=True)
class FolderIndex:
    """An image folder's classes and, per split it has (``train``, ``val``, ``test``), its ``(image path, label)`` pairs."""

    classes: tuple[str, ...]
    splits: dict[str, tuple[tuple[str, int], ...]]


class FolderError(ValueError):
    """A malformed image folder: one line naming the directory or file."""


def _class_dirs(directory: Path) -> list[os.DirEntry[str]]:
    """The class subdirectories of ``directory``, sorted by name (hidden ones skipped)."""
    return sorted((e for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def _images(class_dir: str) -> list[str]:
    """The image files of one class directory, sorted by name."""
    names = sorted(e.name for e in os.scandir(class_dir) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(class_dir, name) for name in names]


def _split_pairs(split_dir: Path, label: dict[str, int], classes_dir: Path) -> tuple[tuple[str, int], ...]:
    pairs: list[tuple[str, int]] = []
    for entry in _class_dirs(split_dir):
        if entry.name not in label:
            raise FolderError(f"{entry.path}: class {entry.name!r} has no directory in {classes_dir}")
        images = _images(entry.path)
        if not images:
            raise FolderError(f"{entry.path}: empty class directory (no {', '.join(IMAGE_EXTENSIONS)} files)")
        pairs.extend((path, label[entry.name]) for path in images)
    return tuple(pairs)


def _no_folder(root: Path) -> str:
    return f"no image folder at {root} (no such directory); expected {root}/<class>/<image> or {root}/train/<class>/<image>"


def index_folder(root: Path) -> FolderIndex:
    """The classes and split files of the image folder at ``root`` (see the module's docstring for the layouts).

    Raises:
        FolderError: no such directory, ``val/`` or ``test/`` without
            ``train/``, fewer than 2 classes, an empty class directory, or a
            class of ``val/`` / ``test/`` that ``train/`` lacks.
    """
    if not root.is_dir():
        raise FolderError(_no_folder(root))
    split_dirs = [name for name in SPLIT_DIRS if (root / name).is_dir()]
    if split_dirs and "train" not in split_dirs:
        raise FolderError(f"{root} has {'/ and '.join(split_dirs)}/ but no train/ (the classes are train/'s subdirectories)")
    classes_dir = root / "train" if split_dirs else root
    classes = tuple(entry.name for entry in _class_dirs(classes_dir))
    if len(classes) < MIN_CLASSES:
        found = f"only {classes[0]!r}" if classes else "none"
        raise FolderError(f"{classes_dir}: an image folder needs at least {MIN_CLASSES} class directories, found {found}")
    label = {name: i for i, name in enumerate(classes)}
    splits = (
        {name: _split_pairs(root / name, label, classes_dir) for name in split_dirs}
        if split_dirs
        else {"train": _split_pairs(root, label, root)}
    )
    return FolderIndex(classes, splits)


def _header_problem(path: str) -> str | None:
    """Why ``path`` is not an image PIL can open (its header only), or None."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  (parsed with the header: a sound header has one)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return str(err)
    return None


def _listing_state(root: Path) -> tuple[tuple[str, int], ...]:
    """The modification times of ``root`` and its split and class directories: what adding or removing a file changes."""
    dirs = [root, *(root / name for name in SPLIT_DIRS if (root / name).is_dir())]
    state = []
    for directory in dirs:
        state.append((str(directory), directory.stat().st_mtime_ns))
        state.extend((e.path, e.stat().st_mtime_ns) for e in os.scandir(directory) if e.is_dir())
    return tuple(state)


@functools.cache
def _checked_index(root: Path, state: tuple[tuple[str, int], ...]) -> FolderIndex:
    """:func:`index_folder` with every image's header read, once per folder state and process."""
    del state  # part of the cache key only
    index = index_folder(root)
    for pairs in index.splits.values():
        for path, _ in pairs:
            problem = _header_problem(path)
            if problem is not None:
                raise FolderError(f"{path}: not a readable image ({problem})")
    return index


def _root(config: DataConfig) -> Path:
    return dataset_root(config).resolve()


def check_image_folder(config: DataConfig) -> None:
    """The folder's layout, classes and image headers (cached per process while the folder is unchanged)."""
    root = _root(config)
    require(root.is_dir(), _no_folder(root))
    try:
        _checked_index(root, _listing_state(root))
    except (FolderError, OSError) as err:  # OSError: a directory that cannot be listed (permissions)
        require(False, str(err))


def _listing(root: Path) -> Listing:
    """:func:`index_folder` as the node's file index lists it: with the root and split directories it read."""
    index = index_folder(root)
    split_dirs = tuple(str(root / name) for name in SPLIT_DIRS if name in index.splits and (root / name).is_dir())
    return Listing(index.classes, index.splits, (str(root), *split_dirs))


def read_folder(config: DataConfig) -> FileIndex:
    """The classes and split files of ``config``'s image folder (no header read), from this node's file index.

    Listed once per node while the folder is unchanged (:mod:`neqtune.datasets.file_index`).

    Raises:
        ConfigError: (``data.root``) the folder is missing or malformed (the message names the directory).
    """
    root = _root(config)
    require(root.is_dir(), _no_folder(root))  # the line the folder's check gives, not the failed stat's
    try:
        return node_index("image-folder", root, lambda: _listing(root))
    except (FolderError, OSError) as err:
        raise ConfigError("data.root", str(err)) from None


def carved_splits(
    train: SampleSource,
    classes: tuple[str, ...],
    config: DataConfig,
    *,
    val: SampleSource | None = None,
    test: SampleSource | None = None,
    square_resize: bool = False,
) -> DataSplits:
    """The four splits of a data set given as a train source and, where it has them, val and test sources.

    Without ``test``, ``test_fraction`` of ``train`` is held out first
    (:func:`carve_test`, seeded with ``split_seed``); velocity and, without
    ``val``, validation come out of the rest (:func:`split_train`, seeded
    with ``split_seed + 1`` after a carve, ``split_seed`` otherwise: a folder
    with ``test/`` splits its train as Flowers or Food do).
    """
    seed = config.split_seed
    pool = list(range(len(train)))
    test_idx: list[int] = []
    if test is None:
        test_idx, pool = carve_test(len(train), test_fraction=config.test_fraction, seed=seed)
        seed += 1
    train_pos, val_pos, velocity_pos = split_train(
        len(pool), velocity_images=config.velocity_images, val_fraction=0.0 if val is not None else config.val_fraction, seed=seed
    )
    settings = SplitSettings.of(config, square_resize=square_resize)
    augment = train_transform(settings.image_size, square_resize=square_resize)
    plain = eval_transform(settings.image_size, square_resize=square_resize)

    def view(source: SampleSource, indices: list[int] | range, transform: T.Compose) -> SplitView:
        return SplitView(source, indices, transform, square_resize=square_resize)

    return DataSplits(
        train=view(train, [pool[i] for i in train_pos], augment),
        val=view(val, range(len(val)), plain) if val is not None else view(train, [pool[i] for i in val_pos], plain),
        velocity=view(train, [pool[i] for i in velocity_pos], plain),
        test=view(test, range(len(test)), plain) if test is not None else view(train, test_idx, plain),
        classes=list(classes),
    )


@register_dataset("image-folder")
def build_image_folder(config: DataConfig) -> DataSplits:
    """The user's class-per-subdirectory images, split by ``train/`` / ``val/`` / ``test/`` or carved with ``split_seed``."""
    index = read_folder(config)
    return carved_splits(index.sources["train"], index.classes, config, val=index.sources.get("val"), test=index.sources.get("test"))


register_check("image-folder")(check_image_folder)
