"""What the benchmarks' reports share: Markdown tables, number cells, the machine line, and the files written side by side.

Each benchmark keeps its own wording and columns; this module owns how a
table is laid out in Markdown, how a missing number shows (``-``), how a
target's outcome is worded, and how ``<name>.md`` is written next to its
``.parquet`` or ``.json`` (atomically: never half-written).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from neqtune.pareto import finite

# --- Markdown -------------------------------------------------------------------


def table_lines(header: Sequence[str], rows: Iterable[Sequence[object]], *, right_aligned: Collection[str] = ()) -> list[str]:
    """A Markdown table: the header, the separator (``---:`` under the ``right_aligned`` columns), one line per row.

    Cells are written with ``str``, one space either side; format numbers first (:func:`number`, :func:`format_cell`).
    A column without a name (``""``) has the header cell ``| |``.
    """
    names = "|" + "|".join(f" {name} " if name else " " for name in header) + "|"
    separator = "|" + "".join("---:|" if column in right_aligned else "---|" for column in header)
    return [names, separator, *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def number(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec`` (``format(value, spec)``); ``-`` where it is None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_cell(value: object) -> str:
    """A table cell: ``-`` for None and NaN, yes/NO for booleans, about three significant digits for floats."""
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


def mean_std(values: Iterable[Any]) -> str:
    """``mean ± standard deviation`` of the finite numbers among ``values``, one decimal each; ``-`` without any."""
    kept = [v for v in values if finite(v)]
    if not kept:
        return "-"
    spread = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return f"{statistics.mean(kept):.1f} ± {spread:.1f}"


def verdict(holds: bool) -> str:
    """How a report words a target's outcome: ``met`` or ``missed``."""
    return "met" if holds else "missed"


# --- the machine ----------------------------------------------------------------


def cpu_name(fallback: str) -> str:
    """The CPU's model name from ``/proc/cpuinfo``; ``fallback`` where there is none."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return fallback


def machine() -> str:
    """CPU model, cores and torch threads, for a table's caption."""
    import torch  # only here: table_flush's measuring child processes import this module and stay free of torch

    cpu = cpu_name(platform.processor() or platform.machine())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"


# --- files ----------------------------------------------------------------------


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, then rename: never half-written."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_tables(out_dir: Path, name: str, table: pd.DataFrame, text: str) -> None:
    """``<name>.parquet`` (the table) and ``<name>.md`` (``text``) in ``out_dir``, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(out_dir / f"{name}.parquet", lambda p: table.to_parquet(p, index=False))
    write_atomically(out_dir / f"{name}.md", lambda p: p.write_text(text))


def write_markdown_and_json(out: Path, text: str, figures: Mapping[str, Any]) -> Path:
    """``out`` (Markdown, ``text``) and the ``.json`` beside it (``figures``), each written atomically; returns the JSON's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    figures_path = out.with_suffix(".json")
    write_atomically(out, lambda p: p.write_text(text))
    write_atomically(figures_path, lambda p: p.write_text(json.dumps(figures, indent=1) + "\n"))
    return figures_path
