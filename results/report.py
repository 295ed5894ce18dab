"""The analysis in words and files: its Markdown tables and report, and the output directory's files.

Owns how each table is rendered (accuracies in %, mean ± sample std, ``-`` for a value not set)
and :func:`write_outputs`, which stages the tables (Markdown, CSV, XLSX), the plots and the report
and moves them into place file by file.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from neqtune.results.loading import SEED_KEY
from neqtune.results.model import Analysis, Experiments
from neqtune.results.outcomes import MISSING, is_set


def mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std``; ``-`` for an undefined mean or standard deviation (one seed)."""
    if math.isnan(mean):
        return MISSING
    return f"{mean:.{digits}f} ± {MISSING if math.isnan(std) else f'{std:.{digits}f}'}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: Any, spec: str = ",") -> str:
    """A number in the given format; ``-`` when it is not set (null or NaN)."""
    return format(value, spec) if is_set(value) and value is not pd.NA else MISSING


def _budget_text(r: pd.Series) -> str:
    """A row's budget in words: ``1,000 params``, ``20.0 kB memory`` or (without bytes per element) ``5,120 memory elements``."""
    if _number(r["budget_params"]) != MISSING:
        return f"{r['budget_params']:,} params"
    if _number(r.get("memory_budget_kb")) != MISSING:
        return f"{r['memory_budget_kb']:,.1f} kB memory"
    memory = r.get("memory_budget")
    return f"{memory:,} memory elements" if _number(memory) != MISSING else "no budget"


def _reports_memory(table: pd.DataFrame) -> bool:
    """Whether some row has a memory budget or measured memory (tables older than memory budgets have neither)."""
    return bool(table["memory_budget"].notna().any() or table["memory_used_kb_mean"].notna().any())


def table_markdown(table: pd.DataFrame) -> str:
    """The study's table as Markdown (accuracies in %, mean ± sample std over seeds).

    When some row reports memory, it also shows the unit, the memory budget
    and the mean memory used in kB, and the mean activation sparsity (%);
    otherwise it is the table of the study, as before memory budgets.
    """
    memory = _reports_memory(table)
    header = [
        "model", "scheme", *(["unit"] if memory else []), "budget (params)", *(["memory budget (kB)"] if memory else []),
        "init", "policy", "best val top-1 (%)", "best at epoch", "test top-1 at best val (%)", "stopping epoch",
        *(["memory used (kB)", "activation sparsity (%)"] if memory else []), "seeds", "n",
    ]  # fmt: skip
    rows = [
        [
            r["model.name"], r["budget.scheme"], *([r["budget.unit"]] if memory else []), _number(r["budget_params"]),
            *([_number(r["memory_budget_kb"], ",.1f")] if memory else []), r["budget.initialization"], r["budget.policy"],
            mean_std(r["best_val_top1_mean"], r["best_val_top1_std"]), r["best_epochs"] or MISSING,
            mean_std(r["test_top1_mean"], r["test_top1_std"]), mean_std(r["stop_epoch_mean"], r["stop_epoch_std"], 1),
            *([_number(r["memory_used_kb_mean"], ",.1f"), _number(r["activation_sparsity_pct_mean"], ".1f")] if memory else []),
            r["seeds"] or MISSING, f"{r['n_seeds']}" + (f" (+{r['n_excluded']} excluded)" if r["n_excluded"] else ""),
        ]
        for _, r in table.iterrows()
    ]  # fmt: skip
    text = _markdown(header, rows, "lllrrllrlrrrrlr" if memory else "llrllrlrrlr")
    mixed = [
        f"- row {i + 1} ({r['budget.policy']}, {_budget_text(r)}): {r['mixed_settings']}"
        for i, r in table.iterrows()
        if r["mixed_settings"]
    ]
    if mixed:
        text += "\n\nRows whose trials differ in more than the seed (not pure seed repeats):\n\n" + "\n".join(mixed)
    return text


def pareto_markdown(pareto: pd.DataFrame) -> str:
    """The Pareto front as Markdown, by increasing budget."""
    header = ["budget (params)", "test top-1 (%)", "best val top-1 (%)", "policy", "init", "scheme", "model", "seed", "trial"]
    rows = [
        [
            f"{r['budget_params']:,}", f"{r['test_top1_at_best_val']:.2f}", f"{r['best_val_top1']:.2f}", r["budget.policy"],
            r["budget.initialization"], r["budget.scheme"], r["model.name"], r[SEED_KEY], f"{r['experiment']}/{r['trial_id']}",
        ]
        for _, r in pareto.iterrows()
    ]  # fmt: skip
    return _markdown(header, rows, "rrrllllrl")


def pareto_memory_markdown(pareto: pd.DataFrame) -> str:
    """The Pareto front by measured memory as Markdown, by increasing memory (kB, mean over each trial's epochs)."""
    header = [
        "memory used (kB)", "test top-1 (%)", "best val top-1 (%)", "activation sparsity (%)", "policy", "init", "unit",
        "budget", "scheme", "model", "seed", "trial",
    ]  # fmt: skip
    rows = [
        [
            _number(r["memory_used_kb"], ",.1f"), f"{r['test_top1_at_best_val']:.2f}", f"{r['best_val_top1']:.2f}",
            _number(r["activation_sparsity_pct"], ".1f"), r["budget.policy"], r["budget.initialization"], r["budget.unit"],
            _budget_text(r), r["budget.scheme"], r["model.name"], r[SEED_KEY], f"{r['experiment']}/{r['trial_id']}",
        ]
        for _, r in pareto.iterrows()
    ]  # fmt: skip
    return _markdown(header, rows, "rrrrllllllrl")


def problems_markdown(problems: pd.DataFrame) -> str:
    """The problem trials as Markdown (or a line saying there are none)."""
    if problems.empty:
        return "No missing or partial data: every trial ended normally with a best epoch."
    budget = "budget" if problems["memory_budget"].notna().any() else "budget (params)"
    header = ["trial", "status", "policy", budget, "seed", "in table", "problem"]
    rows = [
        [
            f"{r['experiment']}/{r['trial_id']}", r["status"], r["budget.policy"],
            _number(r["budget_params"]) if _number(r["memory_budget"]) == MISSING else f"{r['memory_budget']:,} memory elements",
            r[SEED_KEY] if is_set(r[SEED_KEY]) else MISSING, "yes" if r["in_table"] else "no", r["problem"],
        ]
        for _, r in problems.iterrows()
    ]  # fmt: skip
    return _markdown(header, rows, "lllrrll")


def report_markdown(analysis: Analysis, experiments: Experiments, plots: Sequence[str]) -> str:
    """The whole report: sources, the study's table, the Pareto front(s), problems, plot files."""
    outcomes = analysis.outcomes
    sources = ", ".join(str(s) for s in experiments.sources)
    memory_front = (
        []
        if analysis.pareto_memory is None
        else [
            "## Pareto front: test top-1 versus memory used\n\nTrials that no other trial beats on both (higher test top-1, "
            "less memory used: weight + activation elements per image, mean over the trial's epochs), whatever their budget.\n\n"
            + pareto_memory_markdown(analysis.pareto_memory)
        ]
    )
    parts = [
        f"# Analysis of {sources}",
        f"{len(outcomes)} trials: {int(outcomes['usable'].sum())} in the table, {int((~outcomes['usable']).sum())} excluded.",
        "## The study's table\n\nMean ± sample standard deviation (n - 1) over seeds; `-`: undefined (one seed). "
        "Best epoch chosen by validation top-1; stopping epoch: epochs run.\n\n" + table_markdown(analysis.table),
        "## Pareto front: test top-1 versus budget\n\nTrials that no other trial beats on both (higher test top-1, smaller budget).\n\n"
        + pareto_markdown(analysis.pareto),
        *memory_front,
        "## Missing or partial data\n\n" + problems_markdown(analysis.problems),
        "## Plots\n\n" + ("\n".join(f"- `{name}`" for name in plots) if plots else "None (no trial in the table)."),
    ]
    return "\n\n".join(parts) + "\n"


def _excel_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Nullable and object columns in plain Python values openpyxl accepts."""
    out = frame.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.api.extensions.ExtensionDtype) and out[column].dtype.kind in "iub":
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out


def write_outputs(analysis: Analysis, experiments: Experiments, out_dir: Path) -> list[Path]:
    """Write tables, plots and report into ``out_dir``; return the files written.

    Everything is written into a staging directory first and then moved
    into place file by file, so an error leaves earlier outputs whole.
    """
    from neqtune.results.plots import write_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".analysis-", dir=out_dir))
    try:
        plots = write_plots(analysis, experiments, staging)
        report = report_markdown(analysis, experiments, [p.name for p in plots])
        (staging / "report.md").write_text(report)
        (staging / "table.md").write_text(table_markdown(analysis.table) + "\n")
        analysis.table.to_csv(staging / "table.csv", index=False)
        analysis.pareto.to_csv(staging / "pareto.csv", index=False)
        if analysis.pareto_memory is not None:
            analysis.pareto_memory.to_csv(staging / "pareto_memory.csv", index=False)
        analysis.outcomes.to_csv(staging / "trials.csv", index=False)
        analysis.problems.to_csv(staging / "problems.csv", index=False)
        with pd.ExcelWriter(staging / "table.xlsx", engine="openpyxl") as excel:
            for sheet, frame in (
                ("table", analysis.table),
                ("pareto", analysis.pareto),
                *([("pareto_memory", analysis.pareto_memory)] if analysis.pareto_memory is not None else []),
                ("trials", analysis.outcomes),
                ("problems", analysis.problems),
            ):
                _excel_frame(frame).to_excel(excel, sheet_name=sheet, index=False)
        written = []
        for path in sorted(staging.iterdir()):
            target = out_dir / path.name
            os.replace(path, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
