"""The analysis plots, drawn with matplotlib's headless Agg backend.

- ``accuracy_vs_budget.png``: test top-1 at the best validation epoch versus
  the budget (conv parameters, log scale), one line per policy with error
  bars over seeds; the full-update baseline as a horizontal band (mean ±
  std); one panel per model.
- ``learning_curves.png``: validation top-1 and training loss per epoch,
  one column per budget, one line per policy (mean over seeds, shaded ±
  std), the full-update baseline dashed.
- ``layer_updates_<policy>_<init>_<model>.png``, for dynamic policies (the
  mask changes between epochs): the share of each conv layer's neurons
  updated per epoch, mean over seeds, one panel per budget.
- ``pareto.png``: every trial's test top-1 versus its budget, the Pareto
  front marked.
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
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

if TYPE_CHECKING:
    from results.analyze import Analysis, Experiments

FULL = "full"
DPI = 110
# At most this many budget columns in the learning curves (the most seeded ones); the report says when more exist.
MAX_CURVE_PANELS = 8
Colors = dict[tuple[str, str], Any]  # (policy, initialization) -> a matplotlib colour


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


def _series_colors(keys: Sequence[tuple[str, str]]) -> Colors:
    """A colour per (policy, initialization), stable across plots."""
    cmap = plt.get_cmap("tab10")
    return {key: cmap(i % 10) for i, key in enumerate(sorted(set(keys)))}


def plot_accuracy_vs_budget(table: pd.DataFrame, path: Path, colors: Colors) -> Path:
    """Test top-1 (mean ± std over seeds) versus budget per policy; full update as a band."""
    table = table[table["n_seeds"] > 0]
    models = sorted(table["model.name"].unique())
    figure, axes = plt.subplots(len(models), 1, figsize=(10, 5.5 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        rows = table[table["model.name"] == model]
        lines = rows[rows["budget.policy"] != FULL]
        inits = lines["budget.initialization"].nunique()
        series = list(lines.groupby(["budget.policy", "budget.initialization"]))
        for k, ((policy, init), line) in enumerate(series):
            line = line.groupby("budget_params", as_index=False).agg(
                mean=("test_top1_mean", "mean"), std=("test_top1_std", "max"), n=("n_seeds", "sum")
            )
            dodge = 1.0 + 0.025 * (k - (len(series) - 1) / 2)  # side by side at a shared budget, so error bars stay apart
            n = f"{line['n'].min()}" if line["n"].nunique() == 1 else f"{line['n'].min()}-{line['n'].max()}"
            ax.errorbar(
                line["budget_params"].astype(float) * dodge, line["mean"], yerr=line["std"].fillna(0.0), marker="o", capsize=4,
                color=colors[(policy, init)], label=f"{_label(policy, init, inits)}, n={n} seeds",
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


def _mean_curves(epochs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean and std over trials of ``column`` per epoch (std NaN for one trial)."""
    rows = epochs[epochs[column].notna()]
    return rows.groupby("epoch")[column].agg(["mean", "std", "count"]).reset_index()


def plot_learning_curves(analysis: Analysis, epochs: pd.DataFrame, path: Path, colors: Colors) -> tuple[Path, int]:
    """Validation top-1 and training loss per epoch, one column per budget; returns the path and the columns left out."""
    used = analysis.outcomes[analysis.outcomes["usable"]]
    rows = epochs.merge(used[["experiment", "trial_id"]], on=["experiment", "trial_id"])
    rows["budget.scheme"] = rows["budget.scheme"].fillna("-")
    inits = rows.loc[rows["budget.policy"] != FULL, "budget.initialization"].nunique()
    budgeted = rows[rows["budget.policy"] != FULL]
    panels = budgeted.groupby(["model.name", "budget.scheme", "budget_params"])["trial_id"].nunique().sort_values(ascending=False)
    shown = sorted(panels.index[:MAX_CURVE_PANELS], key=lambda k: (k[0], k[2]))
    n_cols = max(len(shown), 1)
    figure, axes = plt.subplots(2, n_cols, figsize=(4.6 * n_cols, 7.5), squeeze=False, sharey="row")
    for col, (model, scheme, budget) in enumerate(shown):
        panel = rows[(rows["model.name"] == model) & (rows["budget.scheme"] == scheme) & (rows["budget_params"] == budget)]
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
                ax.set_title(f"{model}, {scheme}\nbudget {int(budget):,} params", fontsize=10)
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
    rows = epochs.merge(used[["experiment", "trial_id"]], on=["experiment", "trial_id"])
    rows = rows[rows["layer_frozen_pct"].notna()]
    written = []
    for (model, policy, init), group in rows.groupby(["model.name", "budget.policy", "budget.initialization"]):
        if not _is_dynamic(group):
            continue
        budgets = sorted(group["budget_params"].unique())
        n_layers = len(group["layer_frozen_pct"].iloc[0])
        names = _layer_names(experiments.trials, set(zip(group["experiment"], group["trial_id"], strict=True)), n_layers)
        figure, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets) + 1.5, max(4.0, 0.14 * n_layers + 1.5)), squeeze=False)
        image = None
        for ax, budget in zip(axes[0], budgets, strict=True):
            panel = group[group["budget_params"] == budget]
            by_epoch = panel.groupby("epoch")["layer_frozen_pct"].apply(
                lambda v: 100.0 - np.mean(np.stack([np.asarray(x, float) for x in v]), axis=0)
            )
            grid = np.stack(by_epoch.tolist(), axis=1)  # layers x epochs
            image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100, interpolation="nearest",
                              extent=(by_epoch.index.min() - 0.5, by_epoch.index.max() + 0.5, n_layers - 0.5, -0.5))  # fmt: skip
            ax.set_title(f"budget {int(budget):,} params, n={panel['trial_id'].nunique()}", fontsize=9)
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
    """Every usable trial's test top-1 versus its budget; the Pareto front marked and joined."""
    used = analysis.outcomes[analysis.outcomes["usable"]]
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
    """All plots into ``out_dir``; none when no trial is usable. Returns the files written."""
    if not analysis.outcomes["usable"].any():
        return []
    used = analysis.outcomes[analysis.outcomes["usable"]]
    colors = _series_colors(list(zip(used["budget.policy"], used["budget.initialization"], strict=True)))
    written = [plot_accuracy_vs_budget(analysis.table, out_dir / "accuracy_vs_budget.png", colors)]
    written.append(plot_learning_curves(analysis, experiments.epochs, out_dir / "learning_curves.png", colors)[0])
    written += plot_layer_updates(analysis, experiments, out_dir)
    written.append(plot_pareto(analysis, out_dir / "pareto.png", colors))
    return written
