"""TraDy's SwinT study spaces (spaces/trady_swint): the data sets, budgets, policies and recipe; the baseline dry-runs clean.

The budgeted spaces' dry run (budgets in elements of Conv2d and Linear layers) is tested with the Linear cost model.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import yaml
from data_fixtures import fixture_env

from neqtune.search.cli import main

SPACES = Path(__file__).resolve().parent.parent / "spaces" / "trady_swint"
FILES = sorted(SPACES.glob("*.yaml"))
DATA = ("c10", "c100", "cub", "flowers", "food", "pets", "vww")
EPOCHS = {"c10": 100, "c100": 50, "cub": 200, "flowers": 200, "food": 50, "pets": 200, "vww": 50}
BUDGETS = [27_946, 112_640, 633_859, 2_767_686]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fixture data under $NEQ_DATA, an empty torch hub cache, and no network: a dry run must fetch nothing."""
    for key, value in fixture_env(tmp_path / "data").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    torch.set_num_threads(1)


def _offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_every_data_set_has_its_budgeted_grid_and_its_baseline_with_the_recipe() -> None:
    assert {p.stem for p in FILES} == {f"{d}_swin_t{v}" for d in DATA for v in ("", "_full")}
    for path in FILES:
        text = path.read_text()
        raw = yaml.safe_load(text)
        training, params, budget = raw["training"], raw["search"]["params"], raw["budget"]
        assert text.startswith("# Reproduces TraDy's SwinT rows") and "no recipe for the transformer rows" in text
        assert raw["model"] == {"name": "swin_t", "pretrained": "imagenet"} and "root" not in raw["data"] and raw["data"]["image_size"] == 128
        assert (training["optimizer"], training["momentum"], training["lr"], training["final_lr"]) == ("sgd", 0.0, 0.125, 0.0)
        assert training["warmup_epochs"] == 5 and training["epochs"] == EPOCHS[raw["data"]["name"]]
        assert params["training.seed"] == {"choice": [0, 42, 100]}
        if path.stem.endswith("_full"):
            assert budget == {"policy": "full"} and set(params) == {"training.seed"}
        else:
            assert params["budget.policy"] == {"choice": ["random", "rgn", "trady"]}  # D-Full Random, D-Det RGN, TraDy
            assert params["budget.memory"] == {"choice": BUDGETS}
            assert budget["unit"] == "input_channel" and budget["options"]["rgn"] == {"refresh": "epoch"}


def test_the_baselines_dry_run_clean_and_fetch_nothing(offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = SPACES / "flowers_swin_t_full.yaml"
    assert main(["--space", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: valid; 3 trials (grid)")
    assert "model swin_t (torchvision, native 128 px, run at 128 px, pretrained imagenet)" in out
    assert "ImageNet weights: not cached; a run downloads https://download.pytorch.org/models/swin_t-704ceda3.pth" in out
    assert "parameters: full update, all 27,527,044 train" in out  # the dry run builds every model with a 10-way head
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "swin_t-704ceda3.pth").exists()
