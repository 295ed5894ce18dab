"""How a run's batches are made: loader workers, the decoded cache, augmentation per sample or per batch.

Two paths, chosen by ``data.augment``:

- ``pil`` (the study's, the default): a ``DataLoader`` over the split, each
  sample through PIL and torchvision's transforms, in ``data.workers``
  processes. Training samples come with their own augmentation seed
  (:class:`~neqtune.datasets.samples.SeededSampler`), so the crops of a
  seeded run do not depend on how many workers load them.
- ``batched``: the loader hands over whole ``uint8`` batches (a gather from an
  in-memory array, reads of the decoded cache, or decoded files), which are
  copied to the trial's device and augmented there at once
  (:class:`~neqtune.datasets.augment.BatchTransform`), from a generator on
  that device seeded per trial.

``data.cache: decoded`` puts :mod:`neqtune.datasets.cache` under either path:
image files are decoded once per node, and every trial and epoch reads the
memory-mapped file. On CUDA, batches are pinned and copied without waiting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from neqtune.datasets.augment import BatchTransform, pad_batch
from neqtune.datasets.cache import DecodedImages, decode_resized, open_decoded, resized_array
from neqtune.datasets.config import DataConfig
from neqtune.datasets.registry import DataSplits
from neqtune.datasets.samples import ArraySource, FileSource, SeededSampler, SplitView

MAX_AUTO_WORKERS = 4
"""``workers: auto`` never starts more: beyond it, measured on 2 CPUs, loading is no longer what a trial waits for."""

Batch = tuple[torch.Tensor, torch.Tensor]
RawBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Batches(Protocol):
    """What a run iterates over: ``(images, labels)`` batches, and how many there are."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


def with_decoded_cache(splits: DataSplits, config: DataConfig) -> DataSplits:
    """The splits with every image-file source replaced by its decoded cache on this node (built now if missing)."""
    caches: dict[int, DecodedImages] = {}

    def cached(split: Dataset[Any]) -> Dataset[Any]:
        if not isinstance(split, SplitView) or not isinstance(split.source, FileSource):
            return split
        key = id(split.source)
        if key not in caches:
            caches[key] = open_decoded(split.source, config.image_size)
        return SplitView(caches[key], split.indices, split.transform, square_resize=split.square_resize)

    return dataclasses.replace(
        splits, train=cached(splits.train), val=cached(splits.val), velocity=cached(splits.velocity), test=cached(splits.test)
    )


def _decodes_files(split: Dataset[Any]) -> bool:
    """Whether a sample of ``split`` costs a decode (image files, a HuggingFace folder), not a gather from memory."""
    return isinstance(split, SplitView) and not isinstance(split.source, ArraySource | DecodedImages)


def loader_workers(config: DataConfig, split: Dataset[Any], cpus: int) -> int:
    """The loader processes of ``split``: ``data.workers``, or for ``auto`` what its samples need.

    ``auto``: one fewer than the trial's CPU threads (at most
    :data:`MAX_AUTO_WORKERS`) where each sample costs real work, a decode or
    a PIL transform; none where a batch is a gather from memory (tensors
    already made, or ``batched`` over arrays and the decoded cache).
    """
    if config.workers != "auto":
        return config.workers
    if not isinstance(split, SplitView):
        return 0
    if config.augment == "batched" and not _decodes_files(split):
        return 0
    return max(0, min(cpus - 1, MAX_AUTO_WORKERS))


class RawView(Dataset[RawBatch]):
    """The samples of a split as ``uint8`` images, untransformed, fetched a batch at a time.

    ``__getitems__`` (which ``DataLoader`` calls with a batch's positions)
    returns one padded batch (:func:`~neqtune.datasets.augment.pad_batch`):
    one gather for an in-memory array, one read per image of the decoded
    cache, a decode and resize per image file (as the cache stores them).
    """

    def __init__(self, view: SplitView, image_size: int) -> None:
        self.view = view
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, position: int) -> RawBatch:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: Sequence[int]) -> list[RawBatch]:
        source = self.view.source
        indices = [self.view.indices[p] for p in positions]
        if isinstance(source, ArraySource):
            images, sizes = pad_batch(source.arrays(indices))
            labels = torch.as_tensor(source.labels[np.asarray(indices, dtype=np.int64)], dtype=torch.long)
            return [(images, sizes, labels)]
        if isinstance(source, DecodedImages):
            arrays, label_list = [source.array(i) for i in indices], [source.label(i) for i in indices]
        elif isinstance(source, FileSource):
            arrays, label_list = [decode_resized(source.paths[i], self.image_size) for i in indices], [source.labels[i] for i in indices]
        else:  # any other source (a HuggingFace folder) decodes its images itself
            loaded = [source.load(i) for i in indices]
            arrays, label_list = [resized_array(image, self.image_size) for image, _ in loaded], [label for _, label in loaded]
        images, sizes = pad_batch(arrays)
        return [(images, sizes, torch.tensor(label_list, dtype=torch.long))]


def _one_batch(batches: list[RawBatch]) -> RawBatch:
    """``collate_fn`` of :class:`RawView`: its ``__getitems__`` has already made the batch."""
    return batches[0]


class BatchedLoader:
    """Batches of a split augmented on the run's device: ``uint8`` batches in, normalised ``float32`` batches out."""

    def __init__(self, loader: DataLoader[RawBatch], transform: BatchTransform, device: torch.device, generator: torch.Generator | None) -> None:
        self.loader = loader
        self.transform = transform
        self.device = device
        self.generator = generator

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, sizes, labels in self.loader:
            on_device = images.to(self.device, non_blocking=True)
            yield self.transform(on_device, sizes.to(self.device, non_blocking=True), self.generator), labels


@dataclass(frozen=True)
class LoaderSettings:
    """What the loaders of one run share: the device, the trial's CPU threads, its generators.

    ``shuffle``: the host generator of the training order (and of the PIL
    path's per-sample seeds); ``augment``: the generator on ``device`` that
    the batched path draws its augmentation from.
    """

    device: torch.device
    cpus: int
    shuffle: torch.Generator
    augment: torch.Generator


def make_loader(split: Dataset[Any], config: DataConfig, settings: LoaderSettings, *, train: bool, batch_size: int | None = None) -> Batches:
    """Batches ``(images, labels)`` of ``split`` as ``config`` says: in training order (shuffled) when ``train``, else in order.

    Returns:
        A ``DataLoader`` (the PIL path, and data sets already made of
        tensors) or a :class:`BatchedLoader`; both have ``len`` and iterate
        over ``(float images, labels)`` batches.
    """
    size = batch_size or (config.batch_size if train else config.eval_batch_size)
    workers = loader_workers(config, split, settings.cpus)
    common: dict[str, Any] = {
        "num_workers": workers,
        # Only the training loader keeps its workers between epochs: the validation and test loaders start theirs for
        # each evaluation (a fork each), so a trial holds one set of loader processes, not three.
        "persistent_workers": workers > 0 and train,
        "pin_memory": settings.device.type == "cuda",
        # The loader draws a base seed for its workers each time it starts them, which persistent workers do once per
        # process: drawn from the shuffle generator, a resumed run would shuffle differently from one that never stopped. In
        # process (no workers) it draws from torch's global generator, as the study's loaders did, so their runs keep their numbers.
        "generator": torch.Generator().manual_seed(0) if workers > 0 else None,
    }
    if config.augment == "batched" and isinstance(split, SplitView):
        raw = RawView(split, config.image_size)
        sampler = RandomSampler(raw, generator=settings.shuffle) if train else None
        loader: DataLoader[RawBatch] = DataLoader(raw, batch_size=size, sampler=sampler, collate_fn=_one_batch, **common)
        transform = BatchTransform(config.image_size, train=train, square_resize=split.square_resize)
        return BatchedLoader(loader, transform, settings.device, settings.augment if train else None)
    if train and isinstance(split, SplitView):
        return DataLoader(split, batch_size=size, sampler=SeededSampler(len(split), settings.shuffle), **common)  # type: ignore[arg-type]
    if train and workers == 0:  # tensors already made (digits): the study's loader, so its runs keep their numbers
        return DataLoader(split, batch_size=size, shuffle=True, generator=settings.shuffle)
    sampler = RandomSampler(cast(Sized, split), generator=settings.shuffle) if train else None
    return DataLoader(split, batch_size=size, sampler=sampler, **common)
