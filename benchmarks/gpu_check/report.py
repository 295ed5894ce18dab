"""The GPU check's report: the machine, a summary line per section, each section's tables and notes in Markdown, and
the raw figures in the ``.json`` beside it."""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_check.section import SectionResult, Table
from benchmarks.report import format_cell, table_lines, write_markdown_and_json
from neqtune.pareto import finite

GIB = 2**30


def markdown_table(table: Table) -> list[str]:
    """The table as Markdown lines: its title, header, rows (a missing key shows as ``-``)."""
    rows = [[format_cell(row.get(column)) for column in table.columns] for row in table.rows]
    return [f"**{table.title}**", "", *table_lines(table.columns, rows)]


def render_markdown(header: Mapping[str, str], results: Sequence[SectionResult]) -> str:
    """The whole report: the machine, a summary line per section, then each section's tables and notes."""
    lines = ["# GPU check", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", *table_lines(["section", "status", "seconds"], [(r.title, r.status, f"{r.seconds:.1f}") for r in results])]
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
        return value if finite(value) else None
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
    return write_markdown_and_json(out, render_markdown(header, results), report_figures(header, results))


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
