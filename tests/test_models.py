"""Models and schemes: every registered model, the study's conv totals, the zoo builder, ImageNet weights, schemes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from neqtune.trainables.budget.schemes import SCHEMES_FILE, get_scheme, load_schemes, su_update_mask
from neqtune.trainables.budget.units import conv_layers, conv_neuron_params, total_params
from neqtune.trainables.checks import check_config
from neqtune.trainables.config import ConfigError, ModelConfig, TrialConfig
from neqtune.trainables.models.registry import build_model, classifier_name, model_names, model_spec, ungrouped_conv_params
from neqtune.trainables.models.zoo import SHIPPED_CONFIGS, ZOO_NETS, ZooConfigError, build_zoo_model, read_net_config

SEED_SCHEMES = Path(__file__).resolve().parents[2] / "shared" / "design" / "seed-schemes.yaml"

# The study's P per model (its NEq_configs / seed-schemes.yaml): neqtune's count (with / groups) gives them exactly.
STUDY_TOTALS = {
    "mbv2": 2_189_760,
    "resnet18": 11_166_912,
    "resnet50": 23_454_912,
    "mcunet-in0": 543_176,
    "mcunet-in1": 463_216,
    "mcunet-in2": 552_904,
    "mcunet-in3": 561_032,
    "mcunet-in4": 1_390_232,
    "proxyless-w0.3": 357_680,
    "mbv2-w0.35-zoo": 288_864,
}
# The same convs counted without / groups (what the study's per-neuron count gives), and the number of convs.
UNGROUPED_TOTALS = {
    "mbv2": (42_735_840, 52),
    "mbv2-w0.35": (5_461_936, 52),
    "mbv2-w0.35-zoo": (5_368_752, 52),
    "resnet18": (11_166_912, 20),
    "resnet50": (23_454_912, 53),
    "mcunet-in0": (15_762_504, 45),
    "mcunet-in1": (16_405_168, 42),
    "mcunet-in2": (21_256_688, 54),
    "mcunet-in3": (34_426_352, 54),
    "mcunet-in4": (59_561_312, 51),
    "proxyless-w0.3": (22_470_512, 61),
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# vit_b_16's step at its native 224 px takes 11 s on one thread; at 32 px (2 x 2 patches) the same layers train.
SMALL_SIDES = {"vit_b_16": 32}


@pytest.mark.parametrize("name", model_names())
def test_every_model_takes_a_training_step_at_its_native_size(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), num_classes=5)
    side = SMALL_SIDES.get(name, model_spec(name).input_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {name: conv.weight.detach().clone() for name, conv in conv_layers(model).items()}
    loss = F.cross_entropy(model(torch.randn(2, 3, side, side)), torch.tensor([0, 4]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    head = dict(model.named_modules())[classifier_name(model)]
    assert isinstance(head, torch.nn.Linear) and head.out_features == 5
    changed = [name for name, conv in conv_layers(model).items() if not torch.equal(conv.weight, before[name])]
    assert changed == list(before)  # every conv received an update


@pytest.mark.parametrize("name", sorted(UNGROUPED_TOTALS))
def test_conv_totals_neqtune_and_ungrouped(name: str) -> None:
    model = build_model(ModelConfig(name=name), num_classes=10)
    ungrouped, n_convs = UNGROUPED_TOTALS[name]
    assert len(conv_layers(model)) == n_convs
    assert ungrouped_conv_params(model) == ungrouped
    if name in STUDY_TOTALS:
        assert total_params(conv_neuron_params(model)) == STUDY_TOTALS[name]
        # Only the ResNets, without grouped convs, give the study's number without / groups.
        assert (ungrouped == STUDY_TOTALS[name]) == name.startswith("resnet")


def test_torchvision_mbv2_w035_differs_from_the_zoo_one_only_in_its_last_conv() -> None:
    tv = conv_neuron_params(build_model(ModelConfig(name="mbv2-w0.35"), 10))
    zoo = conv_neuron_params(build_model(ModelConfig(name="mbv2-w0.35-zoo"), 10))
    shapes_tv = [(len(p), int(p[0])) for p in tv.values()]
    shapes_zoo = [(len(p), int(p[0])) for p in zoo.values()]
    assert shapes_tv[:-1] == shapes_zoo[:-1]
    assert (shapes_tv[-1], shapes_zoo[-1]) == ((1280, 112), (448, 112))
    assert total_params(tv) == 382_048


def test_seed_totals_are_shipped_with_the_schemes() -> None:
    shipped = yaml.safe_load(SCHEMES_FILE.read_text())["reference_total_conv_params"]
    assert {("mbv2-w0.35-zoo" if k == "mbv2-w0.35" else k): v for k, v in shipped.items()} == STUDY_TOTALS


@pytest.mark.skipif(not SEED_SCHEMES.is_file(), reason="the design folder is not next to the checkout")
def test_shipped_schemes_match_the_seed_file() -> None:
    seed = yaml.safe_load(SEED_SCHEMES.read_text())
    shipped = yaml.safe_load(SCHEMES_FILE.read_text())
    # the shipped file adds TraDy's printed memory budgets (per model and image size) to nine schemes; the rest is the seed's
    printed = {name: entry.pop("memory") for name, entry in shipped["schemes"].items() if "memory" in entry}
    assert shipped["schemes"] == seed["schemes"]
    assert sorted(printed) == sorted(f"{family}_scheme_{n}" for family in ("mbv2-w0.35", "mcunet-in1", "proxyless-w0.3") for n in (1, 3, 5))
    assert printed["mbv2-w0.35_scheme_1"] == {"mbv2-w0.35-zoo": {128: 27946}}
    assert shipped["reference_total_conv_params"] == seed["total_conv_params"]


@pytest.mark.parametrize(
    ("model_name", "family"), [("mcunet-in1", "mcunet-in1"), ("proxyless-w0.3", "proxyless-w0.3"), ("mbv2-w0.35-zoo", "mbv2-w0.35")]
)
def test_absolute_su_budgets_are_the_parameters_of_their_masks(model_name: str, family: str) -> None:
    # Checks the zoo architectures convolution by convolution: the study's absolute budgets
    # are exactly what each SU mask updates on the zoo model.
    model = build_model(ModelConfig(name=model_name), 10)
    params = conv_neuron_params(model)
    schemes = [s for s in load_schemes().values() if s.name.startswith(family + "_scheme_")]
    assert len(schemes) == 5
    for scheme in schemes:
        assert scheme.su is not None and scheme.budget is not None
        masks = su_update_mask(model, manual_weight_idx=scheme.su.manual_weight_idx, weight_update_ratio=scheme.su.weight_update_ratio)
        assert sum(int(params[k][m].sum()) for k, m in masks.items()) == scheme.budget


def test_every_su_scheme_fits_its_model_but_proxyless_scheme_1() -> None:
    models = {n: build_model(ModelConfig(name=n), 10) for n in ("mbv2", "mbv2-w0.35-zoo", "mcunet-in1", "proxyless-w0.3")}
    family_model = {"mbv2": "mbv2", "mbv2-w0.35": "mbv2-w0.35-zoo", "mcunet-in1": "mcunet-in1", "proxyless-w0.3": "proxyless-w0.3"}
    checked = 0
    for scheme in load_schemes().values():
        if scheme.su is None or scheme.name == "proxyless-w0.3_scheme_1":
            continue
        scheme.su.check_fits(models[family_model[scheme.name.split("_scheme_")[0]]], scheme.name)
        checked += 1
    assert checked == 19


def test_proxyless_scheme_1_is_refused_with_the_reason() -> None:
    scheme = get_scheme("proxyless-w0.3_scheme_1")
    assert scheme.su is not None
    with pytest.raises(ConfigError) as err:
        scheme.su.check_fits(build_model(ModelConfig(name="proxyless-w0.3"), 10), scheme.name)
    assert err.value.key == "budget.scheme"
    assert "manual_weight_idx 39 lies outside the bias-updated tail: n_bias_update 21 of 61 convs covers indices 40..60" in str(err.value)


@pytest.mark.parametrize(
    ("scheme", "model_name", "budget"),
    [
        ("scheme_1", "resnet18", int(11_166_912 * 0.0878233231)),
        ("mbv2_scheme_5", "mbv2", int(2_189_760 * 0.3084995616)),
        ("mcunet-in1_scheme_3", "resnet50", 52_480),
    ],
)
def test_budget_is_ratio_times_the_models_conv_params_or_absolute(scheme: str, model_name: str, budget: int) -> None:
    total = total_params(conv_neuron_params(build_model(ModelConfig(name=model_name), 10)))
    assert get_scheme(scheme).budget_params(total) == budget


# --- the zoo builder --------------------------------------------------------------


def _tiny_net_config(first: int = 8) -> dict[str, Any]:
    def block(i: int, o: int, k: int, s: int, e: int, shortcut: bool) -> dict[str, Any]:
        conv = {
            "name": "MBInvertedConvLayer",
            "in_channels": i,
            "out_channels": o,
            "kernel_size": k,
            "stride": s,
            "expand_ratio": e,
            "mid_channels": None,
        }
        return {
            "name": "MobileInvertedResidualBlock",
            "mobile_inverted_conv": conv,
            "shortcut": {"name": "IdentityLayer"} if shortcut else None,
        }

    conv = {
        "name": "ConvLayer",
        "kernel_size": 3,
        "stride": 2,
        "in_channels": 3,
        "out_channels": first,
        "use_bn": True,
        "act_func": "relu6",
    }
    zero = {
        "name": "MobileInvertedResidualBlock",
        "mobile_inverted_conv": {"name": "ZeroLayer", "stride": 1},
        "shortcut": {"name": "IdentityLayer"},
    }
    return {
        "name": "ProxylessNASNets",
        "first_conv": conv,
        "blocks": [block(first, 8, 3, 1, 1, False), block(8, 16, 5, 2, 3, False), zero, block(16, 16, 3, 1, 4, True)],
        "feature_mix_layer": {**conv, "kernel_size": 1, "stride": 1, "in_channels": 16, "out_channels": 32},
        "classifier": {"name": "LinearLayer", "in_features": 32, "out_features": 1000, "dropout_rate": 0.1},
        "resolution": 32,
    }


def test_a_zoo_model_builds_from_a_net_config_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(_tiny_net_config()))
    model = build_model(ModelConfig(name="mcunet-in2", net_config=str(path)), num_classes=3)
    convs = conv_layers(model)
    # first conv, dw + pw of the e=1 block, pw + dw + pw of the two others, feature mix
    assert len(convs) == 1 + 2 + 3 + 3 + 1
    assert [c.groups for c in convs.values()] == [1, 8, 1, 1, 24, 1, 1, 64, 1, 1]
    assert list(convs)[:3] == [
        "first_conv.conv",
        "blocks.0.mobile_inverted_conv.depth_conv.conv",
        "blocks.0.mobile_inverted_conv.point_linear.conv",
    ]
    loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    assert model.state_dict()["classifier.linear.weight"].shape == (3, 32)


@pytest.mark.parametrize("name", sorted(ZOO_NETS))
def test_every_zoo_model_builds_from_a_config_file_written_here(name: str, tmp_path: Path) -> None:
    # The user's own copy of the zoo JSON (here: the shipped architecture, written out) builds the same network.
    shipped = json.loads((SHIPPED_CONFIGS / f"{ZOO_NETS[name]}.json").read_text())
    path = tmp_path / "net.json"
    path.write_text(json.dumps(shipped, indent=4))
    model = build_model(ModelConfig(name=name, net_config=str(path)), num_classes=4)
    assert total_params(conv_neuron_params(model)) == STUDY_TOTALS[name]
    assert len(conv_layers(model)) == UNGROUPED_TOTALS[name][1]


def test_a_cached_net_config_takes_precedence_over_the_shipped_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / f"{ZOO_NETS['mcunet-in1']}.json").write_text(json.dumps(_tiny_net_config()))
    monkeypatch.setenv("NEQ_MCUNET", str(tmp_path))
    assert len(conv_layers(build_model(ModelConfig(name="mcunet-in1"), 10))) == 10
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert len(conv_layers(build_model(ModelConfig(name="mcunet-in1", zoo_dir=str(other)), 10))) == 42  # falls back to the shipped one


def test_zoo_weights_load_from_the_cache_by_their_zoo_names(tmp_path: Path) -> None:
    source = build_zoo_model("mcunet-in0", 1000)
    torch.save({"state_dict": source.state_dict()}, tmp_path / f"{ZOO_NETS['mcunet-in0']}.pth")
    model = build_model(ModelConfig(name="mcunet-in0", pretrained="imagenet", zoo_dir=str(tmp_path)), num_classes=10)
    key = "blocks.5.mobile_inverted_conv.depth_conv.conv.weight"
    assert torch.equal(model.state_dict()[key], source.state_dict()[key])
    assert model.state_dict()["classifier.linear.weight"].shape == (10, 192)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("classifier"), r"tiny.json: net.classifier: missing"),
        (
            lambda c: c["blocks"][1]["mobile_inverted_conv"].update(in_channels=12),
            r"blocks\[1\].mobile_inverted_conv.in_channels: 12 does not match",
        ),
        (lambda c: c["blocks"][1]["mobile_inverted_conv"].update(use_se=True), r"blocks\[1\].mobile_inverted_conv.use_se"),
        (lambda c: c["first_conv"].update(act_func="gelu"), r"first_conv.act_func: unsupported activation 'gelu'"),
        (lambda c: c["classifier"].update(in_features=99), r"classifier.in_features: 99"),
    ],
)
def test_a_bad_net_config_names_the_file_and_key(tmp_path: Path, change: Any, message: str) -> None:
    config = _tiny_net_config()
    change(config)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ZooConfigError, match=message):
        read_net_config(path)


def test_shipped_configs_declare_the_native_resolutions() -> None:
    resolutions = {name: read_net_config(SHIPPED_CONFIGS / f"{stem}.json").resolution for name, stem in ZOO_NETS.items()}
    assert resolutions == {
        "mcunet-in0": 48,
        "mcunet-in1": 96,
        "mcunet-in2": 160,
        "mcunet-in3": 176,
        "mcunet-in4": 160,
        "mbv2-w0.35-zoo": 144,
        "proxyless-w0.3": 176,
    }


# --- pretrained: imagenet -------------------------------------------------------------


def test_imagenet_weights_offline_give_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(ConfigError) as err:
        build_model(ModelConfig(name="resnet18", pretrained="imagenet"), 10)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert err.value.key == "model.pretrained"
    assert str(expected) in str(err.value) and "put it at" in str(err.value) and "\n" not in str(err.value)
    ModelConfig(name="resnet18", pretrained="imagenet").validate("model")  # validating fetches nothing (a dry run)
    assert not expected.exists()


def test_imagenet_weights_from_the_torch_hub_cache_are_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    source = build_model(ModelConfig(name="resnet18"), 1000)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(source.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    model = build_model(ModelConfig(name="resnet18", pretrained="imagenet"), 10)
    assert torch.equal(model.state_dict()["layer3.0.conv1.weight"], source.state_dict()["layer3.0.conv1.weight"])
    assert model.state_dict()["fc.weight"].shape == (10, 512)


def test_imagenet_for_a_model_without_imagenet_weights_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model.pretrained: model 'mbv2-w0.35' has no ImageNet weights"):
        check_config(TrialConfig(model=ModelConfig(name="mbv2-w0.35", pretrained="imagenet")))
    with pytest.raises(ConfigError, match=r"model.net_config: only MCUNet-zoo models take a net config"):
        check_config(TrialConfig(model=ModelConfig(name="resnet18", net_config=str(SHIPPED_CONFIGS / "mcunet-5fps_imagenet.json"))))


def _offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
    # What urllib raises here without network (the sandbox has none, but tests must not depend on it).
    import urllib.error

    raise urllib.error.URLError("[Errno -2] Name or service not known")
