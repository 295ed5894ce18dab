"""One command that checks neqtune on a GPU and writes what it found: ``python -m benchmarks.gpu_check``.

Meant to take under five minutes on one GPU (an H200); without a CUDA device it prints one
line and exits 0, writing nothing. Every section is timed and guarded: one
that raises, or whose check does not hold, is reported as FAILED with its
error and makes the exit code 1, and the others still run. Sections
(``--sections`` picks some):

- ``engine``: the sparse-update engine computes on CUDA, in float64, the
  conv weight gradients of the masked path (an ordinary model, full
  backward, the frozen rows or columns zeroed): for ``mbv2-w0.35`` and
  ``resnet18``, every registered selection policy and each unit it selects
  (its real first mask, from a :class:`~neqtune.trainables.trainer.BudgetedRun` on
  digits, where one builds; else a seeded mask), plus a seeded mask per unit
  that leaves every conv frozen, few, most or all of its channels. Holds
  when the updated part differs by less than :data:`TOLERANCE`, the frozen
  part is exactly 0 and every other parameter's gradient agrees as well.
- ``precision``: a 3-epoch digits trial per ``training.precision`` (and bf16
  in channels-last layout): final validation top-1, test top-1 at the best
  validation epoch, median epoch time. Fails on a non-finite loss.
- ``update_step``: the step times of :mod:`benchmarks.update_step` (paths
  full, bound, masked and engine at scheme 1) per precision and layout, on
  the GPU: the same runners and seeded round order, each step under autocast
  (:class:`~neqtune.trainables.update.precision.MixedPrecision`) and timed between two
  device synchronisations.
- ``pipeline``: images per second the input pipeline delivers to the GPU
  (batch on the device, augmented, synchronised): in-memory ``uint8``
  arrays (CIFAR-like) with ``data.augment`` pil and batched, and a folder
  of 500x375 JPEGs with ``data.cache`` none and decoded; each against the
  ``mbv2-w0.35`` engine step's images per second (at least 1: the input
  does not bound the step).
- ``search``: a real small search (digits, 8 trials of 3 epochs) run twice
  through :func:`neqtune.search.experiment.run_search`, one trial per GPU and four
  sharing it; trials per hour of each and their ratio.

The report goes to ``docs/benchmarks/gpu_check.md`` (``--out``), its raw
figures to the ``.json`` beside it; ``--quick`` runs every section at toy
sizes (into ``gpu_check_quick.md`` unless ``--out`` says otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmarks.report import write_atomically
from benchmarks.update_step.conditions import NUM_CLASSES, model_conditions
from benchmarks.update_step.config import BenchConfig
from benchmarks.update_step.mask_summary import conv_counts
from benchmarks.update_step.runners import Runner, build_runner, time_rounds
from neqtune.datasets import build_dataset
from neqtune.datasets.cache import ENV_VAR as CACHE_ENV_VAR
from neqtune.datasets.config import DataConfig
from neqtune.datasets.pipeline import LoaderSettings, loader_workers, make_loader, with_decoded_cache
from neqtune.datasets.samples import ArraySource, SplitSettings, official_splits
from neqtune.search.cli import shutdown_ray
from neqtune.search.experiment import run_search
from neqtune.search.space import build_space
from neqtune.trainables.budget.units import UNITS, Layer, Masks, Unit, budgeted_layers, frozen_weight_elements, unit_length
from neqtune.trainables.config import ModelConfig, TrialConfig
from neqtune.trainables.models.registry import build_model
from neqtune.trainables.policies.base import get_policy, policy_names
from neqtune.trainables.trainer import BudgetedRun, train
from neqtune.trainables.update.engine import SparseUpdateEngine
from neqtune.trainables.update.precision import MixedPrecision, Precision

NO_CUDA_MESSAGE = "neqtune gpu_check: no CUDA device here; nothing checked (run it on a machine with a GPU)"
TOLERANCE = 1e-9
"""Largest absolute difference allowed between the engine's float64 gradients and the masked path's."""
GIB = 2**30
STEP_SCHEME = "1"
"""The budget scheme of the update-step conditions (update_step's label)."""
STEP_PATHS = ("full", "bound", "masked", "engine")
REFERENCE_STEP = ("mbv2-w0.35", "engine", "velocity")
"""The step the input pipeline is compared with: model, path, policy."""
AUGMENTS: tuple[Literal["pil", "batched"], ...] = ("pil", "batched")
CACHES: tuple[Literal["none", "decoded"], ...] = ("none", "decoded")

Log = Callable[[str], None]
Status = Literal["PASSED", "MEASURED", "FAILED"]


@dataclass(frozen=True)
class Variant:
    """A numeric precision and a memory layout of the forward and backward."""

    precision: Precision
    channels_last: bool = False

    @property
    def label(self) -> str:
        """``bf16``, ``bf16 + channels_last``, ..."""
        return self.precision + (" + channels_last" if self.channels_last else "")


TRIAL_VARIANTS = (Variant("fp32"), Variant("bf16"), Variant("fp16"), Variant("bf16", channels_last=True))
STEP_VARIANTS = (
    Variant("fp32"),
    Variant("fp32", channels_last=True),
    Variant("bf16"),
    Variant("bf16", channels_last=True),
    Variant("fp16"),
)


@dataclass(frozen=True)
class Sizes:
    """How much each section does; :data:`QUICK` is the toy version."""

    engine_models: tuple[str, ...] = ("mbv2-w0.35", "resnet18", "vit")
    engine_image_size: int = 32
    engine_batch: int = 4
    trial_image_size: int = 32
    trial_epochs: int = 3
    step_models: tuple[str, ...] = ("mbv2-w0.35", "mbv2", "resnet18")
    step_image_size: int = 128
    step_batch: int = 32
    step_warmup: int = 3
    step_repeats: int = 10
    pipeline_batches: int = 40
    array_images: int = 5000
    jpeg_images: int = 200
    search_trials: int = 8
    search_epochs: int = 3


QUICK = Sizes(
    engine_image_size=16,
    engine_batch=2,
    trial_image_size=16,
    trial_epochs=1,
    step_models=("mbv2-w0.35",),
    step_image_size=32,
    step_batch=4,
    step_warmup=1,
    step_repeats=2,
    pipeline_batches=4,
    array_images=400,
    jpeg_images=40,
    search_trials=4,
    search_epochs=1,
)


# --- results and their report ----------------------------------------------------


@dataclass
class Table:
    """Rows of figures under a title; ``columns`` are the keys shown, in order."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SectionOutput:
    """What a section found: tables, notes, and the checks that did not hold (empty: all held)."""

    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class CheckContext:
    """What every section gets: the sizes, the device, where progress goes, figures shared between sections."""

    sizes: Sizes
    device: torch.device
    log: Log = print
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Section:
    """One section of the check: its title, what it checks, whether it has a pass criterion, and the function."""

    title: str
    checks: str
    run: Callable[[CheckContext], SectionOutput]
    has_criterion: bool = False


@dataclass
class SectionResult:
    """A section as run: its status, wall time, output and, if it raised or a check failed, the error."""

    key: str
    title: str
    checks: str
    status: Status
    seconds: float
    output: SectionOutput
    error: str | None = None


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN where the denominator is 0 or NaN."""
    if denominator == 0 or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def trials_per_hour(trials: int, seconds: float) -> float:
    """Throughput of a search: ``trials`` finished in ``seconds`` of wall time, per hour; NaN without time."""
    return ratio(3600.0 * trials, seconds)


def search_cpus_per_trial(cpus: int, trials_at_once: int = 4) -> int:
    """CPUs for each search trial: the node's share of ``trials_at_once`` trials, 1 or 2."""
    return max(1, min(2, cpus // trials_at_once))


def format_cell(value: object) -> str:
    """A table cell: ``-`` for None and NaN, yes/no for booleans, about three significant digits for floats."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0:
            return "0"
        if abs(value) < 1e-3:
            return f"{value:.1e}"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def markdown_table(table: Table) -> list[str]:
    """The table as Markdown lines: its title, header, rows (a missing key shows as ``-``)."""
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(format_cell(row.get(column)) for column in table.columns) + " |" for row in table.rows]
    return lines


def render_markdown(header: Mapping[str, str], results: Sequence[SectionResult]) -> str:
    """The whole report: the machine, a summary line per section, then each section's tables and notes."""
    lines = ["# GPU check", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "| section | status | seconds |", "|---|---|---|"]
    lines += [f"| {r.title} | {r.status} | {r.seconds:.1f} |" for r in results]
    for result in results:
        lines += ["", f"## {result.title}: {result.status} ({result.seconds:.1f} s)", "", result.checks]
        if result.error:
            lines += ["", "Error:", "", "```", result.error.rstrip(), "```"]
        for table in result.output.tables:
            lines += ["", *markdown_table(table)]
        if result.output.notes:
            lines += ["", *[f"- {note}" for note in result.output.notes]]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """``value`` as JSON has it: NaN and infinities as null, tuples as lists, other objects as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def report_figures(header: Mapping[str, str], results: Sequence[SectionResult]) -> dict[str, Any]:
    """The raw figures of the report, for the ``.json`` beside it."""
    figures: dict[str, Any] = _plain({"header": dict(header), "sections": [dataclasses.asdict(r) for r in results]})
    return figures


def write_report(out: Path, header: Mapping[str, str], results: Sequence[SectionResult]) -> Path:
    """``out`` (Markdown) and the ``.json`` beside it, each written atomically; returns the JSON's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = out.with_suffix(".json")
    write_atomically(out, lambda p: p.write_text(render_markdown(header, results)))
    write_atomically(figures, lambda p: p.write_text(json.dumps(report_figures(header, results), indent=1) + "\n"))
    return figures


def run_section(key: str, section: Section, context: CheckContext) -> SectionResult:
    """Run one section, timed; an exception or a failed check makes it FAILED (the error kept), never propagates."""
    context.log(f"[{key}] {section.title}")
    started = time.perf_counter()
    try:
        output = section.run(context)
        error = "\n".join(output.failures) or None
    except Exception:
        output, error = SectionOutput(), traceback.format_exc()
    finally:
        if context.device.type == "cuda":
            torch.cuda.empty_cache()
    seconds = time.perf_counter() - started
    status: Status = "FAILED" if error else "PASSED" if section.has_criterion else "MEASURED"
    context.log(f"[{key}] {status} in {seconds:.1f} s" + (f": {error.strip().splitlines()[-1]}" if error else ""))
    return SectionResult(key, section.title, section.checks, status, seconds, output, error)


def run_checks(sections: Mapping[str, Section], keys: Sequence[str], context: CheckContext) -> list[SectionResult]:
    """The sections ``keys`` of ``sections``, in that order, each guarded by :func:`run_section`."""
    return [run_section(key, sections[key], context) for key in keys]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- 1. engine exactness -----------------------------------------------------------


def updated_elements(layer: Layer, mask: torch.Tensor, unit: Unit) -> torch.Tensor:
    """Which elements of a budgeted layer's weight (a conv's or a Linear's) a mask updates, as a bool tensor of its shape.

    ``neuron``: the rows ``W[o]`` of the True output channels or features.
    ``input_channel``: the elements that read a True input channel or
    feature; a grouped conv's ``W[o, j]`` reads channel
    ``(o // (C_out / g)) * (C_in / g) + j`` (for a depthwise conv, ``W[c]`` is
    channel c's). :func:`~neqtune.trainables.budget.units.frozen_weight_elements`, negated.
    """
    return ~frozen_weight_elements(layer, mask.to(dtype=torch.bool), unit).to(layer.weight.device)


def mixed_masks(model: nn.Module, unit: Unit, seed: int) -> Masks:
    """Seeded masks that take every path of the engine: layer by layer (convs and Linears), none, few, most or all of its units updated."""
    generator = torch.Generator().manual_seed(seed)
    masks: Masks = {}
    for index, (name, layer) in enumerate(budgeted_layers(model).items()):
        channels = unit_length(layer, unit)
        few = max(1, channels // 8)
        count = {0: 0, 1: few, 2: max(few, channels - few), 3: channels}[index % 4]
        mask = torch.zeros(channels, dtype=torch.bool)
        mask[torch.randperm(channels, generator=generator)[:count]] = True
        masks[name] = mask
    return masks


def _gradients(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward and backward in train mode; every parameter's gradient (zeros where autograd computed none)."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(100)  # the same dropout in both paths
    F.cross_entropy(model(inputs), labels).backward()
    return {name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for name, p in model.named_parameters()}


def _max_abs(tensor: torch.Tensor) -> float:
    return float(tensor.abs().max()) if tensor.numel() else 0.0


def compare_gradients(start: nn.Module, masks: Masks, unit: Unit, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The engine's gradients against the masked path's on one batch, from the weights of ``start`` (not changed).

    Returns:
        ``updated_diff``: the largest absolute difference over the updated
        elements of every budgeted layer's weight gradient (convs and Linears); ``updated_scale``: the largest
        absolute value there (of the masked path); ``frozen_max``: the
        largest absolute value of the engine's gradient over the frozen
        elements (0 expected); ``other_diff``: the largest difference over
        every parameter that is not a conv's (normalisation, classifier).
    """
    engine_model, reference = copy.deepcopy(start), copy.deepcopy(start)
    engine = SparseUpdateEngine(engine_model, bn_update="all", sparse=True, unit=unit)
    engine.set_masks(masks)
    ours = _gradients(engine_model, inputs, labels)
    engine.remove()
    theirs = _gradients(reference, inputs, labels)
    updated_diff = updated_scale = frozen_max = 0.0
    conv_params: set[str] = set()
    for name, conv in budgeted_layers(start).items():
        prefix = f"{name}." if name else ""
        key = f"{prefix}weight"
        conv_params |= {key, f"{prefix}bias"}
        updated = updated_elements(conv, masks[name], unit)
        masked_path = theirs[key] * updated  # the study's path: full backward, frozen elements zeroed
        updated_diff = max(updated_diff, _max_abs((ours[key] - masked_path)[updated]))
        updated_scale = max(updated_scale, _max_abs(masked_path[updated]))
        frozen_max = max(frozen_max, _max_abs(ours[key][~updated]))
    others = [name for name in ours if name not in conv_params]
    other_diff = max((_max_abs(ours[name] - theirs[name]) for name in others), default=0.0)
    return {"updated_diff": updated_diff, "updated_scale": updated_scale, "frozen_max": frozen_max, "other_diff": other_diff}


def policy_trial(model_name: str, policy: str, unit: Unit, image_size: int, device: torch.device) -> dict[str, Any]:
    """A one-epoch digits trial of ``policy`` on ``model_name``, for its first masks."""
    budget: dict[str, Any] = {"policy": policy, "unit": unit, "initialization": "random"}
    if model_name == "mbv2-w0.35":
        budget["scheme"] = "mbv2-w0.35_scheme_3"  # the study's SU mask and budgets for this model
    else:
        budget["ratio"] = 0.2
    return {
        "data": {"name": "digits", "image_size": image_size, "batch_size": 64},
        "model": {"name": model_name},
        "training": {"epochs": 1, "lr": 0.05, "momentum": 0.9, "device": str(device)},
        "budget": budget,
    }


def first_masks(model_name: str, policy: str, unit: Unit, context: CheckContext) -> tuple[Masks | None, str]:
    """The policy's first masks from a real run on digits; None and the reason where the run cannot be built."""
    try:
        run = BudgetedRun(TrialConfig.from_dict(policy_trial(model_name, policy, unit, context.sizes.engine_image_size, context.device)))
    except Exception as err:  # e.g. no SU mask for resnet18: the engine is still checked, on seeded masks
        return None, f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
    masks = {name: mask.detach().cpu().clone() for name, mask in run.masks.items()}
    del run
    return masks, "policy's first mask"


def mask_description(masks: Masks) -> dict[str, Any]:
    """How much the masks update: convs fully, partly or not at all, and the share of units."""
    counts = conv_counts(masks)
    units = sum(m.numel() for m in masks.values())
    return {
        "convs full/partial/frozen": f"{counts['convs_full']}/{counts['convs_partial']}/{counts['convs_frozen']}",
        "units updated %": 100.0 * sum(int(m.sum()) for m in masks.values()) / units,
    }


def engine_exactness(context: CheckContext) -> SectionOutput:
    """Section 1: the engine's float64 gradients on the device against the masked path's, per model, policy and unit."""
    sizes, device = context.sizes, context.device
    output = SectionOutput()
    columns = [
        "policy",
        "unit",
        "masks",
        "convs full/partial/frozen",
        "units updated %",
        "max |Δ| updated",
        "max |g| updated",
        "relative Δ",
        "max |g| frozen",
        "max |Δ| other",
        "holds",
    ]
    for model_name in sizes.engine_models:
        torch.manual_seed(0)
        start = build_model(ModelConfig(name=model_name), NUM_CLASSES).to(device=device, dtype=torch.float64)
        generator = torch.Generator().manual_seed(1)
        size = sizes.engine_image_size
        inputs = torch.randn(sizes.engine_batch, 3, size, size, generator=generator, dtype=torch.float64).to(device)
        labels = (torch.arange(sizes.engine_batch) % NUM_CLASSES).to(device)
        table = Table(f"{model_name}, {size} px, batch {sizes.engine_batch}, float64 on {device.type}", columns)
        cases: list[tuple[str, Unit, Masks, str]] = []
        for policy in policy_names():
            for unit in get_policy(policy).units:
                masks, source = first_masks(model_name, policy, unit, context)
                if masks is None:
                    output.notes.append(
                        f"{model_name} {policy}/{unit}: no run of the policy could be built ({source}); checked on seeded masks."
                    )
                    masks, source = mixed_masks(start, unit, seed=len(cases)), "seeded (no run, see notes)"
                cases.append((policy, unit, masks, source))
        cases += [("(mixed)", unit, mixed_masks(start, unit, seed=99), "seeded: none/few/most/all per conv") for unit in UNITS]
        for policy, unit, masks, source in cases:
            figures = compare_gradients(start, masks, unit, inputs, labels)
            # relative to the gradients' scale where it exceeds 1: float64 keeps ~16 digits, whatever the magnitude
            bound = TOLERANCE * max(1.0, figures["updated_scale"])
            holds = figures["updated_diff"] < bound and figures["frozen_max"] == 0 and figures["other_diff"] < bound
            table.rows.append(
                {
                    "policy": policy,
                    "unit": unit,
                    "masks": source,
                    **mask_description(masks),
                    "max |Δ| updated": figures["updated_diff"],
                    "max |g| updated": figures["updated_scale"],
                    "relative Δ": ratio(figures["updated_diff"], figures["updated_scale"]),
                    "max |g| frozen": figures["frozen_max"],
                    "max |Δ| other": figures["other_diff"],
                    "holds": holds,
                }
            )
            if not holds:
                output.failures.append(
                    f"{model_name} {policy}/{unit}: updated |Δ| {figures['updated_diff']:.2e}, frozen max {figures['frozen_max']:.2e}, other |Δ| {figures['other_diff']:.2e}"
                )
            context.log(f"  {model_name} {policy}/{unit}: max |Δ| {figures['updated_diff']:.1e} {'holds' if holds else 'FAILS'} ({source})")
        output.tables.append(table)
    output.notes.append(
        f"Tolerance {TOLERANCE:g} on the absolute difference, times the gradients' scale where it exceeds 1; `max |g| updated` is that scale (a comparison of zeros "
        "would prove nothing) and `relative Δ` the difference over it. "
        "`max |Δ| other`: BatchNorm and classifier gradients (bn_update all), which the engine's input gradients feed."
    )
    return output


# --- 2. a short trial per precision ------------------------------------------------


def precision_trial_config(variant: Variant, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """The digits trial of the precision section: mbv2-w0.35, velocity at scheme 3."""
    return {
        "data": {"name": "digits", "image_size": sizes.trial_image_size, "batch_size": 64},
        "model": {"name": "mbv2-w0.35"},
        "training": {
            "epochs": sizes.trial_epochs,
            "lr": 0.05,
            "momentum": 0.9,
            "device": str(device),
            "precision": variant.precision,
            "channels_last": variant.channels_last,
        },
        "budget": {"policy": "velocity", "initialization": "random", "scheme": "mbv2-w0.35_scheme_3"},
    }


def precision_trial(variant: Variant, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Run one trial of :func:`precision_trial_config`; its row of figures."""
    epochs: list[dict[str, Any]] = []
    started = time.perf_counter()
    last = train(precision_trial_config(variant, sizes, device), lambda metrics, state: epochs.append(metrics))
    return {
        "precision": variant.label,
        "final val top-1 %": last["val_top1"],
        "test top-1 at best val %": last["test_top1_at_best_val"],
        "best epoch": last["best_epoch"],
        "median epoch s": statistics.median(e["epoch_time_s"] for e in epochs),
        "final train loss": last["train_loss"],
        "trial s": time.perf_counter() - started,
    }


def precision_trials(context: CheckContext) -> SectionOutput:
    """Section 2: one short digits trial per precision (and bf16 channels-last)."""
    sizes = context.sizes
    columns = ["precision", "final val top-1 %", "test top-1 at best val %", "best epoch", "median epoch s", "final train loss", "trial s"]
    table = Table(
        f"digits, mbv2-w0.35, {sizes.trial_image_size} px, {sizes.trial_epochs} epochs, velocity at mbv2-w0.35_scheme_3, lr 0.05", columns
    )
    output = SectionOutput([table])
    for variant in TRIAL_VARIANTS:
        row = precision_trial(variant, sizes, context.device)
        table.rows.append(row)
        if not math.isfinite(row["final train loss"]):
            output.failures.append(f"{variant.label}: final train loss {row['final train loss']}")
        context.log(f"  {variant.label}: val {row['final val top-1 %']:.1f} %, median epoch {row['median epoch s']:.2f} s")
    return output


# --- 3. the update step per precision ----------------------------------------------


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
    """``runner`` (from :func:`~benchmarks.update_step.runners.build_runner`) stepping under ``precision``."""
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
        "Conditions and masks are benchmarks/update_step.py's (velocity masks from two real SGD steps, random and SU masks seeded); "
        "every step runs as the trainer's does (autocast, fp16's gradient scaler) between two device synchronisations, "
        "in a fresh seeded order of the conditions every round. `vs full`: against the full update of the same variant; "
        "`vs fp32`: against the same condition in fp32."
    )
    return SectionOutput([table], [note])


# --- 4. the input pipeline ---------------------------------------------------------


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


# --- 5. trials sharing a GPU -------------------------------------------------------


def search_space(sizes: Sizes, *, gpus_per_trial: float, max_concurrent: int, cpus_per_trial: int) -> dict[str, Any]:
    """The raw space of the search section: digits, mbv2-w0.35, velocity at scheme 3, the learning rate searched."""
    return {
        "experiment": "gpu_check",
        "data": {"name": "digits", "image_size": 32, "batch_size": 32},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": sizes.search_epochs, "lr": 0.05, "momentum": 0.9, "device": "cuda"},
        "budget": {"policy": "velocity", "initialization": "random", "scheme": "mbv2-w0.35_scheme_3"},
        "search": {
            "num_samples": sizes.search_trials,
            "max_concurrent": max_concurrent,
            "cpus_per_trial": cpus_per_trial,
            "gpus_per_trial": gpus_per_trial,
            "max_failures": 0,
            "params": {"training.lr": {"loguniform": [0.01, 0.1]}},
        },
    }


def shared_gpu_search(context: CheckContext) -> SectionOutput:
    """Section 5: the same small search with one trial per GPU and with four sharing it; trials per hour."""
    sizes = context.sizes
    cpus = search_cpus_per_trial(os.cpu_count() or 1)
    columns = [
        "trials per GPU",
        "gpus_per_trial",
        "max_concurrent",
        "cpus_per_trial",
        "trials",
        "errors",
        "wall s",
        "trials/hour",
        "best val top-1 %",
    ]
    table = Table(f"digits, mbv2-w0.35, {sizes.search_trials} trials of {sizes.search_epochs} epochs, lr searched (TPE)", columns)
    output = SectionOutput([table])
    with tempfile.TemporaryDirectory(prefix="neqtune-gpu-check-") as tmp:
        for sharing in (1, 4):
            raw = search_space(sizes, gpus_per_trial=1 / sharing, max_concurrent=sharing, cpus_per_trial=cpus)
            space = build_space(raw, "gpu_check.yaml")
            try:
                outcome = run_search(
                    space, results_dir=Path(tmp), name=f"gpu_check_{sharing}", echo=lambda line: context.log(f"    {line}")
                )
            finally:
                shutdown_ray()
            finished = outcome.num_trials - outcome.errors
            table.rows.append(
                {
                    "trials per GPU": sharing,
                    "gpus_per_trial": 1 / sharing,
                    "max_concurrent": sharing,
                    "cpus_per_trial": cpus,
                    "trials": outcome.num_trials,
                    "errors": outcome.errors,
                    "wall s": outcome.wall_time_s,
                    "trials/hour": trials_per_hour(finished, outcome.wall_time_s),
                    "best val top-1 %": (outcome.best or {}).get("best_val_top1"),
                }
            )
            if outcome.errors:
                output.failures.append(f"{sharing} trials per GPU: {outcome.errors} of {outcome.num_trials} trials failed")
            context.log(f"  {sharing} per GPU: {finished} trials in {outcome.wall_time_s:.1f} s")
    alone, shared = (row["trials/hour"] for row in table.rows)
    output.notes.append(
        f"Four trials sharing the GPU: {ratio(shared, alone):.2f} x the trials per hour of one at a time. "
        "Wall time from the search's start to its end (Ray's start included, the same in both); trials per hour counts finished trials."
    )
    return output


SECTIONS: dict[str, Section] = {
    "engine": Section(
        "Engine exactness (float64, every policy)",
        "The sparse-update engine's conv weight gradients against the masked path's (full backward, frozen rows or columns zeroed), "
        f"float64 on the device: updated part within {TOLERANCE:g}, frozen part exactly 0.",
        engine_exactness,
        has_criterion=True,
    ),
    "precision": Section(
        "A short trial per precision",
        "Digits trials through trainables.train on the device in fp32, bf16, fp16 and bf16 channels-last; fails on a non-finite loss.",
        precision_trials,
        has_criterion=True,
    ),
    "update_step": Section(
        "The update step per precision and layout",
        "Median step time of the full, bound, masked and engine paths (benchmarks/update_step.py's conditions) per precision and layout.",
        update_steps,
    ),
    "pipeline": Section(
        "The input pipeline feeding the GPU",
        "Images/s the training loader delivers to the device (augmented, synchronised), against the mbv2-w0.35 engine step's images/s.",
        input_pipeline,
    ),
    "search": Section(
        "1 versus 4 trials sharing one GPU",
        "A real search through neqtune.search.experiment.run_search, one trial per GPU and four sharing it: wall time and trials per hour; fails on a failed trial.",
        shared_gpu_search,
        has_criterion=True,
    ),
}


def machine_header(device: torch.device, command: str, total_s: float) -> dict[str, str]:
    """What the report's header says about the machine and the run."""
    properties = torch.cuda.get_device_properties(device)
    return {
        "GPU": f"{torch.cuda.get_device_name(device)}, {properties.total_memory / GIB:.1f} GiB",
        "versions": f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        "settings": (
            f"cudnn.benchmark {torch.backends.cudnn.benchmark}, cudnn.allow_tf32 {torch.backends.cudnn.allow_tf32}, "
            f"matmul.allow_tf32 {torch.backends.cuda.matmul.allow_tf32}"
        ),
        "CPUs": str(os.cpu_count()),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": f"`{command}`",
        "total wall time": f"{total_s:.1f} s",
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (``--help`` needs no GPU)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        help="the Markdown report (default docs/benchmarks/gpu_check.md; quick: gpu_check_quick.md); the .json goes beside it",
    )
    parser.add_argument(
        "--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS), help="sections to run, in this order (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes: every section, in a fraction of the time (a smoke run)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path("docs/benchmarks") / ("gpu_check_quick.md" if args.quick else "gpu_check.md")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; give the report's file name")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.gpu_check``: 0 when every section ran and held (or there is no GPU), else 1."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE)
        return 0
    started = time.perf_counter()
    command = " ".join(["python -m benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)])
    context = CheckContext(QUICK if args.quick else Sizes(), torch.device("cuda"), log=lambda line: print(line, flush=True))
    results = run_checks(SECTIONS, list(dict.fromkeys(args.sections)), context)
    header = machine_header(context.device, command, time.perf_counter() - started)
    figures = write_report(args.out, header, results)
    failed = [r.key for r in results if r.status == "FAILED"]
    print(f"wrote {args.out} and {figures}; " + (f"FAILED: {', '.join(failed)}" if failed else "every section ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
