"""Section ``update_step``: the step times of the update-step benchmark's paths per precision and layout, on the device
(its runners and seeded round order, each step under autocast and timed between two device synchronisations)."""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.gpu_check.section import CheckContext, Log, SectionOutput, Sizes, Table, Variant, ratio, synchronize
from benchmarks.update_step.conditions import NUM_CLASSES, model_conditions
from benchmarks.update_step.config import BenchConfig
from benchmarks.update_step.runners import Runner, build_runner, time_rounds
from neqtune.trainables.config import ModelConfig
from neqtune.trainables.models.registry import build_model
from neqtune.trainables.update.precision import MixedPrecision

STEP_SCHEME = "1"
"""The budget scheme of the update-step conditions (update_step's label)."""
STEP_PATHS = ("full", "bound", "masked", "engine")
REFERENCE_STEP = ("mbv2-w0.35", "engine", "velocity")
"""The step the input pipeline is compared with: model, path, policy."""

STEP_VARIANTS = (
    Variant("fp32"),
    Variant("fp32", channels_last=True),
    Variant("bf16"),
    Variant("bf16", channels_last=True),
    Variant("fp16"),
)


@dataclass
class DeviceRunner(Runner):
    """An update-step runner whose step runs under the run's precision and is timed between device synchronisations."""

    precision: MixedPrecision | None = None

    def step(self) -> None:
        """One training step as the trainer takes it: autocast forward and loss, (scaled) backward, optimizer step."""
        precision = self.precision or MixedPrecision("fp32", self.inputs.device)
        self.optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = F.cross_entropy(self.model(self.inputs), self.labels)
        precision.backward(loss, self.optimizer)
        precision.step(self.optimizer)

    def timed_step(self) -> float:
        """:meth:`step`, with the device's queue empty before and after; seconds."""
        synchronize(self.inputs.device)
        started = time.perf_counter()
        self.step()
        synchronize(self.inputs.device)
        return time.perf_counter() - started


def device_runner(runner: Runner, precision: MixedPrecision) -> DeviceRunner:
    """``runner`` (from :func:`~benchmarks.update_step.build_runner`) stepping under ``precision``."""
    fields = {f.name: getattr(runner, f.name) for f in dataclasses.fields(Runner)}
    return DeviceRunner(**fields, precision=precision)


def step_rows(model_name: str, variants: Sequence[Variant], sizes: Sizes, device: torch.device, log: Log) -> list[dict[str, Any]]:
    """Median step time of every update-step condition of ``model_name`` (paths :data:`STEP_PATHS`, scheme 1), per variant."""
    torch.manual_seed(0)
    start = build_model(ModelConfig(name=model_name), NUM_CLASSES).to(device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(sizes.step_batch, 3, sizes.step_image_size, sizes.step_image_size, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (sizes.step_batch,), generator=generator).to(device)
    conditions = [
        (c, m)
        for c, m in model_conditions(model_name, start, inputs, labels, seed=0)
        if c.path in STEP_PATHS and c.scheme in ("-", STEP_SCHEME)
    ]
    rounds = BenchConfig(warmup=sizes.step_warmup, repeats=sizes.step_repeats)
    rows: list[dict[str, Any]] = []
    for variant in variants:
        layout = torch.channels_last if variant.channels_last else torch.contiguous_format
        variant_start = copy.deepcopy(start).to(memory_format=layout)
        variant_inputs = inputs.contiguous(memory_format=layout)
        runners = [
            device_runner(build_runner(c, variant_start, m, variant_inputs, labels), MixedPrecision(variant.precision, device))
            for c, m in conditions
        ]
        time_rounds(runners, rounds, generator, log=lambda line: None)
        full = next(statistics.median(r.times) for r in runners if r.condition.path == "full")
        for runner in runners:
            median = statistics.median(runner.times)
            rows.append(
                {
                    "model": model_name,
                    "variant": variant.label,
                    "path": runner.condition.path,
                    "policy": runner.condition.policy,
                    "ms per step": 1e3 * median,
                    "images/s": sizes.step_batch / median,
                    "vs full": median / full,
                }
            )
        engine = [row["ms per step"] for row in rows[-len(runners) :] if (row["path"], row["policy"]) == REFERENCE_STEP[1:]]
        log(
            f"  {model_name} {variant.label}: full {1e3 * full:.1f} ms, engine (velocity) {engine[0] if engine else math.nan:.1f} ms per step"
        )
        del runners, variant_start
        if device.type == "cuda":
            torch.cuda.empty_cache()
    fp32 = {(r["path"], r["policy"]): r["ms per step"] for r in rows if r["variant"] == "fp32"}
    for row in rows:
        row["vs fp32"] = ratio(row["ms per step"], fp32.get((row["path"], row["policy"]), math.nan))
    return rows


def remember_reference_steps(context: CheckContext, rows: Sequence[Mapping[str, Any]]) -> None:
    """Keep the images/s of the reference step (:data:`REFERENCE_STEP`) per variant, for the pipeline section."""
    reference = {r["variant"]: r["images/s"] for r in rows if (r["model"], r["path"], r["policy"]) == REFERENCE_STEP}
    context.figures.setdefault("reference_step_images_per_s", {}).update(reference)


def update_steps(context: CheckContext) -> SectionOutput:
    """Section 3: step times of the update paths per precision and layout, on the device."""
    sizes = context.sizes
    columns = ["model", "variant", "path", "policy", "ms per step", "images/s", "vs full", "vs fp32"]
    title = (
        f"{sizes.step_image_size} px, batch {sizes.step_batch}, scheme {STEP_SCHEME} masks, "
        f"{sizes.step_warmup} warm-up + {sizes.step_repeats} timed rounds; medians"
    )
    table = Table(title, columns)
    for model_name in sizes.step_models:
        rows = step_rows(model_name, STEP_VARIANTS, sizes, context.device, context.log)
        remember_reference_steps(context, rows)
        table.rows += rows
    note = (
        "Conditions and masks are benchmarks/update_step/conditions.py's (velocity masks from two real SGD steps, random and SU masks seeded); "
        "every step runs as the trainer's does (autocast, fp16's gradient scaler) between two device synchronisations, "
        "in a fresh seeded order of the conditions every round. `vs full`: against the full update of the same variant; "
        "`vs fp32`: against the same condition in fp32."
    )
    return SectionOutput([table], [note])
