"""Offline reproduction of TraDy's Table-1 comparison (memory budgets, input channels), on digits.

``python -m benchmarks.memory_reproduction`` runs, on this machine and with
nothing downloaded:

1. **Pretraining.** The MCUNet zoo's ``mbv2-w0.35-zoo`` has ImageNet
   weights in the papers; offline there are none, and a sparse update of a
   random network learns next to nothing. So the network is first trained
   in full on Fashion-MNIST (Debian's ``dataset-fashion-mnist``, 60,000
   images) at the reproduction's image size, and the fine-tuning starts
   from those weights (a new 10-way head): a transfer from one small
   grey-image task to another, where the papers go from ImageNet to seven
   data sets. The weights go to ``results/memory-reproduction/``
   (regenerated, not committed; seed 0).
2. **The three searches** of ``docs/memory/``: ``digits_memory.yaml``
   (su, random = D-Full Random, rgn = D-Det RGN, trady, medyate on input
   channels x TTE's SU schemes 1 / 3 / 5 re-costed at the image size x
   seeds 0 / 42 / 100), ``digits_velocity.yaml`` (velocity on output
   neurons at the schemes' parameter budgets, as TraDy ran it) and
   ``digits_full.yaml`` (full update, the ceiling). They run through
   ``run_search.py``, into ``--results``.
3. **The analysis**: ``python -m neqtune.results.analyze`` over the three
   experiments into ``docs/memory/analysis/``, and ``docs/memory/report.md``:
   per policy and budget, the mean and spread over seeds of the test top-1
   at the best validation epoch and of the final epoch's test top-1, the
   memory used (kB at 4 bytes per element), the epoch time, the
   gradient-norm overhead; then which of the papers' orderings hold.

``--render`` rebuilds the report from the experiments already under
``--results``; ``--quick`` runs everything at toy sizes (1 seed, 2 epochs)
into ``results/memory-reproduction-quick`` to check the pipeline, never over
the committed report.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks.report import mean_std, table_lines

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "memory"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
MODEL = "mbv2-w0.35-zoo"
SCHEMES = [f"mbv2-w0.35_scheme_{k}" for k in (1, 3, 5)]
SEEDS = [0, 42, 100]
MEMORY_POLICIES = ["su", "random", "rgn", "trady", "medyate"]
SPACES = {"memory": "digits_memory.yaml", "velocity": "digits_velocity.yaml", "full": "digits_full.yaml"}
BYTES_PER_ELEMENT = 4
KB = 1024  # bytes, as memory_used_kb and neqtune.results.analyze count them


def weights_file(results: Path, image_size: int) -> Path:
    return results / "memory-reproduction" / f"fashion-mnist_{MODEL}_{image_size}px.pt"


def pretrain(path: Path, *, image_size: int, epochs: int, echo: Any = print) -> None:
    """Train ``mbv2-w0.35-zoo`` in full on Fashion-MNIST and save its weights (state dict) at ``path``."""
    import torch

    from neqtune.trainables import train

    config = {
        "data": {"name": "fashion-mnist", "root": FASHION_ROOT, "image_size": image_size, "batch_size": 128, "velocity_images": 10,
                 "val_fraction": 0.05},
        "model": {"name": MODEL, "pretrained": None},
        "training": {"epochs": epochs, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-5, "seed": 0},
        "budget": {"policy": "full", "scheme": None},
    }  # fmt: skip
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any], state: Any) -> None:
        last["model"] = state()["model"]
        echo(f"  pretrain epoch {metrics['epoch']}/{epochs}: train top-1 {metrics['train_top1']:.1f}%, "
             f"val top-1 {metrics['val_top1']:.1f}%, {metrics['epoch_time_s']:.0f} s")  # fmt: skip

    train(config, report)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(last["model"], path)
    echo(f"  weights: {path} ({path.stat().st_size / 1e6:.1f} MB)")


def space(kind: str, *, weights: Path, image_size: int, epochs: int, warmup: int, seeds: list[int], experiment: str) -> dict[str, Any]:
    """The space of one of the three searches (see the module docstring)."""
    policies = {"memory": MEMORY_POLICIES, "velocity": ["velocity"], "full": ["full"]}[kind]
    params: dict[str, Any] = {"budget.policy": {"choice": policies}}
    if kind != "full":
        params["budget.scheme"] = {"choice": SCHEMES}
    params["training.seed"] = {"choice": seeds}
    return {
        "experiment": experiment,
        "data": {"name": "digits", "image_size": image_size, "batch_size": 32, "velocity_images": 10, "val_fraction": 0.2,
                 "test_fraction": 0.2},
        "model": {"name": MODEL, "pretrained": os.path.relpath(weights, ROOT)},
        # TraDy's recipe: SGD without momentum or weight decay, cosine from 0.125 to 0 after a linear warm-up.
        "training": {"epochs": epochs, "warmup_epochs": warmup, "warmup_lr": 0.0, "optimizer": "sgd", "momentum": 0.0,
                     "weight_decay": 0.0, "lr": 0.125, "final_lr": 0.0, "seed": 0},
        "budget": {"policy": policies[0], "unit": "neuron" if kind == "velocity" else "input_channel",
                   "scheme": None if kind == "full" else SCHEMES[0],
                   "options": {"rgn": {"refresh": "epoch"}, "velocity": {"mu": 0.5}}},
        "search": {"algorithm": "grid", "num_samples": 1, "max_concurrent": 2, "cpus_per_trial": 1, "metric": "best_val_top1",
                   "mode": "max", "params": params},
    }  # fmt: skip


HEADER = """\
# Offline reproduction of TraDy's Table 1 comparison on digits: {kind}.
# Written by benchmarks/memory_reproduction.py (see its docstring): mbv2-w0.35-zoo pretrained in full on
# Fashion-MNIST ({image_size} px), fine-tuned on digits at {image_size} px with TraDy's recipe (SGD, no momentum,
# cosine 0.125 -> 0 after {warmup} warm-up epochs, {epochs} epochs), seeds {seeds}.
# Budgets: TTE's SU schemes 1 / 3 / 5 of mbv2-w0.35; on input channels a scheme's memory is its SU mask's weight +
# input-activation elements at {image_size} px (TraDy printed them at 128 px); velocity gets the schemes' parameter budgets.
#
#   python -m benchmarks.memory_reproduction      (pretrains, then runs this space from the repository root)
"""


def run(space_file: Path, results: Path, name: str, echo: Any = print) -> None:
    started = time.monotonic()
    echo(f"search {space_file.relative_to(ROOT)}")
    command = [sys.executable, str(ROOT / "run_search.py"), "--space", str(space_file), "--results", str(results), "--name", name]
    subprocess.run(command, cwd=ROOT, check=True)
    echo(f"  done in {(time.monotonic() - started) / 60:.1f} min")


def summary(experiments: list[Path], budget_key: str = "budget.scheme") -> pd.DataFrame:
    """One row per trial: its policy, its budget (``budget_key``'s value, in the column ``scheme``), seed, test top-1 at
    best val and at the last epoch, memory, times."""
    rows = []
    for directory in experiments:
        epochs = pd.read_parquet(directory / "epochs.parquet")
        for _, trial in epochs.groupby("trial_id"):
            trial = trial.sort_values("epoch")
            last = trial.iloc[-1]
            rows.append({
                "policy": last["budget.policy"],
                "scheme": last.get(budget_key) if last["budget.policy"] != "full" else "-",
                "seed": int(last["training.seed"]),
                "test_top1_at_best_val": float(last["test_top1_at_best_val"]),
                "final_test_top1": float(last["test_top1"]),
                "memory_budget": last.get("memory_budget"),
                "memory_used": float(trial["memory_used"].mean()),
                "params_updated": float(trial["params_updated"].mean()),
                "epoch_time_s": float(trial["epoch_time_s"].median()),
                "grad_norm_overhead_pct": float(trial["grad_norm_overhead_pct"].median()) if "grad_norm_overhead_pct" in trial else math.nan,
            })  # fmt: skip
    return pd.DataFrame(rows)


def _scheme_label(scheme: Any) -> str:
    return str(scheme).rpartition("_")[2].replace("scheme", "") if scheme != "-" else "-"


CAVEATS = (
    "Digits (1,797 images of 8 x 8 pixels, 1,140 to train on) upsampled to 32 px, from a network pretrained on Fashion-MNIST for a few "
    "epochs, is a far easier and far smaller transfer than ImageNet to the papers' seven data sets at 128 px: top-1 sits near the "
    "ceiling, the seeds' spread (about 1 point) is as large as most gaps, and 3 seeds cannot separate policies closer than that. "
    "The budgets are the schemes' SU masks re-costed at 32 px, so activations weigh 16 times less against weights than in the "
    "papers. D-Det RGN is an oracle that measures every preselected channel's gradient norm after each epoch (its overhead column); "
    "the papers find TraDy matches it, here it does not. Velocity's memory is what its masks keep: TraDy gives it the schemes' "
    "parameter budgets, not a memory budget, so it holds more than the others."
)


def report(trials: pd.DataFrame, *, image_size: int, epochs: int, warmup: int, pretrain_note: str) -> str:
    """The Markdown report: the table, then the orderings of the papers checked on these numbers."""
    order = ["full", "su", "velocity", "random", "rgn", "trady", "medyate"]
    lines = [
        "# Memory budgets on digits: TraDy's Table 1 comparison, offline",
        "",
        f"`python -m benchmarks.memory_reproduction`; {pretrain_note} Fine-tuned on digits at {image_size} px, "
        f"{warmup} + {epochs} epochs of TraDy's recipe (SGD without momentum, cosine from 0.125 to 0), seeds {SEEDS}. "
        "Budgets: TTE's SU schemes 1 / 3 / 5 of mbv2-w0.35, as memory (weight + conv-input activation elements per image) "
        f"re-costed at {image_size} px for the input-channel policies, as parameters for velocity (TraDy's way). "
        "Top-1 in %, mean ± standard deviation over the seeds; memory in kB (1,024 bytes) at 4 bytes per element, the mean over epochs of "
        "what the masks keep; epoch time the median over the trial's epochs (2 trials at a time on 2 CPU cores).",
        "",
    ]
    header = ["budget", "policy", "test top-1 at best val", "final test top-1", "memory used (kB)", "budget (kB)", "params updated", "epoch (s)",
              "grad-norm overhead"]  # fmt: skip
    rows = []
    trials = trials.assign(rank=trials.policy.map({p: i for i, p in enumerate(order)}))
    for (scheme, policy), group in trials.sort_values(["scheme", "rank"]).groupby(["scheme", "policy"], sort=False):
        budget = group.memory_budget.dropna()
        overhead = group.grad_norm_overhead_pct.dropna()
        cells = [
            _scheme_label(scheme),
            policy,
            mean_std(group.test_top1_at_best_val),
            mean_std(group.final_test_top1),
            f"{group.memory_used.mean() * BYTES_PER_ELEMENT / KB:.1f}",
            f"{budget.mean() * BYTES_PER_ELEMENT / KB:.1f}" if len(budget) else "-",
            f"{group.params_updated.mean():,.0f}",
            f"{group.epoch_time_s.median():.2f}",
            f"{overhead.median():.1f} %" if len(overhead) else "-",
        ]
        rows.append(cells)
    return report_text([*lines, *table_lines(header, rows)], "The papers' orderings, here", orderings(trials), CAVEATS)


def report_text(table: list[str], orderings_title: str, found: list[str], caveats: str) -> str:
    """A reproduction report: its header and table lines, the orderings checked, then how far it is from the papers."""
    return "\n".join([*table, "", f"## {orderings_title}", "", *found, "", "## How far this is from the papers", "", caveats]) + "\n"


def orderings(trials: pd.DataFrame) -> list[str]:
    """Each ordering TraDy and MeDyate report, checked per budget on the mean test top-1 at best validation."""
    mean = trials.groupby(["scheme", "policy"]).test_top1_at_best_val.mean()
    found = []
    for scheme in sorted(s for s in trials.scheme.unique() if s != "-"):
        at = mean.loc[scheme]

        def holds(left: str, right: str, *, at: pd.Series = at) -> str:
            if left not in at or right not in at:
                return f"{left} vs {right}: not run"
            verdict = "holds" if at[left] >= at[right] else "does not hold"
            return f"{left} {at[left]:.1f} vs {right} {at[right]:.1f}: {verdict}"

        dynamic = max(at.get(p, -1.0) for p in ("random", "trady", "medyate"))
        static = at.get("su", math.nan)
        checks = [
            f"dynamic (best of random, trady, medyate: {dynamic:.1f}) > static (su: {static:.1f}): {'holds' if dynamic > static else 'does not hold'}",
            f"TraDy ≥ D-Det RGN: {holds('trady', 'rgn')}",
            f"MeDyate ≥ TraDy: {holds('medyate', 'trady')}",
            "velocity close behind TraDy (within 2 points): "
            + (f"{at['velocity']:.1f} vs {at['trady']:.1f}: {'holds' if at['trady'] - at['velocity'] <= 2.0 else 'does not hold'}"
               if "velocity" in at and "trady" in at else "not run"),
        ]  # fmt: skip
        found.append(f"- scheme {_scheme_label(scheme)}: " + "; ".join(checks))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_reproduction", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="where the experiments go (default: results/)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=18, help="cosine epochs of the fine-tuning (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--render", action="store_true", help="rebuild the report from the experiments under --results")
    parser.add_argument("--quick", action="store_true", help="toy sizes into results/memory-reproduction-quick")
    args = parser.parse_args(argv)
    if not Path(FASHION_ROOT).is_dir() and not args.render:
        print(f"memory_reproduction: no Fashion-MNIST at {FASHION_ROOT} (apt-get install dataset-fashion-mnist)", file=sys.stderr)
        return 2
    seeds, prefix, docs = SEEDS, "memrepro", DOCS
    if args.quick:
        args.results = ROOT / "results" / "memory-reproduction-quick"
        args.epochs, args.warmup, args.pretrain_epochs, seeds, prefix = 2, 0, 1, [0], "memrepro-quick"
        docs = args.results / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    weights = weights_file(args.results, args.image_size)
    experiments = [args.results / f"{prefix}-{kind}" for kind in SPACES]
    pretrain_note = (f"`mbv2-w0.35-zoo` pretrained in full on Fashion-MNIST for {args.pretrain_epochs} epochs at "
                     f"{args.image_size} px (no ImageNet weights offline).")  # fmt: skip
    if not args.render:
        if not weights.is_file():
            print(f"pretraining {MODEL} on Fashion-MNIST, {args.pretrain_epochs} epochs at {args.image_size} px")
            pretrain(weights, image_size=args.image_size, epochs=args.pretrain_epochs)
        for (kind, name), experiment in zip(SPACES.items(), experiments, strict=True):
            space_file = docs / name
            body = space(kind, weights=weights, image_size=args.image_size, epochs=args.epochs, warmup=args.warmup, seeds=seeds,
                         experiment=experiment.name)  # fmt: skip
            header = HEADER.format(kind=kind, image_size=args.image_size, warmup=args.warmup, epochs=args.epochs, seeds=seeds)
            space_file.write_text(header + "\n" + yaml.safe_dump(body, sort_keys=False))
            run(space_file, args.results, experiment.name)
    analysis = docs / "analysis"
    subprocess.run([sys.executable, "-m", "neqtune.results.analyze", *map(str, experiments), "-o", str(analysis)], cwd=ROOT, check=True)
    trials = summary(experiments)
    trials.to_csv(docs / "trials.csv", index=False)
    text = report(trials, image_size=args.image_size, epochs=args.epochs, warmup=args.warmup, pretrain_note=pretrain_note)
    (docs / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
