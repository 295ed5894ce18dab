"""neqtune's numbers beside a paper's: ``python -m neqtune.results.compare EXPERIMENT... --paper wacv2024|trady|medyate``.

The papers' published tables ship as data in ``results/papers/`` (a CSV per
paper naming its source, and a YAML file with the metric, the recipe and the
ordering claims of its text). For every cell of the paper's table (data set,
model, unit, budget, policy, first mask) the command collects the matching
trials of the experiments given and puts their mean ± sample std over seeds
beside the paper's, with the difference. Then it checks the paper's ordering
claims (``velocity >= random``, ...) inside the user's own runs, at each
budget level where both policies ran, and lists the cells on either side
that have no counterpart.

Matching, in order:

- *metric*: the papers report the **final** test top-1 (the last epoch), so
  that is compared by default (``--metric final``); trials stopped early
  have no final epoch and are left out. ``--metric best-val`` compares
  neqtune's headline, the test top-1 at the best validation epoch;
- *data set*: the ``data.name`` key; ``avg7`` cells (TraDy, MeDyate) match
  the average over c10, c100, cub, flowers, food, pets and vww of the
  per-data-set means, only when all seven ran (its std: over the seeds of
  the per-seed averages, when every seed ran on all seven);
- *budget*: the conv parameters updated (``budget_params``) where the cell
  gives them, else the memory budget (``memory_budget`` of the epoch rows,
  where neqtune reports one), equal within 0.5 % (the ResNet budgets of the
  WACV tables were rounded from MobileNetV2's);
- *unit* (``budget.unit``, ``neuron`` when absent), *policy* (the paper's
  name, or neqtune's name for it from the YAML's ``policies``) and *first
  mask* (``-`` in the paper: any).
- a ``full`` cell (the baseline) matches the full updates of its model and
  data set whatever their budget columns say: a full update has no budget.

A paper cell may carry a ``note`` (a remark on the printed number, e.g. a
likely copy error in TraDy's SwinT table); it goes into the ``notes`` of that
cell wherever it appears, and into ``paper_note`` of the claims checked on it.

Claims are checked on the user's trials grouped by data set, model, budget
level (the scheme, else the budget) and first mask; the same claim on the
paper's own numbers is shown where the paper has that group. A claim with
``models`` holds for those models only, one with ``not_models`` for all
others (TraDy's CNN orderings and its SwinT ones differ).

Outputs (default ``<experiment>/compare-<paper>``): ``comparison.md``,
``comparison.csv`` (every paper cell and every unmatched neqtune group, with
``status`` matched / paper only / neqtune only) and ``claims.csv``. Bad input
is one line naming the path, exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from neqtune.results.loading import load_experiments
from neqtune.results.model import AnalysisInputError, Experiments
from neqtune.results.outcomes import trial_configs, trial_outcomes
from neqtune.results.report import mean_std

PAPERS_DIR = Path(__file__).resolve().parent / "papers"
AVG7 = "avg7"
SEVEN = ("c10", "c100", "cub", "flowers", "food", "pets", "vww")
BUDGET_TOLERANCE = 0.005  # relative
ANY = "-"
CELL_KEYS = ("dataset", "model", "unit", "scheme", "budget_params", "budget_mem", "policy", "initialization")
METRICS = {"final": "final test top-1 (last epoch)", "best-val": "test top-1 at the best validation epoch"}


@dataclass(frozen=True)
class Claim:
    """An ordering the paper's text states: ``better`` >= ``worse`` at equal budget."""

    better: str
    worse: str
    says: str
    models: tuple[str, ...] = ()
    not_models: tuple[str, ...] = ()

    def applies_to(self, model: str) -> bool:
        """Whether the claim is about ``model`` (``models`` when given, else every model not in ``not_models``)."""
        return model in self.models if self.models else model not in self.not_models


@dataclass(frozen=True)
class Paper:
    """A paper's published table and what its text claims about it.

    Attributes:
        name: the file stem (``wacv2024``).
        source: the citation of the tables.
        metric: what the numbers are.
        table: one row per cell (columns of :data:`CELL_KEYS`, ``table``, ``mean``, ``std``, ``note``: a remark
            on the printed number, empty for most).
        recipe: the dotted config values the paper states (a per-data-set
            mapping for values that depend on the data set).
        policies: paper policy name -> neqtune policy name, where they differ.
        claims: the orderings to check.
    """

    name: str
    source: str
    metric: str
    table: pd.DataFrame
    recipe: dict[str, Any]
    policies: dict[str, str]
    claims: tuple[Claim, ...]

    def neqtune_policy(self, policy: str) -> str:
        """The name neqtune registers the paper's ``policy`` under."""
        return self.policies.get(policy, policy)


def paper_names() -> list[str]:
    """The papers shipped in ``results/papers``."""
    return sorted(path.stem for path in PAPERS_DIR.glob("*.yaml"))


def load_paper(name: str) -> Paper:
    """Read a shipped paper's table and claims.

    Raises:
        ValueError: an unknown paper (names the known ones).
    """
    if name not in paper_names():
        raise ValueError(f"unknown paper {name!r}; known papers: {', '.join(paper_names())}")
    meta = yaml.safe_load((PAPERS_DIR / f"{name}.yaml").read_text())
    table = pd.read_csv(PAPERS_DIR / meta["table"], comment="#", dtype={"table": str, "initialization": str, "unit": str})
    for column in ("budget_params", "budget_mem"):
        table[column] = table[column].astype("Int64")
    table["note"] = table["note"].fillna("").astype(str) if "note" in table.columns else ""
    claims = tuple(
        Claim(str(c["better"]), str(c["worse"]), str(c["says"]), tuple(c.get("models") or ()), tuple(c.get("not_models") or ()))
        for c in meta.get("claims") or []
    )
    return Paper(
        name=name,
        source=" ".join(str(meta["source"]).split()),
        metric=str(meta["metric"]),
        table=table,
        recipe=dict(meta.get("recipe") or {}),
        policies={str(k): str(v) for k, v in (meta.get("policies") or {}).items()},
        claims=claims,
    )


# --- neqtune's side -------------------------------------------------------------
def _value(row: pd.Series, column: str) -> Any:
    value = row[column] if column in row.index else None
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA else value


def trial_results(experiments: Experiments, metric: str = "final") -> pd.DataFrame:
    """One row per trial: the matching keys, its seed and its value of ``metric`` (NaN where it has none).

    Columns: ``experiment``, ``trial_id``, :data:`CELL_KEYS` (``budget_mem``:
    the trial's ``memory_budget``, when reported), ``seed``, ``value`` and
    ``excluded`` (why the trial has no value, else None). Config columns
    besides the keys are kept for the recipe and mixed-settings notes.
    """
    outcomes = trial_outcomes(experiments).set_index(["experiment", "trial_id"])
    epochs = experiments.epochs
    if epochs.empty:
        return pd.DataFrame(columns=["experiment", "trial_id", *CELL_KEYS, "seed", "value", "excluded"])
    last = epochs.sort_values("epoch", kind="stable").groupby(["experiment", "trial_id"], sort=False).tail(1)
    rows = []
    for _, row in last.iterrows():
        key = (row["experiment"], row["trial_id"])
        outcome = outcomes.loc[key] if key in outcomes.index else None
        excluded = None
        if outcome is None or not bool(outcome["usable"]):
            excluded = str(outcome["problem"]) if outcome is not None else "no summary row"
            value = math.nan
        elif metric == "final":
            if outcome["status"] != "TERMINATED":
                excluded, value = f"{outcome['status']}: stopped before its last epoch, so no final test top-1", math.nan
            else:
                value = float(row["test_top1"]) if _value(row, "test_top1") is not None else math.nan
                if math.isnan(value):
                    excluded = "its last epoch was not evaluated"
        else:
            value = float(outcome["test_top1_at_best_val"])
        config = {c: row[c] for c in row.index if "." in c}
        budget_params = _value(row, "budget_params")
        memory = _value(row, "memory_budget")
        rows.append(
            {
                "experiment": key[0],
                "trial_id": key[1],
                "dataset": str(_value(row, "data.name")),
                "model": str(_value(row, "model.name")),
                "unit": str(_value(row, "budget.unit") or "neuron"),
                "scheme": _value(row, "budget.scheme") or ANY,
                "budget_params": int(budget_params) if budget_params is not None else None,
                "budget_mem": int(memory) if memory is not None else None,
                "policy": str(_value(row, "budget.policy")),
                "initialization": str(_value(row, "budget.initialization")),
                "seed": _value(row, "training.seed"),
                "value": value,
                "excluded": excluded,
                **{f"config:{k}": v for k, v in config.items()},
            }
        )
    return pd.DataFrame(rows)


def _close(a: Any, b: Any) -> bool:
    return a is not None and b is not None and not pd.isna(a) and not pd.isna(b) and abs(float(a) - float(b)) <= BUDGET_TOLERANCE * float(b)


def _matches(cell: pd.Series, paper: Paper, trials: pd.DataFrame, dataset: str) -> pd.Series:
    """Which of ``trials`` are runs of ``cell`` on ``dataset``."""
    policy = paper.neqtune_policy(str(cell["policy"]))
    mask = (trials["dataset"] == dataset) & (trials["model"] == cell["model"]) & (trials["policy"] == policy)
    if cell["unit"] != ANY:
        mask &= trials["unit"] == cell["unit"]
    if cell["initialization"] != ANY:
        mask &= trials["initialization"] == cell["initialization"]
    if policy == "full":  # the baseline: a full update has no budget to compare
        return mask
    if not pd.isna(cell["budget_params"]):
        budget = trials["budget_params"].map(lambda b: _close(b, cell["budget_params"]))
        if not pd.isna(cell["budget_mem"]):
            budget |= trials["budget_mem"].map(lambda b: _close(b, cell["budget_mem"]))
    else:
        budget = trials["budget_mem"].map(lambda b: _close(b, cell["budget_mem"]))
    return mask & budget.astype(bool)


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


def _recipe_notes(runs: pd.DataFrame, recipe: Mapping[str, Any], dataset: str) -> list[str]:
    """The paper's recipe values that the runs do not share, as ``key v (paper p)``."""
    notes = []
    for key, wanted in recipe.items():
        if isinstance(wanted, Mapping):
            if dataset not in wanted:
                continue
            wanted = wanted[dataset]
        column = f"config:{key}"
        if column not in runs.columns:
            continue
        found = sorted({v for v in runs[column].dropna().tolist()}, key=str)
        if found and any(not math.isclose(float(v), float(wanted)) for v in found):
            notes.append(f"{key} {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in found)} (paper {wanted:g})")
    return notes


def _mixed(runs: pd.DataFrame, configs: pd.DataFrame) -> str:
    keys = list(zip(runs["experiment"], runs["trial_id"], strict=True))
    keys = [k for k in dict.fromkeys(keys) if k in configs.index]
    if len(keys) < 2:
        return ""
    rows = configs.loc[keys]
    varied = [c for c in rows.columns if c != "training.seed" and rows[c].astype(str).nunique(dropna=False) > 1]
    return ", ".join(varied)


@dataclass(frozen=True)
class Comparison:
    """The paper beside the runs.

    Attributes:
        cells: one row per paper cell, matched or not, then one per neqtune
            group no cell matches (``status``: ``matched``, ``paper only``,
            ``neqtune only``).
        claims: one row per claim and group of the user's runs with both policies.
        excluded: the trials left out, and why.
    """

    cells: pd.DataFrame
    claims: pd.DataFrame
    excluded: pd.DataFrame


def compare(paper: Paper, experiments: Experiments, metric: str = "final") -> Comparison:
    """Match every cell of ``paper`` to the runs of ``experiments`` and check the paper's claims in them."""
    trials = trial_results(experiments, metric)
    configs = trial_configs(experiments)
    usable = trials[trials["value"].notna()] if not trials.empty else trials
    used: set[tuple[str, str]] = set()
    rows = []
    for _, cell in paper.table.iterrows():
        datasets = SEVEN if cell["dataset"] == AVG7 else (str(cell["dataset"]),)
        per_dataset = {d: usable[_matches(cell, paper, usable, d)] for d in datasets} if not usable.empty else {}
        ran = {d: runs for d, runs in per_dataset.items() if not runs.empty}
        row: dict[str, Any] = {"status": "paper only", "table": cell["table"], **{k: cell[k] for k in CELL_KEYS}}
        row.update(paper_mean=float(cell["mean"]), paper_std=float(cell["std"]) if not pd.isna(cell["std"]) else math.nan)
        paper_note = [str(cell["note"])] if cell["note"] else []
        row.update(neqtune_mean=math.nan, neqtune_std=math.nan, n=0, seeds="", difference=math.nan, neqtune_budget="", notes="; ".join(paper_note))
        if cell["dataset"] == AVG7 and ran and len(ran) < len(SEVEN):
            row["notes"] = "; ".join([*paper_note, f"ran on {len(ran)} of the 7 data sets ({', '.join(ran)}); the average needs all 7"])
        elif ran:
            runs = pd.concat(ran.values())
            used |= set(zip(runs["experiment"], runs["trial_id"], strict=True))
            if cell["dataset"] == AVG7:
                means = {d: float(r["value"].mean()) for d, r in ran.items()}
                mean = float(np.mean(list(means.values())))
                common = set.intersection(*(set(r["seed"]) for r in ran.values()))
                per_seed = [float(np.mean([float(r[r["seed"] == s]["value"].mean()) for r in ran.values()])) for s in sorted(common)]
                std, n, seeds = _std(per_seed), len(common), ", ".join(str(s) for s in sorted(common))
            else:
                values = runs.sort_values("seed", kind="stable")
                mean, std, n = float(values["value"].mean()), _std(values["value"].tolist()), len(values)
                seeds = ", ".join(str(s) for s in values["seed"])
            budgets = sorted({str(b) for b in runs["budget_params"].dropna().astype(int)} | {f"mem {b}" for b in runs["budget_mem"].dropna().astype(int)})
            notes = paper_note + (_recipe_notes(runs, paper.recipe, str(cell["dataset"])) if cell["dataset"] != AVG7 else [])
            mixed = _mixed(runs, configs)
            if mixed:
                notes.append(f"runs differ in {mixed}")
            row.update(
                status="matched", neqtune_mean=mean, neqtune_std=std, n=n, seeds=seeds,
                difference=mean - float(cell["mean"]), neqtune_budget=", ".join(budgets), notes="; ".join(notes),
            )  # fmt: skip
        rows.append(row)
    leftover = usable[[(e, t) not in used for e, t in zip(usable["experiment"], usable["trial_id"], strict=True)]] if not usable.empty else usable
    for key, group in leftover.groupby(list(CELL_KEYS), dropna=False, sort=True) if not leftover.empty else []:
        values = group.sort_values("seed", kind="stable")
        rows.append(
            {
                "status": "neqtune only", "table": "", **dict(zip(CELL_KEYS, key, strict=True)),
                "paper_mean": math.nan, "paper_std": math.nan, "neqtune_mean": float(values["value"].mean()),
                "neqtune_std": _std(values["value"].tolist()), "n": len(values), "seeds": ", ".join(str(s) for s in values["seed"]),
                "difference": math.nan, "neqtune_budget": "", "notes": f"runs differ in {mixed}" if (mixed := _mixed(values, configs)) else "",
            }
        )  # fmt: skip
    cells = pd.DataFrame(rows)
    for column in ("budget_params", "budget_mem"):
        cells[column] = pd.array([int(v) if not pd.isna(v) else None for v in cells[column]], dtype="Int64")
    excluded = trials[trials["excluded"].notna()][["experiment", "trial_id", *CELL_KEYS, "seed", "excluded"]] if not trials.empty else trials
    return Comparison(cells=cells, claims=check_claims(paper, usable), excluded=excluded.reset_index(drop=True))


def _level(scheme: Any, budget_params: Any, budget_mem: Any) -> str:
    if isinstance(scheme, str) and scheme != ANY:
        return scheme
    if not pd.isna(budget_mem):
        return f"memory {int(budget_mem)}"
    return f"params {int(budget_params)}" if not pd.isna(budget_params) else ANY


def check_claims(paper: Paper, trials: pd.DataFrame) -> pd.DataFrame:
    """Each claim at each (data set, model, budget level, first mask) where the user's runs have both policies.

    ``held``: the better policy's mean is at least the worse one's. The
    paper's own numbers for that group, where its table has it, are checked
    alike (``paper_held``; empty where the paper has no such group).
    """
    columns = ["claim", "says", "dataset", "model", "level", "initialization", "better_mean", "better_n", "worse_mean", "worse_n",
               "difference", "held", "paper_held", "paper_note"]  # fmt: skip
    if trials.empty or not paper.claims:
        return pd.DataFrame(columns=columns)
    runs = trials.assign(level=[_level(s, b, m) for s, b, m in zip(trials["scheme"], trials["budget_params"], trials["budget_mem"], strict=True)])
    levels = [_level(s, b, m) for s, b, m in zip(paper.table["scheme"], paper.table["budget_params"], paper.table["budget_mem"], strict=True)]
    table = paper.table.assign(level=levels, policy=paper.table["policy"].map(paper.neqtune_policy))
    rows = []
    for claim in paper.claims:
        better, worse = paper.neqtune_policy(claim.better), paper.neqtune_policy(claim.worse)
        for (dataset, model, level, init), group in runs.groupby(["dataset", "model", "level", "initialization"], sort=True):
            a, b = group[group["policy"] == better]["value"], group[group["policy"] == worse]["value"]
            if a.empty or b.empty or not claim.applies_to(str(model)):
                continue
            own = table[(table["dataset"] == dataset) & (table["model"] == model) & (table["level"] == level)]
            own = own[own["initialization"].isin([init, ANY])]
            pa, pb = own[own["policy"] == better]["mean"], own[own["policy"] == worse]["mean"]
            noted = own[own["policy"].isin([better, worse]) & (own["note"] != "")]["note"] if not pa.empty and not pb.empty else []
            rows.append(
                {
                    "claim": f"{claim.better} >= {claim.worse}", "says": claim.says, "dataset": dataset, "model": model, "level": level,
                    "initialization": init, "better_mean": float(a.mean()), "better_n": len(a), "worse_mean": float(b.mean()),
                    "worse_n": len(b), "difference": float(a.mean() - b.mean()), "held": bool(a.mean() >= b.mean()),
                    "paper_held": (bool(pa.mean() >= pb.mean()) if not pa.empty and not pb.empty else None),
                    "paper_note": "; ".join(dict.fromkeys(noted)),
                }
            )  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


# --- text -----------------------------------------------------------------------
def _budget_text(row: Mapping[str, Any]) -> str:
    parts = []
    if not pd.isna(row["budget_params"]):
        parts.append(f"{int(row['budget_params']):,} params")
    if not pd.isna(row["budget_mem"]):
        parts.append(f"{int(row['budget_mem']):,} mem")
    return " / ".join(parts) or ANY


def _md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _signed(value: float) -> str:
    return ANY if math.isnan(value) else f"{value:+.2f}"


def _scope(claim: Claim) -> str:
    if claim.models:
        return f" (on {', '.join(claim.models)})"
    return f" (all but {', '.join(claim.not_models)})" if claim.not_models else ""


def comparison_markdown(paper: Paper, comparison: Comparison, sources: Sequence[Any], metric: str, *, full: bool = True) -> str:
    """The comparison as Markdown; ``full=False`` counts the paper cells without runs instead of listing them."""
    cells = comparison.cells
    matched = cells[cells["status"] == "matched"]
    paper_only = cells[cells["status"] == "paper only"]
    mine = cells[cells["status"] == "neqtune only"]
    parts = [
        f"# {paper.name}: neqtune beside the paper",
        f"Paper: {paper.source}. Its numbers: {paper.metric}.\n\n"
        f"neqtune: {', '.join(str(s) for s in sources)}; compared: {METRICS[metric]}, mean ± sample std over seeds (n - 1).",
    ]
    header = ["data set", "model", "unit", "budget", "policy", "init", "paper", "neqtune", "n", "difference", "neqtune budget", "notes"]
    rows = [
        [r["dataset"], r["model"], r["unit"], _budget_text(r), r["policy"], r["initialization"], mean_std(r["paper_mean"], r["paper_std"]),
         mean_std(r["neqtune_mean"], r["neqtune_std"]), r["n"], _signed(r["difference"]), r["neqtune_budget"], r["notes"] or ""]
        for _, r in matched.iterrows()
    ]  # fmt: skip
    parts.append(f"## Matching cells ({len(matched)} of the paper's {len(paper_only) + len(matched)})\n\n" + (_md(header, rows) if rows else "None."))
    claims = comparison.claims
    if claims.empty:
        claim_text = "No budget level of these runs has both policies of a claim."
    else:
        claim_rows = [
            [r["claim"], r["dataset"], r["model"], r["level"], r["initialization"], f"{r['better_mean']:.2f} (n={r['better_n']})",
             f"{r['worse_mean']:.2f} (n={r['worse_n']})", _signed(r["difference"]), "yes" if r["held"] else "**no**",
             ANY if r["paper_held"] is None or pd.isna(r["paper_held"]) else ("yes" if r["paper_held"] else "no"), r["paper_note"]]
            for _, r in claims.iterrows()
        ]  # fmt: skip
        held = int(claims["held"].sum())
        claim_text = f"Held in {held} of {len(claims)} checks.\n\n" + _md(
            ["claim", "data set", "model", "budget level", "init", "better", "worse", "difference", "held", "in the paper", "paper note"],
            claim_rows,
        )
    says = "\n".join(f"- `{c.better} >= {c.worse}`{_scope(c)}: {c.says}" for c in paper.claims)
    parts.append(f"## The paper's claims, in these runs\n\n{says}\n\n{claim_text}")
    mine_rows = [
        [r["dataset"], r["model"], r["unit"], r["scheme"], _budget_text(r), r["policy"], r["initialization"],
         mean_std(r["neqtune_mean"], r["neqtune_std"]), r["n"], r["notes"] or ""]
        for _, r in mine.iterrows()
    ]  # fmt: skip
    mine_header = ["data set", "model", "unit", "scheme", "budget", "policy", "init", "neqtune", "n", "notes"]
    parts.append(
        f"## neqtune runs without a counterpart in the paper ({len(mine)} groups)\n\n" + (_md(mine_header, mine_rows) if mine_rows else "None.")
    )
    if full:
        only_rows = [[r["table"], r["dataset"], r["model"], r["unit"], _budget_text(r), r["policy"], r["initialization"],
                      mean_std(r["paper_mean"], r["paper_std"]), r["notes"] or ""] for _, r in paper_only.iterrows()]  # fmt: skip
        body = _md(["table", "data set", "model", "unit", "budget", "policy", "init", "paper", "notes"], only_rows) if only_rows else "None."
    else:
        counts = paper_only.groupby(["model", "dataset"], sort=True).size()
        body = ", ".join(f"{model} {dataset}: {n}" for (model, dataset), n in counts.items()) or "none"
        body += "\n\n(listed in full in comparison.md and comparison.csv)"
    parts.append(f"## Paper cells without neqtune runs ({len(paper_only)})\n\n{body}")
    excluded = comparison.excluded
    if not excluded.empty:
        ex_rows = [[f"{r['experiment']}/{r['trial_id']}", r["policy"], r["excluded"]] for _, r in excluded.iterrows()]
        parts.append(f"## Trials left out ({len(excluded)})\n\n" + _md(["trial", "policy", "why"], ex_rows))
    return "\n\n".join(parts) + "\n"


def write_comparison(paper: Paper, comparison: Comparison, sources: Sequence[Any], metric: str, out_dir: Path) -> list[Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``claims.csv`` (each through a temporary file and a rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        "comparison.md": comparison_markdown(paper, comparison, sources, metric),
        "comparison.csv": comparison.cells.to_csv(index=False),
        "claims.csv": comparison.claims.to_csv(index=False),
    }
    written = []
    for name, text in texts.items():
        temporary = out_dir / f".{name}.{os.getpid()}.partial"  # opened like any file: the umask sets its mode
        temporary.write_text(text)
        os.replace(temporary, out_dir / name)
        written.append(out_dir / name)
    return written


def _local(location: Path | str) -> Path:
    """The local experiment directory: the path itself, or ``results/<experiment>`` for a URI (where its TensorBoard files are)."""
    text = str(location)
    return Path("results") / text.partition("?")[0].rstrip("/").rpartition("/")[2] if "://" in text else Path(location)


def default_out_dir(directories: Sequence[Path | str], paper: str) -> Path:
    """``<experiment>/compare-<paper>`` for one experiment; ``<parent>/compare-<paper>-<a>+<b>...`` for several (local, also for URIs)."""
    local = [_local(d) for d in directories]
    if len(local) == 1:
        return local[0] / f"compare-{paper}"
    names = "+".join(re.sub(r"[^\w.-]+", "_", d.resolve().name) for d in local)
    return local[0].resolve().parent / f"compare-{paper}-{names}"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (2 for bad input, before anything is written)."""
    parser = argparse.ArgumentParser(
        prog="python -m neqtune.results.compare",
        description="neqtune's mean ± std beside a paper's published table, cell by cell, with the paper's claims checked in your runs.",
    )
    parser.add_argument(
        "experiments",
        nargs="+",
        type=lambda text: text if "://" in text else Path(text),
        help="experiment directories (results/<experiment>, or a URI such as s3://bucket/prefix/<experiment>), merged",
    )
    parser.add_argument("--paper", required=True, choices=paper_names(), help="the paper whose table to compare with")
    parser.add_argument("--metric", choices=list(METRICS), default="final", help="final: the papers' metric (default); best-val: neqtune's headline")
    parser.add_argument("-o", "--out", type=Path, default=None, help="output directory (default: <experiment>/compare-<paper>)")
    args = parser.parse_args(argv)
    try:
        experiments = load_experiments(args.experiments)
        if args.out is not None and args.out.exists() and not args.out.is_dir():
            raise AnalysisInputError(f"{args.out}: exists and is not a directory")
    except AnalysisInputError as error:
        print(f"compare: error: {error}", file=sys.stderr)
        return 2
    paper = load_paper(args.paper)
    comparison = compare(paper, experiments, args.metric)
    out_dir = args.out if args.out is not None else default_out_dir(args.experiments, args.paper)
    written = write_comparison(paper, comparison, experiments.sources, args.metric, out_dir)
    print(comparison_markdown(paper, comparison, experiments.sources, args.metric, full=False))
    print(f"wrote {', '.join(p.name for p in written)} to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
