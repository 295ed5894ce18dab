"""Every shipped space passes ``run_search.py --dry-run`` on fixture data; a bad one exits 2."""

from __future__ import annotations

import math
import re
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from data_fixtures import fixture_env

from search.cli import main
from search.space import load_space
from trainables.config import ModelConfig
from trainables.models import build_model
from trainables.zoo import ZOO_NETS

SPACES = Path(__file__).resolve().parent.parent / "spaces"
STUDY_SPACES = sorted(p for p in SPACES.glob("*.yaml") if not p.name.startswith("digits"))


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """ImageNet weights of the spaces' models in their caches (state dicts of randomly initialised models)."""
    root = tmp_path_factory.mktemp("weights")
    weights = {
        "mbv2": torchvision.models.MobileNet_V2_Weights.DEFAULT,
        "resnet18": torchvision.models.ResNet18_Weights.DEFAULT,
        "resnet50": torchvision.models.ResNet50_Weights.DEFAULT,
    }
    for name, enum in weights.items():
        path = root / "torch" / "hub" / "checkpoints" / enum.url.rsplit("/", 1)[-1]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(build_model(ModelConfig(name=name), 1000).state_dict(), path)
    (root / "mcunet").mkdir()
    torch.save(
        {"state_dict": build_model(ModelConfig(name="mcunet-in1"), 1000).state_dict()}, root / "mcunet" / f"{ZOO_NETS['mcunet-in1']}.pth"
    )
    return {"TORCH_HOME": str(root / "torch"), "NEQ_MCUNET": str(root / "mcunet")}


@pytest.fixture(scope="module")
def data_and_weights(tmp_path_factory: pytest.TempPathFactory, weights_cache: dict[str, str]) -> dict[str, str]:
    return {**fixture_env(tmp_path_factory.mktemp("neq_data")), **weights_cache}


@pytest.fixture
def neq_data(data_and_weights: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """$NEQ_DATA with every data set's fixture, $TORCH_HOME and $NEQ_MCUNET with the weights; nothing is downloaded."""
    for key, value in data_and_weights.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    return data_and_weights


def _offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("[Errno -2] Name or service not known")


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
    text = (
        (SPACES / "c10_mcunet.yaml")
        .read_text()
        .replace("name: mcunet-in1", "name: proxyless-w0.3")
        .replace("pretrained: imagenet", "pretrained: null")
    )
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


def test_missing_imagenet_weights_offline_exit_2_naming_the_file(
    neq_data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEQ_MCUNET", str(tmp_path / "empty"))
    assert main(["--space", str(SPACES / "pets_mcunet_baseline.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    expected = tmp_path / "empty" / f"{ZOO_NETS['mcunet-in1']}.pth"
    assert (
        err.startswith("error: spaces/pets_mcunet_baseline.yaml: model.pretrained: the ImageNet weights of mcunet-in1 are not at")
        or "model.pretrained" in err
    )
    assert str(expected) in err and "put it at" in err and "\n" not in err
