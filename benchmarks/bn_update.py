"""What ``budget.bn_update: selected`` costs in accuracy, next to ``all`` (the study's rule).

A short real training run per setting and seed through :func:`trainables.train`:
digits, mbv2-w0.35 from its random initialisation (nothing is downloaded, so
no pretrained weights), the static SU mask of ``mbv2-w0.35_scheme_1``, SGD
with momentum, a few epochs; the same seeds for both settings. With
``selected`` only the BatchNorm layers after convs that hold updated neurons
train (here: the last blocks), so backward stops early; with ``all`` every
BatchNorm trains and backward runs through the whole network.

Reported per run: best validation top-1, test top-1 at the best validation
epoch, the mean epoch time; and the mean over seeds per setting.

Usage::

    python -m benchmarks.bn_update                   # 6 epochs, seeds 0 1 2
    python -m benchmarks.bn_update --epochs 1 --seeds 0 --out /tmp/bn
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks.report import machine, table_lines, write_tables
from neqtune.trainables.config import TrialConfig
from neqtune.trainables.trainer import train

SETTINGS = ("all", "selected")


@dataclass(frozen=True)
class BnBenchConfig:
    """Runs to compare and where to write the table."""

    epochs: int = 6
    seeds: tuple[int, ...] = (0, 1, 2)
    scheme: str = "mbv2-w0.35_scheme_1"
    model: str = "mbv2-w0.35"
    image_size: int = 32
    lr: float = 0.05
    threads: int = 2
    out_dir: Path = Path("docs/benchmarks")
    name: str = "bn_update"


def trial_config(config: BnBenchConfig, bn_update: str, seed: int) -> TrialConfig:
    """The trial of one setting and seed."""
    return TrialConfig.from_dict(
        {
            "data": {"name": "digits", "image_size": config.image_size},
            "model": {"name": config.model},
            "training": {
                "epochs": config.epochs,
                "optimizer": "sgd",
                "lr": config.lr,
                "momentum": 0.9,
                "weight_decay": 4e-5,
                "seed": seed,
                "device": "cpu",
            },
            "budget": {"policy": "su", "scheme": config.scheme, "bn_update": bn_update},
        }
    )


def run_one(config: BnBenchConfig, bn_update: str, seed: int) -> dict[str, Any]:
    """Train once; the row of the table."""
    epochs: list[dict[str, Any]] = []
    last = train(trial_config(config, bn_update, seed), lambda metrics, _state: epochs.append(metrics))
    return {
        "bn_update": bn_update,
        "seed": seed,
        "epochs": len(epochs),
        "best_val_top1": last["best_val_top1"],
        "test_top1_at_best_val": last["test_top1_at_best_val"],
        "final_train_loss": last["train_loss"],
        "epoch_time_s": statistics.median(m["epoch_time_s"] for m in epochs),
    }


def markdown(table: pd.DataFrame, summary: pd.DataFrame, config: BnBenchConfig, command: str) -> str:
    """Runs and per-setting means as Markdown."""

    def rows(frame: pd.DataFrame) -> list[str]:
        cells = frame.map(lambda v: f"{v:.2f}" if isinstance(v, float) else str(v))
        return table_lines(list(frame.columns), cells.itertuples(index=False))

    return "\n".join(
        [
            "# bn_update: all vs selected (accuracy)",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {machine()}. digits at {config.image_size} px, {config.model} from random initialisation, "
            f"policy su with {config.scheme}, SGD lr {config.lr} momentum 0.9, {config.epochs} epochs, seeds {list(config.seeds)}. "
            "Top-1 in %, epoch time in s (median over epochs, includes evaluation).",
            "",
            "## Mean over seeds",
            "",
            *rows(summary),
            "",
            "## Runs",
            "",
            *rows(table),
        ]
    ) + "\n"


def run(config: BnBenchConfig, command: str, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Train every setting and seed; write ``<name>.parquet`` and ``<name>.md``."""
    torch.set_num_threads(config.threads)
    rows = []
    for seed in config.seeds:
        for setting in SETTINGS:
            rows.append(run_one(config, setting, seed))
            log(f"bn_update {setting} seed {seed}: test top-1 at best val {rows[-1]['test_top1_at_best_val']:.2f}")
    table = pd.DataFrame(rows)
    summary = table.groupby("bn_update", sort=False)[["best_val_top1", "test_top1_at_best_val", "epoch_time_s"]].mean().reset_index()
    write_tables(config.out_dir, config.name, table, markdown(table, summary, config, command))
    return table


def parse_args(argv: Sequence[str] | None) -> BnBenchConfig:
    """Command-line options; argparse exits with code 2 on a bad one."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bn_update", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per run (default 6)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, the same for both settings")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="output folder (default docs/benchmarks)")
    parser.add_argument("--name", default="bn_update", help="output file stem (default bn_update)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    return BnBenchConfig(epochs=args.epochs, seeds=tuple(args.seeds), threads=args.threads, out_dir=args.out, name=args.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.bn_update``."""
    config = parse_args(argv)
    command = ("python -m benchmarks.bn_update " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    table = run(config, command)
    print(f"wrote {config.out_dir / (config.name + '.parquet')} and {config.out_dir / (config.name + '.md')} ({len(table)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
