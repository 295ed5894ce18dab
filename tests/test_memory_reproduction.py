"""The offline memory-budget reproduction's spaces and report (benchmarks/memory_reproduction.py), without running it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.memory_reproduction import MEMORY_POLICIES, SCHEMES, SEEDS, orderings, report, space
from neqtune.search.space import build_space


@pytest.mark.parametrize("kind", ["memory", "velocity", "full"])
def test_the_three_spaces_load_and_search_what_the_paper_compares(kind: str, tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"")  # only its existence is checked when the space loads
    body = space(kind, weights=weights, image_size=32, epochs=18, warmup=2, seeds=SEEDS, experiment=f"r-{kind}")
    built = build_space(body, f"{kind}.yaml")
    params = {key: spec.choice for key, spec in built.search.params.items()}
    expected = {"memory": MEMORY_POLICIES, "velocity": ["velocity"], "full": ["full"]}[kind]
    assert params == {"budget.policy": expected, **({} if kind == "full" else {"budget.scheme": SCHEMES}), "training.seed": SEEDS}
    assert built.base["budget"]["unit"] == ("neuron" if kind == "velocity" else "input_channel")
    assert built.base["training"]["lr"] == 0.125 and built.base["training"]["momentum"] == 0.0


def trial(policy: str, scheme: str, seed: int, top1: float) -> dict[str, object]:
    return {"policy": policy, "scheme": scheme, "seed": seed, "test_top1_at_best_val": top1, "final_test_top1": top1 - 1,
            "memory_budget": None if policy in ("velocity", "full") else 1000.0, "memory_used": 990.0, "params_updated": 500.0,
            "epoch_time_s": 0.5, "grad_norm_overhead_pct": 3.0 if policy in ("rgn", "medyate") else float("nan")}  # fmt: skip


def test_the_report_tabulates_each_policy_and_budget_and_checks_the_papers_orderings() -> None:
    scores = {"su": 50.0, "random": 60.0, "rgn": 58.0, "trady": 61.0, "medyate": 59.0, "velocity": 60.0}
    rows = [trial(p, s, seed, v + seed / 100) for s in SCHEMES[:2] for p, v in scores.items() for seed in SEEDS]
    rows += [trial("full", "-", seed, 90.0) for seed in SEEDS]
    text = report(pd.DataFrame(rows), image_size=32, epochs=18, warmup=2, pretrain_note="pretrained.")
    table = [line for line in text.splitlines() if line.startswith("| ") and "policy" not in line]
    assert len(table) == 1 + 2 * len(scores)  # full once, every other policy per budget
    assert table[0].startswith("| - | full | 90.0 ± 0.0 | 89.0 ± 0.0 |")
    rgn = next(line for line in table if line.startswith("| 1 | rgn |"))
    assert "| 3.9 | 3.9 | 500 | 0.50 | 3.0 % |" in rgn  # kB (1,024 bytes) at 4 bytes per element, the overhead
    checks = orderings(pd.DataFrame(rows))
    assert len(checks) == 2 and checks[0].startswith("- scheme 1: dynamic (best of random, trady, medyate: 61.5) > static (su: 50.5): holds")
    assert "TraDy ≥ D-Det RGN: trady 61.5 vs rgn 58.5: holds" in checks[0]
    assert "MeDyate ≥ TraDy: medyate 59.5 vs trady 61.5: does not hold" in checks[0]
    assert "velocity close behind TraDy (within 2 points): 60.5 vs 61.5: holds" in checks[0]
