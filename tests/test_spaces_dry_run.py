"""Every shipped space passes ``run_search.py --dry-run`` on fixture data; a bad one exits 2."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from data_fixtures import fixture_env

from search.cli import main
from search.space import load_space

SPACES = Path(__file__).resolve().parent.parent / "spaces"
STUDY_SPACES = sorted(p for p in SPACES.glob("*.yaml") if not p.name.startswith("digits"))


@pytest.fixture(scope="module")
def neq_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return fixture_env(tmp_path_factory.mktemp("neq_data"))


def test_there_is_a_space_for_every_sweep_of_the_study() -> None:
    names = {p.stem for p in STUDY_SPACES}
    for data in ("c10", "c100", "cub", "flowers", "food", "pets"):
        assert {f"{data}_mcunet", f"{data}_mcunet_baseline"} <= names
    for model in ("mbv2", "resnet18", "resnet50"):
        assert {f"c10_{model}", f"c10_{model}_baseline", f"c10_{model}_fixed_budget"} <= names
    assert {"flowers_mbv2_baseline", "vww", "vww_baseline"} <= names


@pytest.mark.parametrize("space_file", STUDY_SPACES, ids=lambda p: p.stem)
def test_dry_run_of_every_study_space(
    space_file: Path, neq_data: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(1)
    for key, value in neq_data.items():
        monkeypatch.setenv(key, value)
    raw = yaml.safe_load(space_file.read_text())
    assert "root" not in raw["data"], "data roots come from $NEQ_DATA"
    assert raw["search"]["algorithm"] == "grid" and "training.seed" in raw["search"]["params"]
    assert raw["search"]["params"]["training.seed"] == {"choice": [0, 42, 100]}
    assert space_file.read_text().startswith("# Reproduces the study's"), "a comment block says what it reproduces"

    assert main(["--space", str(space_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    space = load_space(space_file)
    expected_trials = math.prod(len(spec.choice or []) for spec in space.search.params.values())
    assert out.startswith(f"{space_file}: valid; {expected_trials} trials (grid)")
    assert re.search(rf"^data {raw['data']['name']}: \d+ classes", out, re.M)
    model = raw["model"]["name"]
    assert re.search(rf"^model {re.escape(model)} \(.*\): \d+ convs, [\d,]+ conv parameters", out, re.M)
    budgets = re.findall(r"^  .*: budget ([\d,]+) parameters", out, re.M)
    schemes = space.search.params.get("budget.scheme")
    assert len(budgets) == (len(schemes.choice or []) if schemes else 1)
    assert all(int(b.replace(",", "")) > 0 for b in budgets)
    policies = space.search.params["budget.policy"].choice if "budget.policy" in space.search.params else [raw["budget"]["policy"]]
    if "su" in (policies or []):
        assert "does not fit" not in out and "SU mask on" in out


def test_dry_run_prints_the_study_budgets(
    neq_data: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in neq_data.items():
        monkeypatch.setenv(key, value)
    assert main(["--space", str(SPACES / "c10_resnet18.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "11,166,912 conv parameters" in out
    assert f"scheme mbv2_scheme_1: budget {int(11_166_912 * 0.0878233231):,} parameters" in out
    assert main(["--space", str(SPACES / "c10_mcunet.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "42 convs, 463,216 conv parameters" in out
    assert "scheme mcunet-in1_scheme_1: budget 12,096 parameters (2.61% of the convs); SU mask on 6 convs fits" in out


def test_a_bad_space_exits_2_naming_the_key(
    tmp_path: Path, neq_data: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in neq_data.items():
        monkeypatch.setenv(key, value)
    text = (SPACES / "c10_mcunet.yaml").read_text().replace("name: mcunet-in1", "name: proxyless-w0.3")
    text = text.replace("mcunet-in1_scheme_1, mcunet-in1_scheme_2", "proxyless-w0.3_scheme_1, proxyless-w0.3_scheme_2")
    text = text.replace("scheme: mcunet-in1_scheme_1", "scheme: proxyless-w0.3_scheme_2")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["--space", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "bad.yaml: search.params.budget.scheme: proxyless-w0.3_scheme_1: manual_weight_idx 39 lies outside the bias-updated tail" in err

    missing = tmp_path / "missing_data.yaml"
    missing.write_text(
        (SPACES / "pets_mcunet_baseline.yaml").read_text().replace("  name: pets", f"  name: pets\n  root: {tmp_path / 'nowhere'}")
    )
    assert main(["--space", str(missing), "--dry-run"]) == 2
    assert "data.root" in capsys.readouterr().err
