"""Section ``search``: the same small search with one trial per GPU and with four sharing it; trials per hour."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.section import CheckContext, SectionOutput, Sizes, Table, ratio
from neqtune.search.cli import shutdown_ray
from neqtune.search.experiment import run_search
from neqtune.search.space import build_space


def trials_per_hour(trials: int, seconds: float) -> float:
    """Throughput of a search: ``trials`` finished in ``seconds`` of wall time, per hour; NaN without time."""
    return ratio(3600.0 * trials, seconds)


def search_cpus_per_trial(cpus: int, trials_at_once: int = 4) -> int:
    """CPUs for each search trial: the node's share of ``trials_at_once`` trials, 1 or 2."""
    return max(1, min(2, cpus // trials_at_once))



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
