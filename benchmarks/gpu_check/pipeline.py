"""Section ``pipeline``: images per second the input pipeline delivers to the device, against the engine step's."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from benchmarks.gpu_check.section import CheckContext, SectionOutput, Table, Variant, synchronize
from benchmarks.gpu_check.update_step import REFERENCE_STEP, STEP_SCHEME, remember_reference_steps, step_rows
from neqtune.datasets import build_dataset
from neqtune.datasets.cache import ENV_VAR as CACHE_ENV_VAR
from neqtune.datasets.config import DataConfig
from neqtune.datasets.pipeline import LoaderSettings, loader_workers, make_loader, with_decoded_cache
from neqtune.datasets.samples import ArraySource, SplitSettings, official_splits

AUGMENTS: tuple[Literal["pil", "batched"], ...] = ("pil", "batched")
CACHES: tuple[Literal["none", "decoded"], ...] = ("none", "decoded")


def synthetic_arrays(count: int, seed: int = 0) -> tuple[ArraySource, ArraySource]:
    """CIFAR-like train and test sources: ``uint8`` images ``[N, 32, 32, 3]`` (smooth colour fields plus noise), 10 classes."""
    rng = np.random.default_rng(seed)

    def source(n: int) -> ArraySource:
        ramp = np.linspace(0, 1, 32, dtype=np.float32)
        base = rng.uniform(0, 255, (n, 1, 1, 3)).astype(np.float32) * ramp[None, :, None, None]
        images = np.clip(base + rng.normal(0, 30, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        return ArraySource(images, (np.arange(n) % 10).astype(np.int64))

    return source(count), source(max(10, count // 10))


def write_jpeg_folder(root: Path, count: int, classes: int = 4, seed: int = 0) -> Path:
    """An image folder ``root/{train,test}/<class>/<n>.jpg`` of ``count`` 500x375 JPEGs (one test image in five).

    Each image is a structured scene (stripes of a random frequency and
    angle over a colour gradient, plus a little noise), so it compresses
    and decodes like a photograph rather than like noise.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    for index in range(count):
        split = "test" if index % 5 == 4 else "train"
        folder = root / split / f"class_{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        angle, frequency = rng.uniform(0, math.pi), rng.uniform(0.01, 0.08)
        stripes = np.sin(frequency * (x * math.cos(angle) + y * math.sin(angle)))
        colour = rng.uniform(40, 215, 3)
        image = colour * (0.6 + 0.4 * (x / 500.0))[..., None] + 40 * stripes[..., None] + rng.normal(0, 6, (375, 500, 1))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{index}.jpg", quality=90)
    return root


def delivered_images_per_s(split: Any, config: DataConfig, device: torch.device, batches: int) -> dict[str, Any]:
    """Images per second that ``make_loader`` delivers on ``device`` (augmented, on the device, synchronised).

    Two batches first untimed (the loader's workers starting), then
    ``batches`` timed ones, going round the split's epochs as a trial does.
    """
    cpus = os.cpu_count() or 1
    settings = LoaderSettings(device, cpus, torch.Generator().manual_seed(0), torch.Generator(device).manual_seed(0))
    loader = make_loader(split, config, settings, train=True)

    def endless() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from loader

    warmup, delivered, started = 2, 0, 0.0
    for index, (images, labels) in enumerate(endless()):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if index == warmup:
            synchronize(device)
            started = time.perf_counter()
        if index >= warmup:
            delivered += int(images.shape[0])
        if index + 1 == warmup + batches:
            break
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"workers": loader_workers(config, split, cpus), "images/s": delivered / seconds}


@contextlib.contextmanager
def cache_directory(path: Path) -> Iterator[None]:
    """``$NEQ_CACHE`` set to ``path`` while inside (the decoded cache is written there, not into the user's cache)."""
    previous = os.environ.get(CACHE_ENV_VAR)
    os.environ[CACHE_ENV_VAR] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CACHE_ENV_VAR, None)
        else:
            os.environ[CACHE_ENV_VAR] = previous


def reference_step_rates(context: CheckContext) -> dict[str, float]:
    """The reference step's images/s per variant: from the update-step section, or measured now in fp32 alone."""
    rates: dict[str, float] = context.figures.get("reference_step_images_per_s", {})
    if not rates:
        context.log("  (no update-step figures: timing the mbv2-w0.35 step in fp32 first)")
        remember_reference_steps(context, step_rows(REFERENCE_STEP[0], [Variant("fp32")], context.sizes, context.device, context.log))
        rates = context.figures["reference_step_images_per_s"]
    return rates


def input_pipeline(context: CheckContext) -> SectionOutput:
    """Section 4: images/s the input pipeline delivers to the device, against the engine step's."""
    sizes, device = context.sizes, context.device
    size, batch = sizes.step_image_size, sizes.step_batch
    steps = reference_step_rates(context)
    fp32_step = steps.get("fp32", math.nan)
    fastest_variant = max(steps, key=lambda v: steps[v]) if steps else "-"
    fastest = steps.get(fastest_variant, math.nan)
    columns = ["source", "cache", "augment", "workers", "images/s", "vs fp32 step", "vs fastest step"]
    table = Table(f"train loader at {size} px, batch {batch}, {sizes.pipeline_batches} timed batches", columns)
    output = SectionOutput([table])

    def measure(source: str, cache: str, split: Any, config: DataConfig) -> None:
        figures = delivered_images_per_s(split, config, device, sizes.pipeline_batches)
        rate = figures["images/s"]
        row = {
            "source": source,
            "cache": cache,
            "augment": config.augment,
            **figures,
            "vs fp32 step": rate / fp32_step,
            "vs fastest step": rate / fastest,
        }
        table.rows.append(row)
        context.log(f"  {source} cache {cache}, augment {config.augment}: {rate:,.0f} images/s ({row['vs fp32 step']:.2f} x the fp32 step)")

    train_source, test_source = synthetic_arrays(sizes.array_images)
    settings = SplitSettings(image_size=size, velocity_images=10, val_fraction=0.1, split_seed=0)
    arrays = official_splits(train_source, test_source, [str(c) for c in range(10)], settings)
    for augment in AUGMENTS:
        config = DataConfig(name="c10", image_size=size, batch_size=batch, augment=augment)
        measure(f"arrays {sizes.array_images} x 32x32", "-", arrays.train, config)
    with tempfile.TemporaryDirectory(prefix="neqtune-gpu-check-") as tmp:
        root = write_jpeg_folder(Path(tmp) / "images", sizes.jpeg_images)
        with cache_directory(Path(tmp) / "cache"):
            for cache in CACHES:
                base = DataConfig(name="flowers", root=str(root), image_size=size, batch_size=batch, cache=cache)
                splits = build_dataset(base)
                if cache == "decoded":
                    started = time.perf_counter()
                    splits = with_decoded_cache(splits, base)
                    output.notes.append(
                        f"Building the decoded cache of {sizes.jpeg_images} JPEGs took {time.perf_counter() - started:.2f} s (once per node)."
                    )
                for augment in AUGMENTS:
                    measure(f"JPEG folder {sizes.jpeg_images} x 500x375", cache, splits.train, dataclasses.replace(base, augment=augment))
    output.notes.append(
        f"Step: {REFERENCE_STEP[0]} {REFERENCE_STEP[1]} path, {REFERENCE_STEP[2]} masks at scheme {STEP_SCHEME}: "
        f"{fp32_step:,.0f} images/s in fp32, {fastest:,.0f} in {fastest_variant}. "
        "A ratio of at least 1: the loader keeps up with the step (input does not bound it); below 1 the GPU waits for input. "
        f"Workers are data.workers auto on this node's {os.cpu_count()} CPUs (as a trial with all of them would get)."
    )
    return output
