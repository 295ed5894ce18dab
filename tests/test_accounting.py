"""What trains under a budget: budgeted conv and Linear units, norms and classifier outside it, the rest frozen; and the budget errors a newcomer met."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
import yaml
from torch import nn

from neqtune.search.cli import main
from neqtune.trainables.budget.accounting import account_parameters, outside_warning
from neqtune.trainables.budget.units import budgeted_layers, conv_layers
from neqtune.trainables.config import BudgetConfig, ModelConfig, TrialConfig, memory_elements
from neqtune.trainables.models import registry as model_registry
from neqtune.trainables.models.registry import build_model, model_names, register_model
from neqtune.trainables.trainer import BudgetedRun

WIDTH = 16


class TinyMixer(nn.Module):
    """An MLP-mixer on 16 px images: a 4x4 patch conv, one mixer block (token and channel MLPs with LayerNorms), a head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 4, stride=4)
        self.norm1 = nn.LayerNorm(WIDTH)
        self.token_mix = nn.Linear(16, 16)  # 16 tokens at 16 px: another size does not fit
        self.norm2 = nn.LayerNorm(WIDTH)
        self.fc1 = nn.Linear(WIDTH, 2 * WIDTH)
        self.fc2 = nn.Linear(2 * WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (batch, tokens, width)
        tokens = tokens + self.token_mix(self.norm1(tokens).transpose(1, 2)).transpose(1, 2)
        tokens = tokens + self.fc2(torch.relu(self.fc1(self.norm2(tokens))))
        out: torch.Tensor = self.head(tokens.mean(dim=1))
        return out


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 2, batch_first=True)
        self.fc = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        out: torch.Tensor = x + self.fc(x)
        return out


class TinyViT(nn.Module):
    """A ViT on 16 px images: patch conv, class token, position embedding, one attention block, a final LayerNorm and a head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, WIDTH) * 0.1)
        self.pos_embedding = nn.Parameter(torch.randn(1, 17, WIDTH) * 0.1)
        self.block = Block()
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embedding
        out: torch.Tensor = self.head(self.norm(self.block(tokens))[:, 0])
        return out


TEST_MODELS = ("tiny-mixer", "tiny-vit", "tv-vit-224")


@pytest.fixture(autouse=True, scope="module")
def _test_models() -> Iterator[None]:
    """The tiny models, registered for this module's tests only: the registry-wide tests of other modules build every
    registered model at their own sizes, which these do not take."""
    if "tiny-mixer" not in model_names():
        register_model("tiny-mixer", source="tests", input_size=16)(lambda config, classes: TinyMixer(classes))
        register_model("tiny-vit", source="tests", input_size=16)(lambda config, classes: TinyViT(classes))
        register_model("tv-vit-224", source="tests", input_size=224)(
            lambda config, classes: torchvision.models.VisionTransformer(224, 16, 1, 2, 16, 32, num_classes=classes)
        )
    yield
    for name in TEST_MODELS:
        model_registry._MODELS.remove(name)


def trial(model: str, **budget: Any) -> TrialConfig:
    return TrialConfig.from_dict(
        {
            "data": {"name": "digits", "image_size": 16, "batch_size": 64},
            "model": {"name": model},
            "training": {"epochs": 1, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
            "budget": {"policy": "random", "ratio": 0.1, **budget},
        }
    )


def sizes(model: nn.Module, names: list[str]) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


# --- the classification ------------------------------------------------------------------------------------------------
def test_the_study_cnn_is_conv_units_plus_norms_and_classifier() -> None:
    model = build_model(ModelConfig(name="mbv2-w0.35"), 10)
    account = account_parameters(model, BudgetConfig(policy="velocity", scheme="mbv2-w0.35_scheme_3"))
    assert account.frozen == 0
    convs = conv_layers(model)
    assert set(account.names("budgeted")) == {f"{n}.{p}" for n, c in convs.items() for p, _ in c.named_parameters()}
    assert account.reasons_of("outside") == ["norm", "classifier"]
    assert "classifier.1.weight" in account.names("outside")
    total = sum(p.numel() for p in model.parameters())
    assert account.budgeted + account.outside == total and account.budgeted == 382_048


def test_what_trains_today_on_the_study_cnn_is_unchanged() -> None:
    """Every parameter that required a gradient before the accounting (the engine's flags) still does, and no other."""
    run = BudgetedRun(trial("mbv2-w0.35", policy="su", scheme="mbv2-w0.35_scheme_3", ratio=None))
    assert run.account.frozen == 0
    outside = run.params_outside_budget()
    assert outside == run.account.outside == 26_890  # every BatchNorm and the classifier (bn_update: all)


@pytest.mark.parametrize("model", ["tiny-mixer", "tiny-vit"])
def test_linear_body_is_budgeted_and_embeddings_are_frozen(model: str) -> None:
    net = build_model(ModelConfig(name=model), 10)
    account = account_parameters(net, BudgetConfig(policy="random", ratio=0.1))
    layers = budgeted_layers(net)
    assert "head" not in layers  # the classifier stays outside
    assert account.names("budgeted") == [f"{layer}.{p}" for layer in layers for p in ("weight", "bias")]
    assert set(account.reasons_of("outside")) == {"norm", "classifier"}
    assert "head.weight" in account.names("outside")
    if model == "tiny-mixer":
        assert list(layers) == ["stem", "token_mix", "fc1", "fc2"] and account.frozen == 0
    else:  # the class token, the position embedding and the attention's packed input projection (no nn.Linear)
        assert list(layers) == ["patch", "block.attn.out_proj", "block.fc"]
        assert account.layers("frozen") == ["class_token", "pos_embedding", "block.attn.in_proj_weight", "block.attn.in_proj_bias"]
        assert account.reasons_of("frozen") == ["parameter"]
    total = sum(p.numel() for p in net.parameters())
    assert account.budgeted + account.outside + account.frozen == total
    full = account_parameters(net, BudgetConfig(policy="full"))
    assert full.frozen == 0 and full.budgeted + full.outside == total


@pytest.mark.parametrize("model", ["tiny-mixer", "tiny-vit"])
@pytest.mark.parametrize("engine", ["sparse", "masked"])
def test_the_trainer_freezes_what_the_accounting_says(model: str, engine: str) -> None:
    config = trial(model)
    config.training.update_engine = engine  # type: ignore[assignment]
    run = BudgetedRun(config)
    before = {k: v.detach().clone() for k, v in run.model.named_parameters()}
    run.train_epoch()
    after = dict(run.model.named_parameters())
    for name in run.account.names("frozen"):
        assert torch.equal(after[name], before[name]), name
    for name in run.account.names("outside"):
        assert not torch.equal(after[name], before[name]), name
    for conv, mask in run.masks.items():
        weight = f"{conv}.weight"
        assert torch.equal(after[weight][~mask], before[weight][~mask])
        assert not torch.equal(after[weight][mask], before[weight][mask])
    assert run.params_outside_budget() == run.account.outside


def test_the_full_policy_trains_everything() -> None:
    run = BudgetedRun(trial("tiny-vit", policy="full", ratio=None))
    before = {k: v.detach().clone() for k, v in run.model.named_parameters()}
    run.train_epoch()
    assert all(not torch.equal(p, before[n]) for n, p in run.model.named_parameters())


def test_the_warning_names_the_layers() -> None:
    net = build_model(ModelConfig(name="tiny-mixer"), 10)
    account = account_parameters(net, BudgetConfig(policy="random", ratio=0.1))
    assert outside_warning("tiny-mixer", account, account.outside) is None
    line = outside_warning("tiny-mixer", account, 78)
    assert line == (
        f"warning: model tiny-mixer: {account.outside:,} parameters in 3 layers train outside the budget of 78 parameters "
        "(norm1, norm2, head): the normalisation layers and the classifier always train, outside any budget"
    )


# --- the dry run, search start, the table ----------------------------------------------------------------------------
def space(tmp_path: Path, model: str = "tiny-mixer", **budget: Any) -> Path:
    raw = {
        "experiment": "accounting",
        "data": {"name": "digits", "image_size": 16, "batch_size": 64},
        "model": {"name": model},
        "training": {"epochs": 1, "lr": 0.1},
        "budget": {"policy": "random", "ratio": 0.1, **budget},
        "search": {"algorithm": "grid", "num_samples": 1, "max_concurrent": 1, "cpus_per_trial": 1, "params": {"training.seed": {"choice": [0]}}},
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_dry_run_prints_the_three_counts_and_the_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--space", str(space(tmp_path, "tiny-mixer")), "--dry-run"]) == 0
    out = capsys.readouterr().out
    net = build_model(ModelConfig(name="tiny-mixer"), 10)
    account = account_parameters(net, BudgetConfig(policy="random", ratio=0.1))
    counts = (
        f"{account.budgeted:,} budgeted (units of convs and Linear layers), {account.outside:,} trained outside the budget "
        f"(norm, classifier), {account.frozen:,} frozen"
    )
    assert f"  parameters under a budget: {counts}" in out
    assert "1 convs and 3 Linear layers" in out and "are frozen under a budget" not in out  # the mixer's Linear layers are units now
    budget = int(account.budgeted * 0.1)  # the ratio of every budgeted layer's parameters, the Linear layers' included
    assert f"warning: model tiny-mixer: {account.outside:,} parameters in 3 layers train outside the budget of {budget:,} parameters" in out


def test_search_start_prints_the_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import neqtune.search.experiment as experiment

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit(0)  # where Ray would start

    monkeypatch.setattr(experiment, "run_search", stop)
    with pytest.raises(SystemExit):
        main(["--space", str(space(tmp_path, "tiny-vit")), "--results", str(tmp_path / "out")])
    assert "warning: model tiny-vit: " in capsys.readouterr().out


# --- budget errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "elements"), [(65_536, 65_536), ("256kB", 64_000), ("64KiB", 16_384), ("262144B", 65_536), ("1.5 MB", 375_000)]
)
def test_memory_in_elements_or_bytes(value: int | str, elements: int) -> None:
    assert memory_elements(value, 4.0, "budget.memory") == elements
    budget = TrialConfig.from_dict({"budget": {"policy": "trady", "unit": "input_channel", "memory": value}}).budget
    assert budget.memory == budget.memory_budget == elements  # validated: elements, also in the saved config
    assert memory_elements(value, 1.0, "budget.memory") == (value if isinstance(value, int) else elements * 4)


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("value", ["256kb", "12parsecs", "KB", "256 KB"])
@pytest.mark.parametrize("dry", [True, False])
def test_an_unknown_memory_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, dry: bool) -> None:
    path = space(tmp_path, "mbv2-w0.35", policy="trady", unit="input_channel", ratio=None, memory=value)
    out = tmp_path / "out"
    assert main(["--space", str(path), "--results", str(out), *(["--dry-run"] if dry else [])]) == 2
    line = one_error(capsys)
    assert f"budget.memory: cannot read {value!r}" in line
    assert "B, kB (1,000 B), KiB (1,024 B), MB (1,000,000 B), MiB (1,048,576 B)" in line and "case matters" in line
    assert not out.exists()


def test_a_searched_scheme_beside_a_fixed_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load(space(tmp_path, "mbv2-w0.35", policy="trady", unit="input_channel", ratio=None, memory="128kB").read_text())
    raw["search"]["params"] = {"budget.scheme": {"choice": ["mbv2-w0.35_scheme_1", "mbv2-w0.35_scheme_3"]}}
    path = tmp_path / "scheme.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["--space", str(path), "--results", str(out)]) == 2
    line = one_error(capsys)
    assert line.startswith(f"error: {path}: search.params.budget.scheme: is searched beside a fixed budget.memory")
    assert not out.exists()
    raw["budget"]["policy"] = "su"  # the su policy takes the scheme's mask under the memory budget: accepted
    path.write_text(yaml.safe_dump(raw))
    assert main(["--space", str(path), "--dry-run"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("dry", [True, False])
def test_a_model_that_rejects_the_image_size(tmp_path: Path, capsys: pytest.CaptureFixture[str], dry: bool) -> None:
    out = tmp_path / "out"
    assert main(["--space", str(space(tmp_path, "tv-vit-224")), "--results", str(out), *(["--dry-run"] if dry else [])]) == 2
    line = one_error(capsys)
    assert line.endswith("data.image_size: model tv-vit-224 does not take 16 px inputs (Wrong image height! Expected 224 but got 16!)")
    assert "Traceback" not in line and not out.exists()
