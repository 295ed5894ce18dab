"""What every section of the GPU check shares: the sizes (full and quick), the context it runs in, its output and
result, and how a section is run (timed, guarded: an exception or a failed check makes it FAILED, never propagates)."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from neqtune.trainables.update.precision import Precision

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
