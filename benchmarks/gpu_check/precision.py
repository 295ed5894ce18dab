"""Section ``precision``: a short digits trial per ``training.precision`` (and bf16 in channels-last layout)."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch

from benchmarks.gpu_check.section import CheckContext, SectionOutput, Sizes, Table, Variant
from neqtune.trainables.trainer import train

TRIAL_VARIANTS = (Variant("fp32"), Variant("bf16"), Variant("fp16"), Variant("bf16", channels_last=True))



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
