"""The data section of a trial's config: which data set, at what size, how it is split and fed.

Parsing checks types and ranges only (see :mod:`neqtune.datasets.parsing`);
whether ``name`` is a registered data set and whether its files are there is
checked when a trial is checked or built (:func:`neqtune.datasets.check_dataset`,
:func:`neqtune.datasets.data_problems`).
"""

from __future__ import annotations

import os
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

    ``label`` names the data set in the result tables (``data.label``):
    given, or for a data set read from the user's own folder
    (:data:`FOLDER_DATASETS`) that folder's name, else ``name``; parsing
    fills it, so every row carries one. ``image_column`` and
    ``label_column`` name the columns of a HuggingFace folder (``hf-disk``).
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
    label: str | None = None
    image_column: str = "image"
    label_column: str = "label"

    def validate(self, path: str) -> None:
        if self.label is None:
            self.label = default_label(self.name, self.root)
        require(bool(self.label.strip()), join(path, "label"), "must be a non-empty name")
        require(bool(self.image_column), join(path, "image_column"), "must be a column name")
        require(bool(self.label_column), join(path, "label_column"), "must be a column name")
        require(self.image_size >= 8, join(path, "image_size"), f"must be >= 8 pixels, got {self.image_size}")
        require(self.batch_size >= 1, join(path, "batch_size"), f"must be >= 1, got {self.batch_size}")
        require(self.eval_batch_size >= 1, join(path, "eval_batch_size"), f"must be >= 1, got {self.eval_batch_size}")
        require(0 < self.val_fraction < 1, join(path, "val_fraction"), f"must lie in (0, 1), got {self.val_fraction}")
        require(0 < self.test_fraction < 1, join(path, "test_fraction"), f"must lie in (0, 1), got {self.test_fraction}")
        require(self.velocity_images >= 1, join(path, "velocity_images"), f"must be >= 1, got {self.velocity_images}")
        require(self.workers == "auto" or self.workers >= 0, join(path, "workers"), f"must be >= 0 (or auto), got {self.workers}")


# Data sets whose directory is the user's own data: their label is the directory's name, not the registered name.
FOLDER_DATASETS = ("image-folder", "hf-disk")


def default_label(name: str, root: str | None) -> str:
    """The label of data set ``name`` at ``root``: the folder's name for :data:`FOLDER_DATASETS`, else ``name``.

    Without ``root`` the folder is ``$NEQ_DATA/<name>``, whose name is ``name``.
    The path is made absolute without following links (``.``, ``data/``,
    a link's own name stay what the user wrote).
    """
    if name not in FOLDER_DATASETS or not root:
        return name
    return os.path.basename(os.path.abspath(os.path.expanduser(root))) or name
