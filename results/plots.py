"""The analysis plots, drawn with matplotlib's headless Agg backend.

- ``accuracy_vs_budget.png``, when some trial has a parameter budget: test
  top-1 at the best validation epoch versus the budget (conv parameters,
  log scale), one line per policy with error bars over seeds; the
  full-update baseline as a horizontal band (mean ± std); one panel per
  model.
- ``accuracy_vs_memory.png``, when some trial reports its memory: the same
  test top-1 versus the memory used (kB, log scale), one line per policy,
  initialization, unit and kind of budget; one panel per model.
- ``learning_curves.png``: validation top-1 and training loss per epoch,
  one column per budget (parameter or memory), one line per policy (mean
  over seeds, shaded ± std), the full-update baseline dashed.
- ``layer_updates_<policy>_<init>_<model>.png``, for dynamic policies (the
  mask changes between epochs): the share of each conv layer's neurons
  updated per epoch, mean over seeds, one panel per budget.
- ``pareto.png``, when some trial has a parameter budget: every such
  trial's test top-1 versus its budget, the Pareto front marked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # headless: files only, no display needed

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullLocator

if TYPE_CHECKING:
    from neqtune.results.model import Analysis, Experiments

FULL = "full"
NO_UNIT = "-"  # neqtune.results.outcomes.MISSING: the unit of a table written before budget units
DPI = 110
# At most this many budget columns in the learning curves (the most seeded ones); the report says when more exist.
MAX_CURVE_PANELS = 8
Colors = dict[tuple[str, str], Any]  # (policy, initialization) -> a matplotlib colour
# Under a memory budget a line is solid with filled markers, under a parameter budget dashed with hollow ones (a line of
# one point shows no dashes); each unit has its marker shape.
KIND_STYLE = {0: ("--", "white", "parameter budgets"), 1: ("-", None, "memory budgets")}
UNIT_MARKERS = {"neuron": "o", "input_channel": "s"}
# Where each line writes its points' budgets, in points from the marker, turn by turn, so that nearby lines' labels part.
LABEL_OFFSETS = (((8, 4), "left"), ((8, -11), "left"), ((-8, 4), "right"), ((-8, -11), "right"))


def _label(policy: str, initialization: str, initializations: int) -> str:
    return f"{policy} (init {initialization})" if initializations > 1 else policy


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def _slug(*parts: str) -> str:
    return "_".join(re.sub(r"[^\w.-]+", "-", p) for p in parts)


def _budget_axis(ax: Axes, budgets: Sequence[float]) -> None:
    """Log-scale budget axis, ticked at the budgets present (with thousands separators)."""
    ax.set_xscale("log")
    ax.set_xlabel("budget: conv parameters updated per epoch (log scale)")
    ticks = sorted(set(budgets))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks) > 8:
        ax.tick_params(axis="x", labelrotation=45)
    if ticks:
        ax.set_xlim(ticks[0] / 1.3, ticks[-1] * 1.3)
    ax.grid(True, which="major", alpha=0.3)


def _budgets(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``budget_kind`` (0: parameters, 1: memory elements per image) and ``budget_amount`` added.

    Tables older than memory budgets have no ``memory_budget`` column: every budget there is in parameters.
    """
    memory = rows["memory_budget"] if "memory_budget" in rows.columns else pd.Series(math.nan, index=rows.index)
    params = pd.to_numeric(rows["budget_params"]).astype(float)
    is_memory = params.isna() & pd.to_numeric(memory).notna()
    return rows.assign(budget_kind=is_memory.astype(int), budget_amount=params.where(~is_memory, pd.to_numeric(memory).astype(float)))


def _budget_title(kind: int, amount: float, rows: pd.DataFrame) -> str:
    """``budget 1,000 params``, or ``memory budget 19.5 kB`` (elements when the table has no bytes per element)."""
    if kind == 0:
        return f"budget {int(amount):,} params"
    per_element = rows["budget.bytes_per_element"].dropna() if "budget.bytes_per_element" in rows.columns else pd.Series([])
    if per_element.empty:
        return f"memory budget {int(amount):,} elements"
    return f"memory budget {amount * float(per_element.iloc[0]) / 1024:,.1f} kB"


def _series_colors(keys: Sequence[tuple[str, str]]) -> Colors:
    """A colour per (policy, initialization), stable across plots."""
    cmap = plt.get_cmap("tab10")
    return {key: cmap(i % 10) for i, key in enumerate(sorted(set(keys)))}


def plot_accuracy_vs_budget(table: pd.DataFrame, path: Path, colors: Colors) -> Path:
    """Test top-1 (mean ± std over seeds) versus budget in parameters per policy (and unit); full update as a band."""
    table = table[(table["n_seeds"] > 0) & table["budget_params"].notna()]
    # A table older than budget units has no unit: it could only update neurons, so its rows join the neuron lines.
    table = table.assign(**{"budget.unit": table["budget.unit"].replace(NO_UNIT, "neuron")})
    models = sorted(table["model.name"].unique())
    figure, axes = plt.subplots(len(models), 1, figsize=(10, 5.5 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        rows = table[table["model.name"] == model]
        lines = rows[rows["budget.policy"] != FULL]
        inits, units = lines["budget.initialization"].nunique(), lines["budget.unit"].nunique()
        series = list(lines.groupby(["budget.policy", "budget.initialization", "budget.unit"]))
        for k, ((policy, init, unit), line) in enumerate(series):
            on = f" on {unit.replace('_', ' ')}s" if units > 1 else ""
            line = line.groupby("budget_params", as_index=False).agg(
                mean=("test_top1_mean", "mean"), std=("test_top1_std", "max"), n=("n_seeds", "sum")
            )
            dodge = 1.0 + 0.025 * (k - (len(series) - 1) / 2)  # side by side at a shared budget, so error bars stay apart
            n = f"{line['n'].min()}" if line["n"].nunique() == 1 else f"{line['n'].min()}-{line['n'].max()}"
            ax.errorbar(
                line["budget_params"].astype(float) * dodge, line["mean"], yerr=line["std"].fillna(0.0), capsize=4,
                marker=UNIT_MARKERS.get(unit, "o"), color=colors[(policy, init)], label=f"{_label(policy, init, inits)}{on}, n={n} seeds",
            )  # fmt: skip
        for _, full in rows[rows["budget.policy"] == FULL].iterrows():
            mean, std = full["test_top1_mean"], 0.0 if math.isnan(full["test_top1_std"]) else full["test_top1_std"]
            ax.axhspan(mean - std, mean + std, color="0.6", alpha=0.3, lw=0)
            ax.axhline(
                mean,
                color="0.3",
                ls="--",
                label=f"full update ({int(full['budget_params']):,} params), mean ± std, n={full['n_seeds']}",
            )
        _budget_axis(ax, lines["budget_params"].astype(float).tolist())
        ax.set_ylabel("test top-1 at best validation epoch (%)")
        ax.set_title(
            f"{model}: test top-1 versus update budget\n(mean ± sample std over seeds; best epoch chosen by validation)", fontsize=10
        )
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    figure.tight_layout()
    return _save(figure, path)


def _memory_axis(ax: Axes, kilobytes: Sequence[float]) -> None:
    """Log-scale memory axis in kB, ticked at 1, 2 and 5 per decade, denser when the memories span little more than a decade."""
    ax.set_xscale("log")
    ax.set_xlabel("memory used (kB, log scale)\nupdated weights + kept conv-input activations per image, mean over epochs")
    narrow = bool(kilobytes) and max(kilobytes) / max(min(kilobytes), 1e-9) < 30
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if narrow else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    if kilobytes:
        ax.set_xlim(min(kilobytes) / 1.4, max(kilobytes) * 1.4)
    ax.grid(True, which="major", alpha=0.3)


def _row_budget(row: pd.Series) -> str:
    """A table row's budget, short: ``1,000 params`` or ``19.5 kB`` / ``469 kB`` (a memory budget)."""
    if _is_number(row["budget_params"]):
        return f"{int(row['budget_params']):,} params"
    if _is_number(row["memory_budget_kb"]):
        kilobytes = float(row["memory_budget_kb"])
        return f"{kilobytes:,.0f} kB" if kilobytes >= 100 else f"{kilobytes:,.1f} kB"
    return f"{int(row['memory_budget']):,} el."


def _is_number(value: Any) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def plot_accuracy_vs_memory(table: pd.DataFrame, path: Path, colors: Colors) -> Path:
    """Test top-1 (mean ± std over seeds) versus memory used (kB) per policy and initialization; one panel per model.

    A row's memory is its ``memory_used_kb_mean`` (mean over each trial's
    epochs, then over seeds). Rows at parameter and at memory budgets are
    separate lines (dashed and solid), and so are the units (markers):
    ``random`` over neurons and over input channels are different methods.
    The full update is a point at its memory with a dashed level across.
    """
    table = table[(table["n_seeds"] > 0) & table["memory_used_kb_mean"].notna()]
    table = table.assign(budget_kind=(table["budget_params"].isna() & table["memory_budget"].notna()).astype(int))
    models = sorted(table["model.name"].unique())
    figure, axes = plt.subplots(len(models), 1, figsize=(10, 5.5 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        rows = table[table["model.name"] == model]
        lines = rows[rows["budget.policy"] != FULL]
        inits, units = lines["budget.initialization"].nunique(), lines["budget.unit"].nunique()
        series = lines.groupby(["budget.policy", "budget.initialization", "budget.unit", "budget_kind"])
        for k, ((policy, init, unit, kind), line) in enumerate(series):
            line = line.sort_values("memory_used_kb_mean")
            style, face, budgets = KIND_STYLE[int(kind)]
            n = f"{line['n_seeds'].min()}" if line["n_seeds"].nunique() == 1 else f"{line['n_seeds'].min()}-{line['n_seeds'].max()}"
            on = f" on {unit.replace('_', ' ')}s" if units > 1 and unit != "-" else ""
            ax.errorbar(
                line["memory_used_kb_mean"], line["test_top1_mean"], yerr=line["test_top1_std"].fillna(0.0), ls=style,
                marker=UNIT_MARKERS.get(unit, "o"), markersize=7, markerfacecolor=face or colors[(policy, init)], capsize=4,
                color=colors[(policy, init)], label=f"{_label(policy, init, inits)}{on}, {budgets}, n={n} seeds",
            )  # fmt: skip
            for _, point in line.iterrows():  # which budget each point ran at
                (dx, dy), align = LABEL_OFFSETS[k % len(LABEL_OFFSETS)]
                ax.annotate(_row_budget(point), (point["memory_used_kb_mean"], point["test_top1_mean"]), xytext=(dx, dy), ha=align,
                            textcoords="offset points", fontsize=7, color=colors[(policy, init)])  # fmt: skip
        for _, full in rows[rows["budget.policy"] == FULL].iterrows():
            mean, std = full["test_top1_mean"], 0.0 if math.isnan(full["test_top1_std"]) else full["test_top1_std"]
            ax.axhline(mean, color="0.3", ls=":", lw=1)
            ax.errorbar([full["memory_used_kb_mean"]], [mean], yerr=[std], marker="*", markersize=12, capsize=4, color="0.3", ls="none",
                        label=f"full update ({full['memory_used_kb_mean']:,.0f} kB), mean ± std, n={full['n_seeds']}")  # fmt: skip
        _memory_axis(ax, rows["memory_used_kb_mean"].tolist())
        ax.set_ylabel("test top-1 at best validation epoch (%)")
        ax.set_title(
            f"{model}: test top-1 versus memory used\n(mean ± sample std over seeds; best epoch chosen by validation)", fontsize=10
        )
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    figure.tight_layout()
    return _save(figure, path)


def _mean_curves(epochs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean and std over trials of ``column`` per epoch (std NaN for one trial)."""
    rows = epochs[epochs[column].notna()]
    return rows.groupby("epoch")[column].agg(["mean", "std", "count"]).reset_index()


def plot_learning_curves(analysis: Analysis, epochs: pd.DataFrame, path: Path, colors: Colors) -> tuple[Path, int]:
    """Validation top-1 and training loss per epoch, one column per budget; returns the path and the columns left out."""
    used = analysis.outcomes[analysis.outcomes["usable"]]
    rows = _budgets(epochs.merge(used[["experiment", "trial_id"]], on=["experiment", "trial_id"]))
    rows["budget.scheme"] = rows["budget.scheme"].fillna("-")
    inits = rows.loc[rows["budget.policy"] != FULL, "budget.initialization"].nunique()
    budgeted = rows[rows["budget.policy"] != FULL]
    panel_keys = ["model.name", "budget.scheme", "budget_kind", "budget_amount"]
    panels = budgeted.groupby(panel_keys)["trial_id"].nunique().sort_values(ascending=False)
    shown = sorted(panels.index[:MAX_CURVE_PANELS], key=lambda k: (k[0], k[2], k[3]))
    n_cols = max(len(shown), 1)
    figure, axes = plt.subplots(2, n_cols, figsize=(4.6 * n_cols, 7.5), squeeze=False, sharey="row")
    for col, (model, scheme, kind, budget) in enumerate(shown):
        panel = rows[
            (rows["model.name"] == model)
            & (rows["budget.scheme"] == scheme)
            & (rows["budget_kind"] == kind)
            & (rows["budget_amount"] == budget)
        ]
        full = rows[(rows["model.name"] == model) & (rows["budget.policy"] == FULL)]
        groups = [(g, _label(p, i, inits), colors[(p, i)], "-") for (p, i), g in panel.groupby(["budget.policy", "budget.initialization"])]
        if not full.empty:
            groups.append((full, "full update", "0.3", "--"))
        for row, (column, ylabel) in enumerate((("val_top1", "validation top-1 (%)"), ("train_loss", "training loss (cross-entropy)"))):
            ax = axes[row][col]
            for group, label, color, style in groups:
                if column not in group.columns:  # a table written before the column existed
                    continue
                curve = _mean_curves(group, column)
                n = group["trial_id"].nunique()
                ax.plot(curve["epoch"], curve["mean"], style, color=color, marker=".", label=f"{label}, n={n}")
                ax.fill_between(
                    curve["epoch"], curve["mean"] - curve["std"].fillna(0), curve["mean"] + curve["std"].fillna(0), color=color, alpha=0.15
                )
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if row == 0:
                ax.set_title(f"{model}, {scheme}\n{_budget_title(kind, budget, panel)}", fontsize=10)
        axes[0][col].legend(fontsize=7, loc="lower right")
    left_out = max(len(panels) - len(shown), 0)
    more = f"; {left_out} budgets with fewer trials not shown" if left_out else ""
    figure.suptitle(f"Learning curves per policy at each budget (mean over seeds, shaded ± std{more})", fontsize=11)
    figure.tight_layout()
    return _save(figure, path), left_out


def _layer_names(trials: pd.DataFrame, trial_ids: set[tuple[str, str]], n_layers: int) -> list[str]:
    if "layer_names" in trials.columns:
        for _, row in trials.iterrows():
            names = row["layer_names"]
            if (row["experiment"], row["trial_id"]) in trial_ids and names is not None and len(names) == n_layers:
                return [str(n) for n in names]
    return [f"conv {i}" for i in range(n_layers)]


def _is_dynamic(rows: pd.DataFrame) -> bool:
    """Whether some trial's per-layer frozen shares change from one epoch to another."""
    for _, trial in rows.groupby(["experiment", "trial_id"]):
        shares = [tuple(v) for v in trial["layer_frozen_pct"] if v is not None]
        if len(set(shares)) > 1:
            return True
    return False


def plot_layer_updates(analysis: Analysis, experiments: Experiments, out_dir: Path) -> list[Path]:
    """One heatmap figure per dynamic (model, policy, initialization): share of each layer's neurons updated per epoch."""
    epochs = experiments.epochs
    if "layer_frozen_pct" not in epochs.columns:
        return []
    used = analysis.outcomes[analysis.outcomes["usable"]]
    rows = _budgets(epochs.merge(used[["experiment", "trial_id"]], on=["experiment", "trial_id"]))
    rows = rows[rows["layer_frozen_pct"].notna() & rows["budget_amount"].notna()]
    written = []
    for (model, policy, init), group in rows.groupby(["model.name", "budget.policy", "budget.initialization"]):
        if not _is_dynamic(group):
            continue
        budgets = sorted(set(zip(group["budget_kind"], group["budget_amount"], strict=True)))
        n_layers = len(group["layer_frozen_pct"].iloc[0])
        names = _layer_names(experiments.trials, set(zip(group["experiment"], group["trial_id"], strict=True)), n_layers)
        figure, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets) + 1.5, max(4.0, 0.14 * n_layers + 1.5)), squeeze=False)
        image = None
        for ax, (kind, budget) in zip(axes[0], budgets, strict=True):
            panel = group[(group["budget_kind"] == kind) & (group["budget_amount"] == budget)]
            by_epoch = panel.groupby("epoch")["layer_frozen_pct"].apply(
                lambda v: 100.0 - np.mean(np.stack([np.asarray(x, float) for x in v]), axis=0)
            )
            grid = np.stack(by_epoch.tolist(), axis=1)  # layers x epochs
            image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100, interpolation="nearest",
                              extent=(by_epoch.index.min() - 0.5, by_epoch.index.max() + 0.5, n_layers - 0.5, -0.5))  # fmt: skip
            ax.set_title(f"{_budget_title(kind, budget, panel)}, n={panel['trial_id'].nunique()}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_yticks(range(n_layers))
            ax.set_yticklabels(names if ax is axes[0][0] else [], fontsize=5)
        axes[0][0].set_ylabel("conv layer (module order)")
        if image is not None:
            figure.colorbar(image, ax=axes[0].tolist(), label="neurons updated (% of the layer)", fraction=0.03)
        figure.suptitle(f"{model}, policy {policy} (init {init}): share of each layer's neurons updated, mean over seeds", fontsize=10)
        written.append(_save(figure, out_dir / f"layer_updates_{_slug(policy, init, model)}.png"))
    return written


def plot_pareto(analysis: Analysis, path: Path, colors: Colors) -> Path:
    """Every usable trial's test top-1 versus its budget in parameters; the Pareto front marked and joined."""
    used = analysis.outcomes[analysis.outcomes["usable"] & analysis.outcomes["budget_params"].notna()]
    inits = used["budget.initialization"].nunique()
    figure, ax = plt.subplots(figsize=(10, 5.5))
    for (policy, init), group in used.groupby(["budget.policy", "budget.initialization"]):
        ax.scatter(group["budget_params"].astype(float), group["test_top1_at_best_val"], s=22, alpha=0.6, color=colors[(policy, init)],
                   label=_label(policy, init, inits))  # fmt: skip
    front = analysis.pareto
    ax.step(front["budget_params"].astype(float), front["test_top1_at_best_val"], where="post", color="black", lw=1, alpha=0.7)
    ax.scatter(front["budget_params"].astype(float), front["test_top1_at_best_val"], s=110, facecolors="none", edgecolors="black",
               linewidths=1.6, label=f"Pareto front ({len(front)} trials)")  # fmt: skip
    _budget_axis(ax, used["budget_params"].astype(float).tolist())
    ax.set_ylabel("test top-1 at best validation epoch (%)")
    ax.set_title("Pareto front: test top-1 versus update budget, all trials")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    return _save(figure, path)


def write_plots(analysis: Analysis, experiments: Experiments, out_dir: Path) -> list[Path]:
    """All plots into ``out_dir``; none when no trial is usable. Returns the files written.

    The plots against the budget in parameters need a trial with one; the
    plot against memory needs a trial that reports its memory.
    """
    if not analysis.outcomes["usable"].any():
        return []
    used = analysis.outcomes[analysis.outcomes["usable"]]
    colors = _series_colors(list(zip(used["budget.policy"], used["budget.initialization"], strict=True)))
    by_params = bool(used["budget_params"].notna().any())
    written = [plot_accuracy_vs_budget(analysis.table, out_dir / "accuracy_vs_budget.png", colors)] if by_params else []
    if used["memory_used_kb"].notna().any():
        written.append(plot_accuracy_vs_memory(analysis.table, out_dir / "accuracy_vs_memory.png", colors))
    written.append(plot_learning_curves(analysis, experiments.epochs, out_dir / "learning_curves.png", colors)[0])
    written += plot_layer_updates(analysis, experiments, out_dir)
    if by_params:
        written.append(plot_pareto(analysis, out_dir / "pareto.png", colors))
    return written
