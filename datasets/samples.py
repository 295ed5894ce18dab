"""Samples, transforms and the assembly of the four splits, shared by all file-based data sets.

A *source* holds a data set's samples as they are on disk (image files, or
decoded ``uint8`` arrays) and turns sample ``i`` into a PIL image and a
label. A :class:`SplitView` shows some indices of a source through a
transform; the train split uses the training transform, the velocity,
validation and test splits the evaluation transform.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from neqtune.datasets.config import DataConfig
from neqtune.datasets.registry import DatasetError, DataSplits, split_train

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MEAN_STD = (0.5, 0.5, 0.5)
EVAL_RESIZE_RATIO = 0.875  # eval: resize the short side to size / 0.875, then centre-crop


def load_image(path: str) -> Image.Image:
    """Read an image file as RGB.

    Raises:
        DatasetError: the file is missing, truncated or not an image; the
            message names the file.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err


class SampleSource(Protocol):
    """Samples as stored: ``len`` and ``load(i) -> (RGB image, label)``."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Image.Image, int]: ...


@dataclass(frozen=True)
class FileDigest:
    """Hex SHA-256 digests of a set of image files: ``files`` of their paths and labels, ``state`` also of each file's size and ``mtime_ns``.

    The decoded-image cache names its file after them (:mod:`neqtune.datasets.cache`).
    """

    files: str
    state: str


@dataclass(frozen=True)
class FileSource:
    """Samples that are image files: parallel tuples of paths and labels.

    ``digest``: the files' digest as the node's file index recorded it
    (:mod:`neqtune.datasets.file_index`), so that the decoded cache need not
    stat every file again; None: the cache stats them itself.
    """

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    digest: FileDigest | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return load_image(self.paths[index]), self.labels[index]


@dataclass(frozen=True, eq=False)
class ArraySource:
    """Samples decoded in memory: ``uint8`` images ``[N, H, W, 3]`` or ``[N, H, W]`` (grey) and labels ``[N]``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load(self, index: int) -> tuple[Image.Image, int]:
        image = Image.fromarray(self.images[index])
        return image.convert("RGB"), int(self.labels[index])

    def arrays(self, indices: Sequence[int]) -> np.ndarray:
        """The ``uint8`` images at ``indices``, stacked (one gather: they share a size)."""
        return self.images[np.asarray(indices, dtype=np.int64)]


class SplitView(Dataset[tuple[torch.Tensor, int]]):
    """Some samples of a source, seen through a transform (picklable, for Ray and loader workers).

    An item is asked for by position, or by ``(position, seed)``: then the
    transform draws its randomness from its own generator seeded by ``seed``
    (:class:`SeededSampler` hands out one per sample and epoch), so the
    augmentation of a run is the same whether its samples are loaded in the
    trial's process or in any number of workers, and a resumed run sees the
    same crops as one that never stopped. ``square_resize``: the transforms
    are VWW's (a resize to a square), for the batched path to match.
    """

    def __init__(self, source: SampleSource, indices: Sequence[int], transform: T.Compose, *, square_resize: bool = False) -> None:
        self.source = source
        self.indices = list(indices)
        self.transform = transform
        self.square_resize = square_resize

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        position, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.source.load(self.indices[position])
        if seed is None:
            tensor: torch.Tensor = self.transform(image)
            return tensor, label
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from torch's global generator
            torch.manual_seed(seed)
            tensor = self.transform(image)
        return tensor, label


class SeededSampler(Sampler[tuple[int, int]]):
    """Every position of a split once per epoch, shuffled, each with the seed of its augmentation.

    Both the order and the seeds come from ``generator`` (the run's shuffle
    generator, saved in its checkpoint).
    """

    def __init__(self, length: int, generator: torch.Generator) -> None:
        self.length = length
        self.generator = generator

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.length, generator=self.generator).tolist()
        seeds = torch.randint(0, 2**62, (self.length,), generator=self.generator).tolist()
        return iter(zip(order, seeds, strict=True))


def train_transform(image_size: int, *, square_resize: bool) -> T.Compose:
    """The training augmentation of the study.

    ``square_resize`` (VWW): resize to ``image_size`` x ``image_size`` and
    flip. Otherwise: random-resized crop (scale 0.08-1), flip and colour
    jitter 0.4. Both end with mean/std 0.5 normalisation.
    """
    if square_resize:
        steps: list[object] = [T.Resize((image_size, image_size)), T.RandomHorizontalFlip()]
    else:
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN_STD, MEAN_STD)])


def eval_transform(image_size: int, *, square_resize: bool) -> T.Compose:
    """The evaluation transform: a square resize (VWW), else resize to ``size/0.875`` and centre-crop."""
    if square_resize:
        steps: list[object] = [T.Resize((image_size, image_size))]
    else:
        steps = [T.Resize(math.ceil(image_size / EVAL_RESIZE_RATIO)), T.CenterCrop(image_size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN_STD, MEAN_STD)])


@dataclass(frozen=True)
class SplitSettings:
    """What the split assembly needs from the data config."""

    image_size: int
    velocity_images: int
    val_fraction: float
    split_seed: int
    square_resize: bool = False

    @classmethod
    def of(cls, config: DataConfig, *, square_resize: bool = False) -> SplitSettings:
        """The settings of ``config`` (``square_resize``: VWW's resize-to-square transforms)."""
        return cls(config.image_size, config.velocity_images, config.val_fraction, config.split_seed, square_resize=square_resize)


def official_splits(train: SampleSource, test: SampleSource, classes: Sequence[str], settings: SplitSettings) -> DataSplits:
    """Velocity and validation carved out of the official train split; the official test split kept.

    The carving is :func:`neqtune.datasets.registry.split_train` seeded by
    ``split_seed``; the train split gets the training transform, the others
    the evaluation transform.
    """
    train_idx, val_idx, velocity_idx = split_train(
        len(train), velocity_images=settings.velocity_images, val_fraction=settings.val_fraction, seed=settings.split_seed
    )
    augment = train_transform(settings.image_size, square_resize=settings.square_resize)
    plain = eval_transform(settings.image_size, square_resize=settings.square_resize)
    square = settings.square_resize
    return DataSplits(
        train=SplitView(train, train_idx, augment, square_resize=square),
        val=SplitView(train, val_idx, plain, square_resize=square),
        velocity=SplitView(train, velocity_idx, plain, square_resize=square),
        test=SplitView(test, range(len(test)), plain, square_resize=square),
        classes=list(classes),
    )
