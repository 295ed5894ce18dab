"""TraDy, RGN and MeDyate, layer preselection, and the policy lifecycle contract every registered policy keeps."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from neqtune.search.cli import main
from neqtune.search.space import DEFAULT_SPACE
from neqtune.trainables import TrialConfig, train
from neqtune.trainables.budget.costs import Pricing
from neqtune.trainables.checks import check_config
from neqtune.trainables.config import ConfigError
from neqtune.trainables.metrics import metric_names
from neqtune.trainables.policies.base import get_policy, policy_metric_names, policy_names
from neqtune.trainables.policies.fill import medyate_policy, restrict_pricing, rgn_policy, trady_policy
from neqtune.trainables.policies.memory import lara_layers, top_share_layers
from neqtune.trainables.trainer import BudgetedRun, Metrics, StateFn, run_epoch

TIMING = ("epoch_time_s", "velocity_time_s", "ranking_time_s", "grad_norm_time_s", "grad_norm_overhead_pct")
MEMORY = 1500  # elements per image: mbv2-w0.35 at 8 px holds 32,432


def config(policy: str, options: dict[str, Any] | None = None, **budget: Any) -> dict[str, Any]:
    unit = get_policy(policy).units[0]
    own = {"ranking_batches": 2, **(options or {})} if get_policy(policy).preselects else dict(options or {})
    return {
        "data": {"name": "digits", "image_size": 8, "batch_size": 256},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": 2, "lr": 0.1},
        "budget": {
            "policy": policy,
            "unit": unit,
            "memory": MEMORY,
            "scheme": "mbv2-w0.35_scheme_3",
            "options": {policy: own},
            **budget,
        },
    }


def run(cfg: dict[str, Any], resume: dict[str, Any] | None = None) -> tuple[list[Metrics], list[dict[str, Any]]]:
    records: list[Metrics] = []
    states: list[dict[str, Any]] = []

    def report(metrics: Metrics, state: StateFn) -> None:
        records.append(metrics)
        buffer = io.BytesIO()  # through a file, as the Tune adapter checkpoints
        torch.save(state(), buffer)
        buffer.seek(0)
        states.append(torch.load(buffer, weights_only=False))

    train(cfg, report, resume=resume)
    return records, states


def comparable(metrics: Metrics) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in TIMING}


# --- the selection functions ---------------------------------------------------

layer_sizes = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 40)), min_size=1, max_size=5)
DRAWS = {"trady": trady_policy, "rgn": rgn_policy, "medyate": medyate_policy}


@settings(max_examples=60, deadline=None)
@given(layers=layer_sizes, budget=st.integers(0, 600), seed=st.integers(0, 2**31 - 1), fill=st.sampled_from(["prefix", "skip"]))
def test_new_draws_stay_within_budget_with_right_shapes_and_repeat(layers: list[tuple[int, int]], budget: int, seed: int, fill: str) -> None:
    pricing = Pricing.of({f"l{i}": torch.full((n,), p, dtype=torch.long) for i, (n, p) in enumerate(layers)}, fill)  # type: ignore[arg-type]
    scores = {k: torch.rand(v.numel(), generator=torch.Generator().manual_seed(seed)) for k, v in pricing.unit_cost.items()}
    total = int(pricing.flat_unit_cost().sum())
    for name, draw in DRAWS.items():
        masks = draw(scores, pricing, budget, torch.Generator().manual_seed(seed))
        again = draw(scores, pricing, budget, torch.Generator().manual_seed(seed))
        assert list(masks) == list(pricing.unit_cost), name
        assert all(torch.equal(masks[k], again[k]) for k in masks), name
        used = sum(int(pricing.unit_cost[k][m].sum()) for k, m in masks.items())
        assert used <= budget, name
        if fill == "skip" and budget >= total:
            assert used == total, name


def test_rgn_takes_the_highest_norm_per_cost_first() -> None:
    pricing = Pricing.of({"a": torch.tensor([10, 10]), "b": torch.tensor([1, 1])}, "skip")
    scores = {"a": torch.tensor([5.0, 1.0]), "b": torch.tensor([0.4, 0.2])}  # per cost: 0.5, 0.1 | 0.4, 0.2
    masks = rgn_policy(scores, pricing, 11, None)
    assert masks["a"].tolist() == [True, False] and masks["b"].tolist() == [True, False]


def test_medyate_never_draws_a_zero_norm_and_follows_the_norms() -> None:
    pricing = Pricing.of({"a": torch.ones(100, dtype=torch.long)}, "skip")
    weights = torch.zeros(100)
    weights[:10] = 100.0
    weights[10:50] = 0.01
    counts = torch.zeros(100)
    for seed in range(50):
        mask = medyate_policy({"a": weights}, pricing, 10, torch.Generator().manual_seed(seed))["a"]
        assert int(mask.sum()) == 10 and not mask[50:].any()
        counts += mask.double()
    assert counts[:10].mean() > 10 * counts[10:50].mean()


def test_restricted_pricing_keeps_only_the_named_convs() -> None:
    pricing = Pricing.of({"a": torch.ones(2, dtype=torch.long), "b": torch.ones(3, dtype=torch.long), "c": torch.ones(1, dtype=torch.long)})
    assert list(restrict_pricing(pricing, ["c", "a"]).unit_cost) == ["a", "c"]


def test_one_registry_holds_the_study_and_memory_policies() -> None:
    assert {"full", "medyate", "random", "rgn", "su", "trady", "velocity"} <= set(policy_names())


# --- layer preselection -----------------------------------------------------------


def test_top_rgn_share_takes_the_fewest_layers_reaching_the_share() -> None:
    rgn = [1.0, 6.0, 0.0, 3.0]
    assert top_share_layers(rgn, 0.6) == [1]
    assert top_share_layers(rgn, 0.61) == [1, 3]
    assert top_share_layers(rgn, 0.9) == [1, 3]
    assert top_share_layers(rgn, 1.0) == [0, 1, 3]
    assert top_share_layers([0.0, 0.0], 0.5) == [0, 1]


def test_lara_alpha_takes_the_smallest_k_with_budget_over_memory_at_most_alpha() -> None:
    lara, memory = [0.1, 0.9, 0.5], [100, 30, 60]
    assert lara_layers(lara, memory, 18, 0.2) == [1, 2]  # 18/30 > 0.2, 18/90 = 0.2
    assert lara_layers(lara, memory, 6, 0.2) == [1]
    assert lara_layers(lara, memory, 1000, 0.2) == [0, 1, 2]  # no K gets there: every conv


# --- the lifecycle contract, for every registered policy ------------------------------


MEASURES = {"ranking_time_s", "grad_norm_time_s", "grad_norm_overhead_pct"}
OWN_METRICS = {"trady": {"ranking_time_s"}, "rgn": MEASURES, "medyate": {*MEASURES, "channels_seen_pct"}}


@pytest.fixture(scope="module")
def straight_runs() -> dict[str, tuple[list[Metrics], list[dict[str, Any]]]]:
    return {policy: run(config(policy)) for policy in policy_names()}


@pytest.mark.parametrize("policy", policy_names())
def test_every_policy_keeps_its_budget_and_reports_its_metrics(
    policy: str, straight_runs: dict[str, tuple[list[Metrics], list[dict[str, Any]]]]
) -> None:
    records, _ = straight_runs[policy]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(metric_names()) <= set(r), set(metric_names()) - set(r)
        assert math.isfinite(r["train_loss"])
        if policy != "full":
            assert 0 < r["memory_used"] <= MEMORY
        assert r["layers_selected"] and all(0 <= i < 52 for i in r["layers_selected"])
        reported = {name for name in policy_metric_names() if r[name] is not None}
        assert reported == OWN_METRICS.get(policy, set()), reported
    if get_policy(policy).preselects:
        frozen = [i for i, pct in enumerate(records[0]["layer_frozen_pct"]) if pct < 100]
        assert set(frozen) <= set(records[0]["layers_selected"])


@pytest.mark.parametrize("policy", policy_names())
def test_every_policy_resumes_exactly(policy: str, straight_runs: dict[str, tuple[list[Metrics], list[dict[str, Any]]]]) -> None:
    straight, states = straight_runs[policy]
    resumed, _ = run(config(policy), resume=states[0])
    assert [comparable(r) for r in resumed] == [comparable(r) for r in straight[1:]]


@pytest.mark.parametrize("policy", policy_names())
def test_state_dict_round_trip(policy: str, straight_runs: dict[str, tuple[list[Metrics], list[dict[str, Any]]]]) -> None:
    _, states = straight_runs[policy]
    fresh = BudgetedRun(TrialConfig.from_dict(config(policy)))
    fresh.load_state_dict(states[-1])
    assert _same(fresh.state_dict()["policy"], states[-1]["policy"])
    assert all(torch.equal(fresh.masks[k], states[-1]["masks"][k]) for k in fresh.masks)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def test_a_restarted_run_keeps_the_stored_layer_ranking(straight_runs: dict[str, tuple[list[Metrics], list[dict[str, Any]]]]) -> None:
    _, states = straight_runs["trady"]
    state = {**states[0], "policy": {**states[0]["policy"], "layers": [40, 43, 46, 49]}}
    run_ = BudgetedRun(TrialConfig.from_dict(config("trady")))
    run_.load_state_dict(state)
    record = run_epoch(run_)  # trains with the stored masks, then draws inside the stored layers
    assert record["layers_selected"] == [40, 43, 46, 49]
    assert {i for i, mask in enumerate(run_.masks.values()) if mask.any()} <= {40, 43, 46, 49}


def test_static_rgn_keeps_its_first_mask_and_measures_only_at_the_start() -> None:
    run_ = BudgetedRun(TrialConfig.from_dict(config("rgn", {"refresh": "once", "layers": list(range(30, 52))})))
    first = {k: v.clone() for k, v in run_.masks.items()}
    assert run_.policy.reselect(run_) is None
    run_.next_masks()
    assert all(torch.equal(first[k], run_.masks[k]) for k in first)
    assert not any(m.any() for m in list(run_.masks.values())[:30])
    own = run_.policy.epoch_metrics(1.0)
    assert own["grad_norm_time_s"] == 0.0 and own["ranking_time_s"] > 0


def test_medyate_sees_more_channels_every_epoch(straight_runs: dict[str, tuple[list[Metrics], list[dict[str, Any]]]]) -> None:
    records, _ = straight_runs["medyate"]
    assert 0 < records[0]["channels_seen_pct"] < records[1]["channels_seen_pct"] <= 100


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "key", "message"),
    [
        ({"policy": "trady", "unit": "input_channel", "memory": 5000, "options": {"trady": {"layers": {"top_rgn_share": 0}}}}, "budget.options.trady.layers.top_rgn_share", "(0, 1]"),
        ({"policy": "trady", "unit": "input_channel", "memory": 5000, "options": {"trady": {"layers": {"top_rgn_share": 1.5}}}}, "budget.options.trady.layers.top_rgn_share", "(0, 1]"),
        ({"policy": "medyate", "unit": "input_channel", "memory": 5000, "options": {"medyate": {"layers": {"lara_alpha": 0}}}}, "budget.options.medyate.layers.lara_alpha", "> 0"),
        ({"policy": "medyate", "unit": "input_channel", "memory": 5000, "options": {"medyate": {"layers": {"alpha": 0.2}}}}, "budget.options.medyate.layers", "give one of"),
        ({"policy": "rgn", "unit": "input_channel", "memory": 5000, "options": {"rgn": {"refresh": "sometimes"}}}, "budget.options.rgn.refresh", "'once', 'epoch'"),
        ({"policy": "trady", "unit": "neuron", "memory": 5000}, "budget.unit", "needs unit input_channel"),
        ({"policy": "random", "memory": 5000, "options": {"random": {"layers": [1, 2]}}}, "budget.options.random.layers", "this policy takes no options"),
        ({"policy": "rgn", "unit": "input_channel", "memory": 5000, "options": {"rgn": {"ranking_batches": 0}}}, "budget.options.rgn.ranking_batches", ">= 1"),
        ({"policy": "rgn", "unit": "input_channel", "memory": 5000, "options": {"velocity": {"mu": 2}}}, "budget.options.velocity.mu", "[0, 1]"),
        ({"policy": "rgn", "unit": "input_channel", "memory": 5000, "options": {"rgn": {"mu": 0.5}}}, "budget.options.rgn.mu", "unknown key"),
        ({"policy": "rgn", "unit": "input_channel", "memory": 5000, "options": {"greedy": {}}}, "budget.options.greedy", "unknown policy"),
    ],
)
def test_bad_policy_values(values: dict[str, Any], key: str, message: str) -> None:
    """Ranges are refused when the section parses, what the policy accepts (its units, its options) when a trial is checked."""
    with pytest.raises(ConfigError) as caught:
        check_config(TrialConfig.from_dict({"budget": values}))
    assert caught.value.key == key and message in caught.value.message, caught.value


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"options": {"rgn": {"layers": [3, 99]}}}, "budget.options.rgn.layers: conv index 99 is out of range: the model has 52 convs"),
        ({"options": {"rgn": {"layers": [1, 2]}}}, "budget.options.rgn.layers: convs [1, 2] hold"),
        ({"options": {"rgn": {"layers": {"top_rgn_share": 0.0}}}}, "budget.options.rgn.layers.top_rgn_share: must lie in (0, 1], got 0.0"),
        ({"options": {"rgn": {"layers": {"lara_alpha": -1}}}}, "budget.options.rgn.layers.lara_alpha: must be > 0, got -1"),
        ({"options": {"rgn": {"refresh": "never"}}}, "budget.options.rgn.refresh: expected one of 'once', 'epoch', got 'never'"),
        ({"unit": "neuron"}, "budget.unit: policy 'rgn' does not select neuron channels"),
    ],
)
def test_bad_policies_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], budget: dict[str, Any], message: str) -> None:
    space = yaml.safe_load(DEFAULT_SPACE.read_text())
    space["budget"] = {"policy": "rgn", "unit": "input_channel", "memory": 6000, **budget}
    space["data"]["image_size"] = 16
    space["search"]["params"] = {"training.lr": {"loguniform": [0.01, 0.3]}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert main(["--space", str(path), "--results", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {path}: {message}"), err
    assert not (tmp_path / "out").exists()


# --- the former flat keys ---------------------------------------------------------


def test_former_policy_keys_move_to_the_policies_options() -> None:
    budget = TrialConfig.from_dict(
        {"budget": {"policy": "medyate", "velocity_mu": 0.3, "rgn_refresh": "once", "ranking_batches": 4, "layers": {"lara_alpha": 0.1}}}
    ).budget
    assert budget.options == {"velocity": {"mu": 0.3}, "rgn": {"refresh": "once"}, "medyate": {"ranking_batches": 4, "layers": {"lara_alpha": 0.1}}}
    assert TrialConfig.from_dict({"budget": {"policy": "velocity", "ranking_batches": 4}}).budget.options == {"trady": {"ranking_batches": 4}}


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"velocity_mu": 0.3, "options": {"velocity": {"mu": 0.5}}}, "budget.velocity_mu: given twice, as budget.velocity_mu and as budget.options.velocity.mu"),
        ({"policy": "rgn", "layers": [1], "options": {"rgn": {"layers": [2]}}}, "budget.layers: given twice, as budget.layers and as budget.options.rgn.layers"),
        ({"policy": "random", "layers": [1, 2]}, "budget.layers: policy 'random' selects from every layer; layers applies to trady, rgn and medyate"),
    ],
)
def test_former_policy_keys_refused_where_they_clash(budget: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrialConfig.from_dict({"budget": budget})


def test_a_former_key_gives_the_same_run_as_the_new_one() -> None:
    old = config("rgn", {"refresh": "once"})
    del old["budget"]["options"]
    old["budget"] |= {"rgn_refresh": "once", "ranking_batches": 2}
    assert TrialConfig.from_dict(old) == TrialConfig.from_dict(config("rgn", {"refresh": "once"}))
