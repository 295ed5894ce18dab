"""Training-input images/s of the input paths, beside the update step's, measured side by side in one run.

``python -m benchmarks.input_pipeline`` writes its own inputs into a
temporary directory: an **image folder** of real-size photos (500x375 JPEGs
with texture and noise, so they decode like photos; the ``flowers`` image-folder
layout), a **CIFAR-10** set in torchvision's pickled-batch format and a
**Visual Wake Words** layout (COCO-style annotations + 500x375 JPEGs). For
each it measures the images/s of the training input (normalised float
batches of 128 px, batch 32, ready for the step) at 1 and 2 CPUs:

- ``today``: the study's path: per sample through PIL in the trial's own
  process (``workers: 0``, ``cache: none``, ``augment: pil``);
- ``workers``: the same in loader processes (as many as the CPUs: what the
  loader alone can deliver; in a trial ``workers: auto`` leaves one CPU to
  the step);
- ``cache``: PIL transforms over the decoded cache (``cache: decoded``), in
  the trial's process at 1 CPU, in 2 workers at 2 CPUs;
- ``cache+batched``: the decoded cache, augmented a batch at a time
  (``augment: batched``) in the trial's process on 1 or 2 threads;
- ``batched`` (CIFAR only): in-memory arrays augmented a batch at a time.

Beside them: the update step's images/s for mbv2-w0.35 and mbv2 at 128 px,
batch 32 (full update, and the sparse engine under velocity masks at
scheme 3's budget) on 1 and 2 threads, and a whole training epoch of the
image folder with mbv2-w0.35 (today's path against the decoded cache). The
cache's one-time build is timed apart. Each figure is the median of
``--repeats`` timed passes (after one warm-up); rows and ratios go to
``docs/benchmarks/input_pipeline.md`` / ``.parquet``, targets stated as met
or missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmarks.report import table_lines, verdict, write_tables
from neqtune.datasets import build_dataset
from neqtune.datasets.config import DataConfig
from neqtune.datasets.pipeline import LoaderSettings, make_loader, with_decoded_cache
from neqtune.trainables.cpu import prepare_cpu

ROOT = Path(__file__).resolve().parent.parent
PHOTO_SIZE = (500, 375)  # width, height
BATCH = 32
MODELS = ("mbv2-w0.35", "mbv2")
TARGETS = {"cache_vs_today_1cpu": 4.0, "batched_vs_today_1cpu": 3.0, "input_vs_step_2cpu": 3.0}


# --- inputs -------------------------------------------------------------------


def photo(rng: np.random.Generator, label: int) -> Image.Image:
    """A 500x375 image that compresses and decodes like a photo: smooth shading, edges, and sensor-like noise."""
    width, height = PHOTO_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    centre = rng.uniform(0, 1, 2) * (width, height)
    radial = np.hypot(x - centre[0], y - centre[1])
    base = np.stack([(x * (1 + label) / 3) % 256, (y / 2 + radial / 4) % 256, (np.sin(radial / 17) * 60 + 128 + 20 * label)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_image_folder(root: Path, count: int, rng: np.random.Generator) -> Path:
    """``train/<class>/`` with ``count`` photos over 4 classes, and a small ``test/``."""
    for split, n in (("train", count), ("test", 8)):
        for i in range(n):
            label = i % 4
            path = root / split / f"class{label}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(rng, label).save(path, quality=90)
    return root


def write_cifar(root: Path, count: int, rng: np.random.Generator) -> Path:
    """torchvision's ``cifar-10-batches-py``: five training batches and a test batch of 32x32 images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per_batch = count // 5
    for name, n in [*((f"data_batch_{k}", per_batch) for k in range(1, 6)), ("test_batch", 100)]:
        labels = [int(v) for v in rng.integers(0, 10, n)]
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"c{k}".encode() for k in range(10)]}, handle)
    return root


def write_vww(root: Path, count: int, rng: np.random.Generator) -> Path:
    """``annotations/instances_{train,val}.json`` (VWW labels 0/1) and their JPEGs in ``all2014/``."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for file, split, ids in (("instances_train.json", "train", range(count)), ("instances_val.json", "val", range(10_000, 10_008))):
        images, annotations = [], []
        for image_id in ids:
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": name, "height": PHOTO_SIZE[1], "width": PHOTO_SIZE[0]})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": image_id % 2, "bbox": [], "area": 0.0, "iscrowd": 0})
            path = root / "all2014" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(rng, image_id % 2).save(path, quality=90)
        (root / "annotations" / file).write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 0}, {"id": 1}]}))
    return root


# --- timing -------------------------------------------------------------------


def images_per_second(loader: Any, batches: int) -> float:
    """Images/s of ``batches`` batches from a fresh pass over ``loader`` (the loader's start-up included once per pass)."""
    started = time.perf_counter()
    seen = 0
    for index, (images, labels) in enumerate(loader):
        assert images.dtype == torch.float32 and images.ndim == 4
        seen += int(labels.numel())
        if index + 1 >= batches:
            break
    return seen / (time.perf_counter() - started)


def median_rate(measure: Callable[[], float], repeats: int) -> float:
    measure()  # warm-up: page cache, worker start-up, allocator
    return statistics.median(measure() for _ in range(repeats))


def loader_for(config: DataConfig, cpus: int) -> Any:
    splits = build_dataset(config)
    if config.cache == "decoded":
        splits = with_decoded_cache(splits, config)
    settings = LoaderSettings(torch.device("cpu"), cpus, torch.Generator().manual_seed(0), torch.Generator().manual_seed(3))
    return make_loader(splits.train, config, settings, train=True)


@dataclasses.dataclass(frozen=True)
class InputPath:
    """One input path: what it changes in the data config, and its loader processes at 1 and at 2 CPUs."""

    changes: dict[str, str]
    workers: tuple[int, int] = (0, 0)


FILE_PATHS = {
    "today": InputPath({}),
    "workers": InputPath({}, (1, 2)),
    "cache": InputPath({"cache": "decoded"}, (0, 2)),
    "cache+batched": InputPath({"cache": "decoded", "augment": "batched"}),
}
ARRAY_PATHS = {"today": InputPath({}), "workers": InputPath({}, (1, 2)), "batched": InputPath({"augment": "batched"})}


def input_rows(name: str, base: DataConfig, paths: dict[str, InputPath], batches: int, repeats: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Images/s of every path over one data set, at 1 and at 2 CPUs."""
    rows = []
    for cpus in (1, 2):
        torch.set_num_threads(cpus)
        for path, spec in paths.items():
            workers = spec.workers[cpus - 1]
            config = dataclasses.replace(base, workers=workers, **spec.changes)  # type: ignore[arg-type]
            loader = loader_for(config, cpus)
            rate = median_rate(functools.partial(images_per_second, loader, batches), repeats)
            rows.append({"kind": "input", "data": name, "path": path, "cpus": cpus, "workers": workers, "images_per_s": rate})
            log(f"  {name} {path} at {cpus} CPU(s), {workers} workers: {rate:,.0f} images/s")
    return rows


def step_rows(models: list[str], image_size: int, repeats: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Images/s of a training step (full update; the engine under velocity masks at scheme 3's budget) at 128 px, batch 32."""
    from benchmarks.update_step.conditions import model_conditions
    from benchmarks.update_step.runners import build_runner
    from neqtune.trainables.config import ModelConfig
    from neqtune.trainables.models.registry import build_model

    rows = []
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(BATCH, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    for model_name in models:
        torch.manual_seed(0)
        start = build_model(ModelConfig(name=model_name), num_classes=10)
        chosen = [
            (c, m)
            for c, m in model_conditions(model_name, start, inputs, labels, seed=0)
            if c.path == "full" or (c.path == "engine" and c.policy == "velocity" and c.scheme.endswith("3"))
        ]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for condition, masks in chosen:
                runner = build_runner(condition, start, masks, inputs, labels)
                runner.step()
                seconds = statistics.median(runner.timed_step() for _ in range(repeats))
                label = "full" if condition.path == "full" else "engine (velocity, scheme 3)"
                rows.append({"kind": "step", "data": model_name, "path": label, "cpus": threads, "workers": 0, "images_per_s": BATCH / seconds})
                log(f"  step {model_name} {label} at {threads} thread(s): {BATCH / seconds:,.0f} images/s")
    return rows


def epoch_rows(folder: DataConfig, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """A whole training epoch of the image folder with mbv2-w0.35 at 128 px, 2 CPUs: today's path against the decoded cache."""
    from neqtune.trainables import TrialConfig
    from neqtune.trainables.trainer import BudgetedRun

    rows = []
    torch.set_num_threads(2)
    variants = {
        "today": {},
        "cache (workers auto)": {"cache": "decoded"},
        "cache+batched": {"cache": "decoded", "augment": "batched"},
    }
    for path, changes in variants.items():
        data = {**dataclasses.asdict(folder), "workers": "auto", **changes}
        config = TrialConfig.from_dict(
            {"data": data, "model": {"name": "mbv2-w0.35"}, "training": {"epochs": 3, "lr": 0.01, "device": "cpu"}, "budget": {"policy": "velocity", "scheme": "mbv2-w0.35_scheme_3"}}
        )
        run = BudgetedRun(config)
        times = []
        for _ in range(2):
            started = time.perf_counter()
            run.train_epoch()
            times.append(time.perf_counter() - started)
        seconds = min(times)
        rows.append({"kind": "epoch", "data": "image folder", "path": path, "cpus": 2, "workers": -1, "images_per_s": len(run.data.train) / seconds, "seconds": seconds})  # type: ignore[arg-type]
        log(f"  epoch of {len(run.data.train)} images, {path}: {seconds:.1f} s")  # type: ignore[arg-type]
    return rows


# --- report -------------------------------------------------------------------


def rate(table: pd.DataFrame, kind: str, data: str, path: str, cpus: int) -> float:
    row = table[(table.kind == kind) & (table.data == data) & (table.path == path) & (table.cpus == cpus)]
    return float(row.images_per_s.iloc[0])


def checks(table: pd.DataFrame) -> list[tuple[str, float, float]]:
    """``(target, measured, required)`` for each of the issue's targets."""
    folder_today = rate(table, "input", "image folder", "today", 1)
    fastest_cache = max(rate(table, "input", "image folder", p, 1) for p in ("cache", "cache+batched"))
    cifar_today = rate(table, "input", "cifar", "today", 1)
    cifar_batched = rate(table, "input", "cifar", "batched", 1)
    step = max(rate(table, "step", "mbv2-w0.35", p, 2) for p in ("full", "engine (velocity, scheme 3)"))
    input_2cpu = min(
        max(rate(table, "input", data, p, 2) for p in paths)
        for data, paths in (("image folder", ("cache", "cache+batched")), ("cifar", ("batched",)), ("vww", ("cache", "cache+batched")))
    )
    epochs = table[table.kind == "epoch"].set_index("path").seconds
    return [
        ("image folder, decoded cache vs today, 1 CPU (x)", fastest_cache / folder_today, TARGETS["cache_vs_today_1cpu"]),
        ("CIFAR arrays, batched augmentation vs today, 1 CPU (x)", cifar_batched / cifar_today, TARGETS["batched_vs_today_1cpu"]),
        ("slowest data set's best new input at 2 CPUs vs the fastest mbv2-w0.35 step at 2 threads (x)", input_2cpu / step, TARGETS["input_vs_step_2cpu"]),
        ("image-folder epoch, today / decoded cache (x faster)", float(epochs["today"] / epochs[["cache (workers auto)", "cache+batched"]].min()), 1.0),
    ]


def markdown(table: pd.DataFrame, build: dict[str, float], command: str, image_size: int) -> str:
    lines = [
        "# Input pipeline: training-input images/s beside the update step",
        "",
        f"`{command}` on {os.cpu_count()} CPUs ({platform_line()}); {image_size} px, batch 32; medians of the timed passes.",
        "Inputs written by the benchmark: an image folder of 500x375 JPEGs, a CIFAR-10 pickled-batch set (32x32, resized to 128 px),",
        "a VWW layout (500x375 JPEGs, square resize). `workers` at 1 CPU: one loader process; at 2 CPUs: two.",
        "",
    ]
    rows = [
        (row.kind, row.data, row.path, row.cpus, "auto" if row.workers == -1 else row.workers, f"{row.images_per_s:,.0f}")
        for row in table.itertuples()
    ]
    lines += table_lines(["kind", "data", "path", "CPUs", "workers", "images/s"], rows)
    lines += ["", "Decoded-cache builds (once per node and data set): " + ", ".join(f"{k} {v:.1f} s" for k, v in build.items()), ""]
    targets = [(name, f"{measured:.2f}", f">= {required:g}", verdict(measured >= required)) for name, measured, required in checks(table)]
    lines += table_lines(["target", "measured", "required", ""], targets)
    return "\n".join(lines) + "\n"


def platform_line() -> str:
    import platform

    return f"{platform.processor() or platform.machine()}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=320, help="JPEGs in the image folder and the VWW layout (default 320)")
    parser.add_argument("--batches", type=int, default=8, help="batches per timed pass (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per figure (default 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks", help="where input_pipeline.md / .parquet go")
    parser.add_argument("--image-size", type=int, default=128, help="training resolution in pixels (default 128)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"models of the step figures (default {' '.join(MODELS)})")
    parser.add_argument("--quick", action="store_true", help="toy sizes (40 photos, one pass): a check that it runs, not figures; writes input_pipeline_quick.*")
    args = parser.parse_args(argv)
    if args.quick:
        args.photos, args.batches, args.repeats = 40, 1, 1
    prepare_cpu()
    log = print
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="neqtune-input-") as tmp:
        work = Path(tmp)
        os.environ["NEQ_CACHE"] = str(work / "cache")
        rng = np.random.default_rng(0)
        log(f"writing inputs under {work} ...")
        folder = DataConfig(name="flowers", root=str(write_image_folder(work / "folder", args.photos, rng)), image_size=args.image_size, batch_size=BATCH, velocity_images=4)
        cifar = DataConfig(name="c10", root=str(write_cifar(work / "cifar", max(args.photos * 5, 500), rng)), image_size=args.image_size, batch_size=BATCH)
        vww = DataConfig(name="vww", root=str(write_vww(work / "vww", args.photos, rng)), image_size=args.image_size, batch_size=BATCH, velocity_images=4)
        build = {}
        for name, config in (("image folder", folder), ("vww", vww)):
            begun = time.perf_counter()
            with_decoded_cache(build_dataset(config), dataclasses.replace(config, cache="decoded"))
            build[name] = time.perf_counter() - begun
            log(f"decoded cache of the {name} built in {build[name]:.1f} s")
        rows = input_rows("image folder", folder, FILE_PATHS, args.batches, args.repeats, log)
        rows += input_rows("vww", vww, FILE_PATHS, args.batches, args.repeats, log)
        rows += input_rows("cifar", cifar, ARRAY_PATHS, args.batches, args.repeats, log)
        rows += step_rows(args.models, args.image_size, max(args.repeats, 3), log)
        rows += epoch_rows(folder, log)
    table = pd.DataFrame(rows)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m benchmarks.input_pipeline", *given])
    text = markdown(table, build, command, args.image_size) + f"\nWall time: {(time.perf_counter() - started) / 60:.1f} min.\n"
    name = "input_pipeline_quick" if args.quick else "input_pipeline"
    write_tables(args.out, name, table, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
