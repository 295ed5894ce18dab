"""The command line of ``python -m benchmarks.update_step``: options, the suites asked for, the files written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch

from benchmarks import update_step as package
from benchmarks.report import machine, write_tables
from benchmarks.update_step.conditions import MEMORY_SCHEMES, SCHEMES, TRANSFORMERS
from benchmarks.update_step.config import BenchConfig
from benchmarks.update_step.markdown import markdown_header, memory_section, params_section, transformer_section
from benchmarks.update_step.suites import benchmark_memory_model, benchmark_model, benchmark_transformer_model
from benchmarks.update_step.targets import add_memory_ratios, add_ratios
from neqtune.trainables.cpu import prepare_cpu
from neqtune.trainables.models.registry import model_names

Measure = Callable[[str, BenchConfig, Callable[[str], None]], list[dict[str, object]]]


def _suites(config: BenchConfig) -> list[tuple[str, tuple[str, ...], Measure, Callable[[pd.DataFrame], pd.DataFrame], Callable[[pd.DataFrame], str]]]:
    """Each suite the config asks for: its name, models, how a model is measured, the ratios added, its Markdown."""
    suites = [
        ("params", config.models, benchmark_model, add_ratios, params_section),
        ("memory", config.memory_models, benchmark_memory_model, add_memory_ratios, memory_section),
        ("transformers", config.transformer_models, benchmark_transformer_model, add_memory_ratios, transformer_section),
    ]
    return [suite for suite in suites if suite[1]]


def run(config: BenchConfig, command: str, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run the benchmark, write ``<name>.parquet`` and ``<name>.md`` into ``config.out_dir``."""
    torch.set_num_threads(config.threads)
    prepare_cpu()  # as the trainer does: denormals flushed, freed memory kept for reuse
    tables: list[pd.DataFrame] = []
    text = ["\n".join(markdown_header(config, command)) + "\n"]
    for suite, names, measure, ratios, render in _suites(config):
        suite_table = ratios(pd.DataFrame([row for name in names for row in measure(name, config, log)])).assign(suite=suite)
        tables.append(suite_table)
        text.append(render(suite_table))
    table = pd.concat(tables, ignore_index=True)
    table["image_size"] = config.image_size
    table["batch_size"] = config.batch_size
    table["machine"] = machine()
    write_tables(config.out_dir, config.name, table, "".join(text))
    return table


def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    """Command-line options; argparse exits with code 2 on a bad one."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.update_step", description=(package.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one timed round (a smoke run)")
    parser.add_argument(
        "--suite",
        choices=("all", "params", "memory", "transformers"),
        default="all",
        help="parameter budgets, memory budgets, transformers at memory budgets, or all (default); "
        "memory alone writes update_step_memory.*, transformers alone update_step_transformers.*",
    )
    parser.add_argument("--models", nargs="+", choices=sorted(SCHEMES), help="models at parameter budgets (default: all three)")
    parser.add_argument("--memory-models", nargs="+", choices=sorted(MEMORY_SCHEMES), help="models at memory budgets (default: all three)")
    parser.add_argument(
        "--transformer-models", nargs="+", choices=sorted(TRANSFORMERS), help="transformers at memory budgets (default: swin_t vit-s16)"
    )
    parser.add_argument("--image-size", type=int, help="input side in pixels (default 128; quick: 32)")
    parser.add_argument("--batch-size", type=int, help="images per step (default 32; quick: 4)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 11; quick: 1)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 2; quick: 1)")
    parser.add_argument("--threads", type=int, help="torch threads (default 2; quick: 1)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="output folder (default docs/benchmarks)")
    args = parser.parse_args(argv)
    quick = {"image_size": 32, "batch_size": 4, "repeats": 1, "warmup": 1, "threads": 1}
    default = quick if args.quick else {"image_size": 128, "batch_size": 32, "repeats": 11, "warmup": 2, "threads": 2}
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in default.items()}
    for key, value in values.items():
        minimum = 0 if key == "warmup" else 1
        if value < minimum:
            parser.error(f"--{key.replace('_', '-')} must be >= {minimum}, got {value}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    unknown = [m for m in args.models or [] if m not in model_names()]
    if unknown:
        parser.error(f"--models: unknown models {unknown}")
    def chosen(suite: str, given: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
        return () if args.suite not in ("all", suite) else tuple(given) if given else default

    return BenchConfig(
        models=chosen("params", args.models, BenchConfig.models),
        memory_models=chosen("memory", args.memory_models, BenchConfig.memory_models),
        transformer_models=chosen("transformers", args.transformer_models, BenchConfig.transformer_models),
        out_dir=args.out,
        name=("update_step_quick" if args.quick else "update_step") + ("" if args.suite in ("all", "params") else f"_{args.suite}"),
        **values,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.update_step``."""
    config = parse_args(argv)
    command = "python -m benchmarks.update_step " + " ".join(sys.argv[1:] if argv is None else argv)
    table = run(config, command.strip())
    print(f"wrote {config.out_dir / (config.name + '.parquet')} and {config.out_dir / (config.name + '.md')} ({len(table)} conditions)")
    return 0

