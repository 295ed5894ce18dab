"""The data section of a trial's config: which data set, at what size, how it is split and fed.

Parsing checks types and ranges only (see :mod:`neqtune.datasets.parsing`);
whether ``name`` is a registered data set and whether its files are there is
checked when a trial is checked or built (:func:`neqtune.datasets.check_dataset`,
:func:`neqtune.datasets.data_problems`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from neqtune.datasets.parsing import join, require


@dataclass
class DataConfig:
    """Which data set, at what size, how it is split, and how its batches are made.

    ``velocity_images`` images are carved out of the training set for the
    velocity split; ``val_fraction`` of the rest becomes the validation
    split; ``test_fraction`` applies only to data sets without an official
    test split (digits). ``root`` is the data set's directory (default
    ``$NEQ_DATA/<name>``); ``download`` lets torchvision fetch the data
    sets it can (CIFAR, Flowers, Food, Pets, Fashion-MNIST) when missing.

    The input pipeline (:mod:`neqtune.datasets.pipeline`): ``workers`` loader
    processes (``auto``: one fewer than the trial's CPU threads, so a
    one-CPU trial loads in its own process); ``cache: decoded`` decodes an
    image-file data set once per node into a memory-mapped file under
    ``$NEQ_CACHE`` (:mod:`neqtune.datasets.cache`); ``augment: batched`` runs the
    training augmentation on whole batches of tensors, on the trial's
    device, for data held as arrays (CIFAR, Fashion-MNIST, the decoded
    cache) instead of per sample through PIL (``pil``, the study's path).
    """

    name: str = "digits"
    root: str | None = None
    image_size: int = 32
    batch_size: int = 32
    eval_batch_size: int = 256
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    velocity_images: int = 10
    split_seed: int = 0
    download: bool = False
    workers: int | Literal["auto"] = "auto"
    cache: Literal["none", "decoded"] = "none"
    augment: Literal["pil", "batched"] = "pil"

    def validate(self, path: str) -> None:
        require(self.image_size >= 8, join(path, "image_size"), f"must be >= 8 pixels, got {self.image_size}")
        require(self.batch_size >= 1, join(path, "batch_size"), f"must be >= 1, got {self.batch_size}")
        require(self.eval_batch_size >= 1, join(path, "eval_batch_size"), f"must be >= 1, got {self.eval_batch_size}")
        require(0 < self.val_fraction < 1, join(path, "val_fraction"), f"must lie in (0, 1), got {self.val_fraction}")
        require(0 < self.test_fraction < 1, join(path, "test_fraction"), f"must lie in (0, 1), got {self.test_fraction}")
        require(self.velocity_images >= 1, join(path, "velocity_images"), f"must be >= 1, got {self.velocity_images}")
        require(self.workers == "auto" or self.workers >= 0, join(path, "workers"), f"must be >= 0 (or auto), got {self.workers}")
