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

from neqtune.search.cli import main
from neqtune.search.dry_run import dry_run
from neqtune.search.space import load_space
from neqtune.trainables.config import ModelConfig
from neqtune.trainables.models.registry import build_model
from neqtune.trainables.models.zoo import RELEASE_URL, ZOO_NETS

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
    assert main(["--space", str(bad), "--results", str(tmp_path / "out")]) == 2  # a run: the first problem, one line
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and not (tmp_path / "out").exists()
    assert "bad.yaml: search.params.budget.scheme: proxyless-w0.3_scheme_1: manual_weight_idx 39 lies outside the bias-updated tail" in err
    assert main(["--space", str(bad), "--dry-run"]) == 2  # a dry run: every problem, one line each
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0] == f"error: {err.removeprefix('error: ')}"
    assert len(errors) > 1 and all(line.startswith(f"error: {bad}: search.params.budget.scheme: ") for line in errors)

    missing = tmp_path / "missing_data.yaml"
    missing.write_text(
        (SPACES / "pets_mcunet_baseline.yaml").read_text().replace("  name: pets", f"  name: pets\n  root: {tmp_path / 'nowhere'}")
    )
    assert main(["--space", str(missing), "--dry-run"]) == 2
    assert "data.root" in capsys.readouterr().err


def test_a_dry_run_fetches_no_weights_and_says_where_they_would_come_from(
    neq_data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fetched: list[str] = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, *_, **__: fetched.append(url) or _offline(url, ""))
    monkeypatch.setenv("NEQ_MCUNET", str(tmp_path / "empty"))
    expected = tmp_path / "empty" / f"{ZOO_NETS['mcunet-in1']}.pth"
    assert main(["--space", str(SPACES / "pets_mcunet_baseline.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"  ImageNet weights: not cached; a run downloads {RELEASE_URL}{ZOO_NETS['mcunet-in1']}.pth to {expected} first" in out
    assert fetched == [] and not expected.exists()
    cached = Path(neq_data["TORCH_HOME"]) / "hub" / "checkpoints" / torchvision.models.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    assert main(["--space", str(SPACES / "c10_resnet18.yaml"), "--dry-run"]) == 0
    assert f"  ImageNet weights: cached at {cached}" in capsys.readouterr().out
    assert fetched == []


def test_a_run_that_cannot_get_its_weights_exits_2_naming_the_file_before_ray_starts(
    neq_data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEQ_MCUNET", str(tmp_path / "empty"))
    results = tmp_path / "results"
    assert main(["--space", str(SPACES / "pets_mcunet_baseline.yaml"), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    expected = tmp_path / "empty" / f"{ZOO_NETS['mcunet-in1']}.pth"
    assert err.startswith(f"error: {SPACES / 'pets_mcunet_baseline.yaml'}: model.pretrained: the ImageNet weights of mcunet-in1 are not at")
    assert str(expected) in err and "put it at" in err and "\n" not in err
    assert not results.exists()


def test_a_dry_run_reports_every_problem_not_only_the_first(
    neq_data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEQ_MCUNET", str(tmp_path / "empty"))  # weights not cached (offline): no longer hides the data error
    text = (SPACES / "c10_mcunet.yaml").read_text().replace("  name: c10", f"  name: c10\n  root: {tmp_path / 'nowhere'}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("mcunet-in1_scheme_1, mcunet-in1_scheme_2", "mcunet-in1_scheme_1, proxyless-w0.3_scheme_1"))
    assert main(["--space", str(bad), "--dry-run"]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert captured.out.startswith(f"{bad}: 2 problem(s); 45 trials (grid)")
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"error: {bad}: data.root: ") and str(tmp_path / "nowhere") in errors[0]
    assert errors[1].startswith(f"error: {bad}: search.params.budget.scheme: proxyless-w0.3_scheme_1: manual_weight_idx")
    assert "data c10: not readable (see the errors below)" in captured.out
    assert "model mcunet-in1 (mcunet-zoo, native 96 px, run at 128 px" in captured.out
    assert "ImageNet weights: not cached; a run downloads" in captured.out

    model_problems = tmp_path / "model.yaml"
    model_problems.write_text(
        (SPACES / "c10_resnet18.yaml").read_text().replace("pretrained: imagenet", f"pretrained: {tmp_path / 'no.pt'}\n  net_config: x.json")
    )
    assert main(["--space", str(model_problems), "--dry-run"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        f"error: {model_problems}: model.pretrained: no checkpoint file at {tmp_path / 'no.pt'}",
        f"error: {model_problems}: model.net_config: only MCUNet-zoo models take a net config, not 'resnet18'",
    ]


# --- the paper variant of the study's spaces ---------------------------------------------------------------------------
TRADY_EPOCHS = {"c10": 100, "c100": 50, "food": 50, "vww": 50, "cub": 200, "flowers": 200, "pets": 200}


@pytest.mark.parametrize("space_file", STUDY_SPACES, ids=lambda p: p.stem)
def test_every_study_space_has_the_papers_recipe_beside_the_sweeps(space_file: Path, neq_data: dict[str, str]) -> None:
    text = space_file.read_text()
    assert "the repository's W&B sweep files" in text and "--variant paper" in text and "\nvariants:\n  paper:\n" in text
    sweep = load_space(space_file)
    paper = load_space(space_file, variant="paper")
    assert paper.experiment == f"{sweep.experiment}-paper"
    training = paper.base["training"]
    wacv = paper.base["model"]["name"] in ("mbv2", "resnet18", "resnet50")
    assert training["epochs"] == (200 if wacv else TRADY_EPOCHS[paper.base["data"]["name"]])
    assert (training["lr"], training["final_lr"], training["warmup_epochs"], training["momentum"], training["weight_decay"]) == (
        0.125, 0.0, 5, 0.0, 0.0
    )
    assert paper.search.params["training.seed"].choice == [0, 42, 100]
    assert "training.epochs" not in paper.search.params and "training.lr" not in paper.search.params  # fixed, not searched
    differs = [key for key in ("epochs", "lr", "final_lr") if sweep.base["training"].get(key) != training[key]]
    assert differs or "training.epochs" in sweep.search.params  # the default stays the sweep's recipe
    assert ("--paper wacv2024" if wacv else "--paper trady") in text


def test_a_paper_variant_dry_runs_and_an_unknown_variant_is_one_line(
    neq_data: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--space", str(SPACES / "cub_mcunet_baseline.yaml"), "--variant", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{SPACES / 'cub_mcunet_baseline.yaml'}: valid; 3 trials (grid)")  # the epochs x lr grid is gone
    assert main(["--space", str(SPACES / "c10_mbv2.yaml"), "--variant", "papr", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {SPACES / 'c10_mbv2.yaml'}: variants: no variant 'papr'; its variants: paper"
    assert main(["--variant", "paper", "--dry-run"]) == 2  # the digits default has none
    assert capsys.readouterr().err.strip() == "error: spaces/digits.yaml: variants: no variant 'paper'; it has no variants section"


def test_a_space_without_data_and_model_sections_dry_runs_with_their_defaults(tmp_path: Path) -> None:
    space = tmp_path / "bare.yaml"
    space.write_text("experiment: bare\nbudget: {policy: full}\n")
    lines, problems = dry_run(space)
    assert problems == []
    assert lines[0] == f"{space}: valid; 8 trials (optuna)"
    assert lines[1].startswith("data digits: 10 classes") and lines[2].startswith("model mbv2-w0.35 (torchvision")
