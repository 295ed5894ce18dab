"""Contract tests over the registries: every model, every data set, and the generic registry they share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from data_fixtures import write_fixture

from neqtune.datasets import build_dataset, check_dataset, dataset_names, register_check, register_dataset
from neqtune.datasets.names import Registry
from neqtune.trainables import BudgetPolicy, model_names, policy_names, register_model, register_policy
from neqtune.trainables.checks import check_config
from neqtune.trainables.config import ConfigError, DataConfig, ModelConfig, TrialConfig
from neqtune.trainables.models.registry import build_model, classifier_name, load_checkpoint, model_spec
from neqtune.trainables.policies import get_policy


@pytest.mark.parametrize("name", model_names())
def test_every_model_builds_and_takes_a_training_step(name: str) -> None:
    model = build_model(ModelConfig(name=name), num_classes=7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 6])
    loss = F.cross_entropy(model(inputs), labels)
    loss.backward()
    optimizer.step()
    head = dict(model.named_modules())[classifier_name(model)]
    assert isinstance(head, torch.nn.Linear) and head.out_features == 7


def test_local_checkpoint_loads_with_a_resized_classifier(tmp_path: Path) -> None:
    source = build_model(ModelConfig(name="mbv2-w0.35"), num_classes=1000)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    model = build_model(ModelConfig(name="mbv2-w0.35", pretrained=str(path)), num_classes=10)
    own, theirs = model.state_dict(), source.state_dict()
    assert torch.equal(own["features.5.conv.0.0.weight"], theirs["features.5.conv.0.0.weight"])
    assert own["classifier.1.weight"].shape == (10, 1280)


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(build_model(ModelConfig(name="resnet18"), 10).state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet.pt does not fit the model"):
        load_checkpoint(build_model(ModelConfig(name="mbv2-w0.35"), 10), path)


def test_a_missing_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.pretrained: no checkpoint file at"):
        check_config(TrialConfig(model=ModelConfig(name="mbv2", pretrained=str(tmp_path / "missing.pt"))))


@pytest.mark.parametrize("name", dataset_names())
def test_every_data_set_builds_four_disjoint_splits(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if name != "digits":  # a tiny copy in the data set's real on-disk format, at $NEQ_DATA/<name>
        write_fixture(name, tmp_path / name)
        monkeypatch.setenv("NEQ_DATA", str(tmp_path))
    config = DataConfig(name=name, image_size=24, velocity_images=7)
    splits = build_dataset(config)
    image, label = splits.train[0]
    assert image.shape == (3, 24, 24) and 0 <= int(label) < splits.num_classes
    assert len(splits.velocity) == 7  # type: ignore[arg-type]
    assert all(len(s) > 0 for s in (splits.train, splits.val, splits.test))  # type: ignore[arg-type]


def test_digits_splits_are_seeded_disjoint_and_complete() -> None:
    a = build_dataset(DataConfig(name="digits"))
    b = build_dataset(DataConfig(name="digits"))
    c = build_dataset(DataConfig(name="digits", split_seed=1))
    index = {name: set(getattr(a, name).indices) for name in ("train", "val", "velocity", "test")}  # type: ignore[attr-defined]
    assert sum(len(v) for v in index.values()) == 1797
    assert len(set.union(*index.values())) == 1797
    assert (len(index["test"]), len(index["velocity"]), len(index["val"]), len(index["train"])) == (359, 10, 285, 1143)
    assert a.train.indices == b.train.indices  # type: ignore[attr-defined]
    assert a.train.indices != c.train.indices  # type: ignore[attr-defined]
    assert a.classes == [str(d) for d in range(10)]
    image, _ = a.test[0]
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey in RGB


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"known models: mbv2, mbv2-w0\.35, .*mcunet-in0, .*resnet18, resnet50"):
        build_model(ModelConfig(name="vgg"), 10)
    with pytest.raises(ValueError, match=r"known data sets: c10, c100, .*digits"):
        build_dataset(DataConfig(name="mnist"))


def test_registry_registers_lists_and_refuses_duplicates() -> None:
    registry: Registry[int] = Registry("colour", "colours")
    assert registry.register("red")(1) == 1
    registry.add("blue", 2)
    assert registry.names() == ["blue", "red"] and list(registry) == ["blue", "red"] and len(registry) == 2
    assert registry.get("red") == 1 and "blue" in registry and "green" not in registry
    assert registry.find("green") is None and registry.find("blue") == 2
    with pytest.raises(ValueError, match=r"^unknown colour 'green'; known colours: blue, red$"):
        registry.get("green")
    with pytest.raises(ValueError, match=r"^colour 'red' is already registered by builtins; again by builtins$"):
        registry.add("red", 3)
    assert registry.get("red") == 1  # the refused registration changed nothing
    custom: Registry[int] = Registry("check", "checks", duplicate="data set {name} already has a check")
    custom.add("c10", 0)
    with pytest.raises(ValueError, match=r"^data set 'c10' already has a check by builtins; again by builtins$"):
        custom.add("c10", 1)


def test_the_project_registries_keep_their_messages() -> None:
    with pytest.raises(ValueError, match=r"^policy 'velocity' is already registered by neqtune.trainables.policies.study \(.*study.py\); again by neqtune\."):
        register_policy("velocity")(get_policy("random"))
    with pytest.raises(ValueError, match=rf"^unknown policy 'greedy'; known policies: {', '.join(policy_names())}$"):
        get_policy("greedy")
    with pytest.raises(ValueError, match=r"^model 'resnet18' is already registered by neqtune.trainables.models.registry \(.*registry.py\); again by neqtune\."):
        register_model("resnet18", source="torchvision", input_size=224)(model_spec("resnet18").build)
    with pytest.raises(ValueError, match=r"^data set 'digits' is already registered by neqtune.datasets.digits \(.*digits.py\); again by test_registries\b"):
        register_dataset("digits")(lambda config: build_dataset(config))
    with pytest.raises(ValueError, match=r"^data set 'c10' already has a check by neqtune.datasets.cifar \(.*\); again by neqtune.datasets.registry\b"):
        register_check("c10")(check_dataset)
    assert all(issubclass(get_policy(name), BudgetPolicy) for name in policy_names())  # one registry of policy classes
    assert "digits" in dataset_names() and "mbv2-w0.35" in model_names()


def test_parsing_looks_nothing_up_and_checking_does() -> None:
    """A config parses without its registries (names unknown to them pass); the check, as a trial is built, refuses them."""
    config = TrialConfig.from_dict({"data": {"name": "nope"}, "model": {"name": "vgg"}, "budget": {"policy": "oracle", "ratio": 0.1}})
    with pytest.raises(ConfigError) as caught:
        check_config(config)
    keys = [p.key for p in caught.value.problems]  # type: ignore[attr-defined]
    assert keys == ["data.name", "model.name", "budget.policy"]
    assert "known data sets: " in caught.value.message

