"""The TraDy Table 1 study spaces (spaces/tradyt1): the recipe, a clean dry run on fixture data, exit 2 without data."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import yaml
from data_fixtures import fixture_env

from neqtune.search.cli import main
from neqtune.search.space import load_space
from neqtune.trainables.config import ModelConfig
from neqtune.trainables.models.registry import build_model
from neqtune.trainables.models.zoo import ZOO_NETS

SPACES = Path(__file__).resolve().parent.parent / "spaces" / "tradyt1"
FILES = sorted(SPACES.glob("*.yaml"))
DATA = ("c10", "c100", "cub", "flowers", "food", "pets", "vww")
MODELS = ("mbv2-w0.35-zoo", "mcunet-in1", "proxyless-w0.3")
EPOCHS = {"c10": 100, "c100": 50, "cub": 200, "flowers": 200, "food": 50, "pets": 200, "vww": 50}


@pytest.fixture(scope="module")
def zoo_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The zoo cache with 'ImageNet' weights of the three models (state dicts of randomly initialised ones)."""
    root = tmp_path_factory.mktemp("mcunet")
    for name in MODELS:
        torch.save({"state_dict": build_model(ModelConfig(name=name), 1000).state_dict()}, root / f"{ZOO_NETS[name]}.pth")
    return str(root)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, zoo_weights: str) -> None:
    monkeypatch.setenv("NEQ_MCUNET", zoo_weights)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)


def _offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_every_data_set_and_model_has_its_pair_of_spaces_with_the_recipe() -> None:
    assert {p.stem for p in FILES} == {f"{d}_{m}{v}" for d in DATA for m in MODELS for v in ("", "_velocity")}
    for path in FILES:
        raw = yaml.safe_load(path.read_text())
        training, params = raw["training"], raw["search"]["params"]
        assert path.read_text().startswith("# Reproduces TraDy's Table 1 setting")
        assert "root" not in raw["data"] and raw["data"]["image_size"] == 128 and raw["model"]["pretrained"] == "imagenet"
        assert (training["optimizer"], training["momentum"], training["lr"], training["final_lr"]) == ("sgd", 0.0, 0.125, 0.0)
        assert training["warmup_epochs"] == 5 and training["epochs"] == EPOCHS[raw["data"]["name"]]
        assert params["training.seed"] == {"choice": [0, 42, 100]}
        velocity = path.stem.endswith("_velocity")
        assert params["budget.policy"]["choice"] == (["velocity"] if velocity else ["su", "random", "rgn", "trady", "medyate"])
        assert raw["budget"]["unit"] == ("neuron" if velocity else "input_channel") and raw["budget"]["options"]["rgn"]["refresh"] == "epoch"
        assert len(params["budget.scheme"]["choice"]) == 3


@pytest.mark.parametrize("model", MODELS)
def test_the_spaces_dry_run_clean_on_fixture_data(
    model: str, offline: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(1)
    data = {"mbv2-w0.35-zoo": "c10", "mcunet-in1": "flowers", "proxyless-w0.3": "vww"}[model]
    for key, value in fixture_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    for stem in (f"{data}_{model}", f"{data}_{model}_velocity"):
        path = SPACES / f"{stem}.yaml"
        assert main(["--space", str(path), "--dry-run"]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert out.startswith(f"{path}: valid; {load_space(path).grid_size()} trials (grid)")


@pytest.mark.parametrize("path", FILES[::5], ids=lambda p: p.stem)
def test_without_data_the_dry_run_exits_2_naming_the_missing_root(
    path: Path, offline: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEQ_DATA", str(tmp_path / "no_data"))
    assert main(["--space", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    name = yaml.safe_load(path.read_text())["data"]["name"]
    assert "\n" not in err and str(tmp_path / "no_data" / name) in err, err
