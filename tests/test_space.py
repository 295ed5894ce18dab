"""Space files: every bad input is one line naming the file and the key, exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from torch import nn

from neqtune.search.cli import main
from neqtune.search.space import DEFAULT_SPACE, SpaceError, load_space
from neqtune.trainables.budget.schemes import get_scheme
from neqtune.trainables.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def good_space() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_SPACE.read_text())


def write(tmp_path: Path, space: Any) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(space if isinstance(space, str) else yaml.safe_dump(space))
    return path


def edit(change: dict[str, Any]) -> dict[str, Any]:
    space = good_space()
    for dotted, value in change.items():
        *parents, leaf = dotted.split("/")
        node = space
        for p in parents:
            node = node[p]
        node[leaf] = value
    return space


BAD_SPACES = {
    "unknown section": ({"trianing": {}}, "trianing"),
    "unknown key": ({"training/lrr": 0.1}, "training.lrr"),
    "wrong type": ({"training/epochs": "ten"}, "training.epochs"),
    "non-positive lr": ({"training/lr": 0.0}, "training.lr"),
    "unknown policy": ({"budget/policy": "greedy"}, "budget.policy"),
    "unknown model": ({"model/name": "vgg99"}, "model.name"),
    "unknown data set": ({"data/name": "mnist-9"}, "data.name"),
    "unknown scheme": ({"budget/scheme": "scheme_99"}, "budget.scheme"),
    "ratio zero": ({"budget/ratio": 0.0}, "budget.ratio"),
    "ratio above one": ({"budget/ratio": 1.5}, "budget.ratio"),
    "empty choice": ({"search/params/budget.policy": {"choice": []}}, "search.params.budget.policy.choice"),
    "unknown choice": ({"search/params/budget.policy": {"choice": ["velocity", "greedy"]}}, "search.params.budget.policy"),
    "unknown scheme choice": ({"search/params/budget.scheme": {"choice": ["nope"]}}, "search.params.budget.scheme"),
    "lr range reaching zero": ({"search/params/training.lr": {"uniform": [0.0, 0.1]}}, "search.params.training.lr"),
    "loguniform at zero": ({"search/params/training.lr": {"loguniform": [0.0, 0.1]}}, "search.params.training.lr.loguniform"),
    "ratio range above one": ({"search/params/budget.ratio": {"uniform": [0.5, 1.5]}}, "search.params.budget.ratio"),
    "searched key unknown": ({"search/params/training.speed": {"choice": [1]}}, "search.params.training.speed"),
    "two kinds in one param": ({"search/params/training.lr": {"choice": [0.1], "uniform": [0.1, 0.2]}}, "search.params.training.lr"),
    "grid with a range": ({"search/algorithm": "grid"}, "search.params.training.lr"),
    "bad algorithm": ({"search/algorithm": "bayes"}, "search.algorithm"),
    "zero samples": ({"search/num_samples": 0}, "search.num_samples"),
    "su without an su scheme": (
        {"search/params/budget.scheme": {"choice": ["scheme_1"]}},
        "search.params.budget.scheme: policy 'velocity' with initialization 'su' needs a scheme with an SU part",
    ),
    "su scheme outside the model": (
        {"search/params/budget.scheme": {"choice": ["proxyless-w0.3_scheme_2"]}},
        "search.params.budget.scheme: proxyless-w0.3_scheme_2: manual_weight_idx 54 is out of range",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_bad_space_is_one_line_with_file_and_key(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    change, key = BAD_SPACES[case]
    path = write(tmp_path, edit(change))
    monkeypatch.chdir(tmp_path)
    assert main(["--space", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {path}: {key}"), err
    assert not (tmp_path / "results").exists()
    assert main(["--space", str(path), "--dry-run"]) == 2  # a dry run reports every problem, this one first
    assert capsys.readouterr().err.strip().splitlines()[0] == err


def test_malformed_yaml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "training:\n  lr: [0.1\n  epochs: 3\n")
    assert main(["--space", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: malformed YAML: line ") and len(err.splitlines()) == 1


def test_a_space_must_be_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--space", str(write(tmp_path, "- just\n- a list\n"))]) == 2
    assert "must be a mapping" in capsys.readouterr().err


def test_missing_space_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--space", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.yaml'}: no such space file"


def test_bad_override_is_reported_with_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--set", "training.epochs=-3"]) == 2
    assert "training.epochs: must be >= 1" in capsys.readouterr().err


def test_cli_exit_code_and_nothing_written(tmp_path: Path) -> None:
    path = write(tmp_path, edit({"budget/policy": "greedy"}))
    done = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), "--space", str(path), "--results", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {path}: budget.policy: unknown policy 'greedy'; known policies: full, medyate, random, rgn, su, trady, velocity"
    ]
    assert not (tmp_path / "out").exists()


def test_default_space_loads_and_overrides_apply() -> None:
    space = load_space(None, overrides=[("training.epochs", 3), ("search.num_samples", 5)], search_overrides={"max_concurrent": 1})
    assert space.base["training"]["epochs"] == 3
    assert space.search.num_samples == 5 and space.search.max_concurrent == 1
    assert space.num_trials() == 5
    assert space.source == "spaces/digits.yaml"


def test_grid_counts_every_combination(tmp_path: Path) -> None:
    space = edit(
        {
            "search/algorithm": "grid",
            "search/num_samples": 1,
            "search/params": {"budget.policy": {"choice": ["velocity", "random"]}, "training.seed": {"choice": [0, 42, 100]}},
        }
    )
    assert load_space(write(tmp_path, space)).num_trials() == 6


def test_dry_run_prints_and_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dry-run"]) == 0
    assert "12 trials (optuna)" in capsys.readouterr().out


def test_the_studys_inconsistent_proxyless_scheme_says_why() -> None:
    # proxyless-w0.3 has 61 convs; scheme 1 updates the bias of the last 21 (40..60) but the weight of conv 39
    model = nn.Sequential(*[nn.Conv2d(1, 1, 1) for _ in range(61)])
    su = get_scheme("proxyless-w0.3_scheme_1").su
    assert su is not None
    with pytest.raises(ConfigError) as caught:
        su.check_fits(model, "proxyless-w0.3_scheme_1")
    assert str(caught.value) == (
        "budget.scheme: proxyless-w0.3_scheme_1: manual_weight_idx 39 lies outside the bias-updated tail: "
        "n_bias_update 21 of 61 convs covers indices 40..60"
    )
    get_scheme("proxyless-w0.3_scheme_2").su.check_fits(model, "proxyless-w0.3_scheme_2")  # type: ignore[union-attr]


# --- which searched values an error names ------------------------------------------------------------------------------
def space_error(tmp_path: Path, space: dict[str, Any]) -> str:
    with pytest.raises(SpaceError) as caught:
        load_space(write(tmp_path, space))
    return str(caught.value)


def test_an_error_about_an_unsearched_key_names_no_combination(tmp_path: Path) -> None:
    missing = tmp_path / "no-cifar"
    message = space_error(tmp_path, edit({"data/name": "c10", "data/root": str(missing)}))
    assert message.startswith(f"{tmp_path / 'space.yaml'}: data.root: "), message
    assert str(missing) in message and "(with" not in message and "budget.policy" not in message


def test_an_error_caused_by_a_searched_key_names_only_that_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEQ_DATA", str(tmp_path / "empty"))
    message = space_error(tmp_path, edit({"search/params/data.name": {"choice": ["digits", "c10"]}}))
    assert message.startswith(f"{tmp_path / 'space.yaml'}: data.root: "), message
    assert message.endswith("(with data.name=c10)"), message  # not the policy, scheme or lr it was tried with


def test_an_su_scheme_that_misfits_a_searched_model_names_the_model(tmp_path: Path) -> None:
    searched = {"model.name": {"choice": ["mbv2-w0.35"]}, "training.lr": {"loguniform": [0.01, 0.3]}}
    space = edit({"budget/policy": "su", "budget/scheme": "proxyless-w0.3_scheme_2", "search/params": searched})
    message = space_error(tmp_path, space)
    assert message.startswith(f"{tmp_path / 'space.yaml'}: budget.scheme: proxyless-w0.3_scheme_2: manual_weight_idx 54 is out of range")
    assert message.endswith("(with model.name=mbv2-w0.35)"), message


def test_a_searched_key_in_error_keeps_its_search_prefix_and_its_section_neighbours(tmp_path: Path) -> None:
    searched = {"training.nesterov": {"choice": [True]}, "training.momentum": {"choice": [0.0]}, "budget.policy": {"choice": ["random"]}}
    message = space_error(tmp_path, edit({"search/params": searched}))
    expected = "search.params.training.nesterov: needs momentum > 0 (with training.momentum=0.0, training.nesterov=True)"
    assert message == f"{tmp_path / 'space.yaml'}: {expected}"  # the policy it was tried with is no part of it


def test_a_policy_option_is_searched_by_its_dotted_key(tmp_path: Path) -> None:
    searched = {"budget.policy": {"choice": ["velocity", "random"]}, "budget.options.velocity.mu": {"uniform": [0.1, 0.9]}}
    space = load_space(write(tmp_path, edit({"search/params": searched})))
    assert "budget.options.velocity.mu" in space.search.params


def test_a_former_policy_key_may_still_be_searched(tmp_path: Path) -> None:
    space = good_space()
    del space["budget"]["options"]
    space["search"]["params"] = {"budget.velocity_mu": {"uniform": [0.1, 0.9]}}
    assert "budget.velocity_mu" in load_space(write(tmp_path, space)).search.params


@pytest.mark.parametrize(
    ("searched", "expected"),
    [
        ({"budget.options.velocity.mu": {"uniform": [0.5, 1.5]}}, "budget.options.velocity.mu: must lie in [0, 1], got 1.5"),
        ({"budget.options.velocity.momentum": {"choice": [0.5]}}, "budget.options.velocity.momentum: unknown key; known keys: mu"),
        ({"budget.options": {"choice": [0.5]}}, "search.params.budget.options: expected a mapping, got 0.5"),
    ],
)
def test_a_bad_searched_policy_option_names_its_key(tmp_path: Path, searched: dict[str, Any], expected: str) -> None:
    message = space_error(tmp_path, edit({"search/params": searched}))
    assert expected in message, message
