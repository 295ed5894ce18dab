"""Pareto sets of a multi-objective search and of the analysis, and the study's dominance question.

Pure functions: over trial rows (dicts, as in ``trials.parquet``), which rows
no other row dominates and whether one policy dominates another at equal
budget (the search); over two columns, a cost against a score, which points
are on the front (the analysis, :mod:`neqtune.results.outcomes`). One home for
both, and for :func:`finite`, the test of a usable number they share.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PARETO_TABLE = "pareto.parquet"


def finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite (a bool is no number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def cost_score_mask(costs: Sequence[float], scores: Sequence[float]) -> np.ndarray:
    """Which points no other point dominates, with the cost lower and the score higher the better (one sort, not all pairs).

    A point is dominated when another has a cost no larger and a score no
    lower, and is strictly better in one of the two; equal points do not
    dominate each other, as in :func:`dominates`.
    """
    cost = np.asarray(costs, dtype=float)
    score = np.asarray(scores, dtype=float)
    keep = np.zeros(len(cost), dtype=bool)
    best_below = -math.inf  # best score over strictly smaller costs
    for value in np.unique(cost):
        same = cost == value
        top = score[same].max()
        if top > best_below:
            keep |= same & (score == top)
        best_below = max(best_below, top)
    return keep


def _oriented(row: Mapping[str, Any], metrics: Sequence[str], modes: Sequence[str]) -> list[float]:
    """The row's objective values, negated where minimised, so that larger is better everywhere."""
    return [float(row[m]) if mode == "max" else -float(row[m]) for m, mode in zip(metrics, modes, strict=True)]


def dominates(a: Mapping[str, Any], b: Mapping[str, Any], metrics: Sequence[str], modes: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    va, vb = _oriented(a, metrics, modes), _oriented(b, metrics, modes)
    return all(x >= y for x, y in zip(va, vb, strict=True)) and any(x > y for x, y in zip(va, vb, strict=True))


def pareto_front(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], modes: Sequence[str]) -> list[dict[str, Any]]:
    """The rows no other row dominates (rows with a missing or non-finite objective are left out).

    Rows with identical objective values are all kept. The front is sorted by
    the first objective, best first.
    """
    if len(metrics) != len(modes):
        raise ValueError(f"one mode per metric: {list(metrics)} vs {list(modes)}")
    valid = [dict(row) for row in rows if all(finite(row.get(m)) for m in metrics)]
    front = [row for row in valid if not any(dominates(other, row, metrics, modes) for other in valid)]
    return sorted(front, key=lambda row: _oriented(row, metrics, modes), reverse=True)


@dataclass(frozen=True)
class BudgetComparison:
    """Two policies' best score at one budget."""

    budget: float
    better: float
    worse: float

    @property
    def margin(self) -> float:
        """``better - worse`` (positive: the first policy wins)."""
        return self.better - self.worse


def compare_policies_at_budget(
    rows: Sequence[Mapping[str, Any]],
    *,
    first: str,
    second: str,
    score: str,
    budget_key: str = "budget_params",
    policy_key: str = "budget.policy",
) -> list[BudgetComparison]:
    """Per budget where both policies ran: the best ``score`` of ``first`` and of ``second``.

    ``first`` dominates ``second`` at equal budget when every margin is > 0.
    """
    best: dict[tuple[str, float], float] = {}
    for row in rows:
        policy, budget, value = row.get(policy_key), row.get(budget_key), row.get(score)
        if policy not in (first, second) or not finite(budget) or not finite(value):
            continue
        key = (str(policy), float(typing.cast(float, budget)))
        best[key] = max(best.get(key, -math.inf), float(typing.cast(float, value)))
    budgets = sorted({b for p, b in best if p == first} & {b for p, b in best if p == second})
    return [BudgetComparison(budget=b, better=best[(first, b)], worse=best[(second, b)]) for b in budgets]
