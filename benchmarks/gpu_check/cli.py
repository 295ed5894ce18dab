"""The command line of ``python -m benchmarks.gpu_check``: the sections by key, the options, the run and its exit code."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks import gpu_check as package
from benchmarks.gpu_check.engine import TOLERANCE, engine_exactness
from benchmarks.gpu_check.pipeline import input_pipeline
from benchmarks.gpu_check.precision import precision_trials
from benchmarks.gpu_check.report import machine_header, write_report
from benchmarks.gpu_check.search import shared_gpu_search
from benchmarks.gpu_check.section import QUICK, CheckContext, Section, Sizes, run_checks
from benchmarks.gpu_check.update_step import update_steps

NO_CUDA_MESSAGE = "neqtune gpu_check: no CUDA device here; nothing checked (run it on a machine with a GPU)"


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
        "Median step time of the full, bound, masked and engine paths (benchmarks/update_step/conditions.py's conditions) per precision and layout.",
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



def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (``--help`` needs no GPU)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=(package.__doc__ or "").split("\n\n")[0])
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
