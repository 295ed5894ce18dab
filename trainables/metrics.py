"""The per-epoch metrics a trial reports, declared once.

Every metric the trainer reports is listed here with how the seeds of a
repeated trial combine it and whether a search may steer by it. The result
tables, the seed repeats and the space validation read this schema instead
of spelling the names out themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SeedRule = Literal["mean", "list_mean", "sum", "first"]


@dataclass(frozen=True)
class Metric:
    """One per-epoch metric.

    Attributes:
        name: the key in the trainer's report and the table column.
        seeds: how repeated seeds combine it: ``mean``, ``list_mean``
            (element-wise, per-layer lists), ``sum`` (times) or ``first``
            (equal across seeds: epoch, budget, names).
        objective: a search or a scheduler may steer by it.
        per_seed: repeated trials also report its per-seed values (``<name>_seeds``).
        std: repeated trials also report its sample std (``<name>_std``).
        dtype: the table column's Arrow type name where it must be fixed (a
            column that may hold only nulls in one flush: ``budget_params`` of
            a memory budget); None lets the values decide.
    """

    name: str
    seeds: SeedRule = "first"
    objective: bool = False
    per_seed: bool = False
    std: bool = False
    dtype: str | None = None


def _accuracy(name: str) -> Metric:
    return Metric(name, "mean", objective=True, per_seed=True, std=True)


METRICS: tuple[Metric, ...] = (
    Metric("epoch"),
    Metric("train_loss", "mean", objective=True),
    Metric("train_top1", "mean", objective=True),
    _accuracy("val_top1"),
    _accuracy("test_top1"),
    Metric("lr"),
    _accuracy("best_val_top1"),
    Metric("best_epoch", per_seed=True),
    _accuracy("test_top1_at_best_val"),
    Metric("budget_params", objective=True, dtype="int64"),  # null under a memory budget
    Metric("total_conv_params"),
    Metric("params_updated", "mean", objective=True),
    Metric("params_outside_budget", "mean", dtype="double"),  # norms and classifier that trained beside the budget (a mean over seeds)
    Metric("budget_gap", "mean"),
    Metric("neurons_updated", "mean"),
    Metric("neurons_total"),
    Metric("frozen_pct", "mean", objective=True),
    Metric("flops_saved", "mean", objective=True),
    Metric("flops_saved_pct", "mean", objective=True),
    Metric("memory_budget", objective=True, dtype="int64"),  # null under a parameter budget
    Metric("memory_used", "mean", objective=True),
    Metric("memory_used_kb", "mean", objective=True),
    Metric("weight_elements_updated", "mean", objective=True),
    Metric("activation_elements_kept", "mean", objective=True),
    Metric("activation_sparsity_pct", "mean", objective=True),
    Metric("wgrad_flops_saved_pct", "mean", objective=True),
    Metric("layer_frozen_pct", "list_mean"),
    Metric("layer_flops_saved", "list_mean"),
    Metric("epoch_time_s", "sum"),
    Metric("velocity_time_s", "sum"),
    # the policy's own (trainables/lifecycle.py); null where a policy does not measure them, so repeats keep the first seed's
    Metric("layers_selected"),  # conv indices the policy selects from (its preselection; every conv otherwise)
    Metric("ranking_time_s", dtype="double"),  # the layer-ranking gradient pass at the start of the run
    Metric("grad_norm_time_s", dtype="double"),  # this epoch's gradient-norm measurements (rgn, medyate)
    Metric("grad_norm_overhead_pct", dtype="double"),  # the same, as a share of epoch_time_s
    Metric("channels_seen_pct", dtype="double"),  # medyate: share of the preselected channels trained so far
)

_REGISTERED: list[Metric] = []


def register_metric(metric: Metric) -> Metric:
    """Declare a metric that a plug-in's policy reports (in its :attr:`~BudgetPolicy.metrics` and ``epoch_metrics``).

    A declared metric becomes a column of the epochs table and a TensorBoard scalar, is combined across seed repeats
    by its ``seeds`` rule, and may steer a search when ``objective`` is set. Declaring a name again is allowed only
    with the same declaration (a plug-in imported twice); per-seed values and stds are the accuracies' alone.

    Returns:
        ``metric``, so that a module can keep it: ``MY_METRIC = register_metric(Metric("my_metric", "mean"))``.
    """
    known = {m.name: m for m in all_metrics()}
    if metric.name in known:
        if known[metric.name] == metric:
            return metric
        raise ValueError(f"metric {metric.name!r} is already declared, as {known[metric.name]}")
    if metric.per_seed or metric.std:
        raise ValueError(f"metric {metric.name!r}: per-seed values and stds are kept for the accuracies only")
    _REGISTERED.append(metric)
    return metric


def all_metrics() -> tuple[Metric, ...]:
    """The built-in metrics, then those the plug-ins declared, in report order."""
    return (*METRICS, *_REGISTERED)


ADAPTER_COLUMNS = ("node_id", "hostname", "pid")
"""Added to every report by the Ray Tune adapter: where the epoch ran."""


def metric_names(*, seeds: SeedRule | None = None, objective: bool | None = None) -> tuple[str, ...]:
    """Names of the metrics, in report order, optionally only those with a seed rule or objective flag."""
    return tuple(
        m.name for m in all_metrics() if (seeds is None or m.seeds == seeds) and (objective is None or m.objective == objective)
    )


def per_seed_names() -> tuple[str, ...]:
    """Metrics whose per-seed values a repeated trial reports."""
    return tuple(m.name for m in all_metrics() if m.per_seed)


def std_names() -> tuple[str, ...]:
    """Metrics whose sample std a repeated trial reports."""
    return tuple(m.name for m in all_metrics() if m.std)


def fixed_dtypes() -> dict[str, str]:
    """Metric name -> Arrow type name, for the metrics whose column type is fixed."""
    return {m.name: m.dtype for m in all_metrics() if m.dtype is not None}
