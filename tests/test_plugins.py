"""Plug-ins from the researcher's own files, and model names beyond the registry.

A plug-in here is written into a temporary folder outside the repository: a
small CNN (``@register_model`` and a plain factory for ``module:callable``),
an ``.npz`` image format (``@register_dataset``) read from a tiny fixture on
disk, and a policy (``@register_policy``). Every plug-in module gets a name of
its own: the registries and ``sys.modules`` live as long as the test process.
"""

from __future__ import annotations

import pickle
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from cluster_procs import two_node_cluster
from search_procs import RUN_MARK, finish, run_search
from sklearn.datasets import load_digits
from torch import nn

from neqtune.search.cli import main
from neqtune.search.plugins import PluginError, load_plugins, plugin_cache_dir, resolve_plugins
from neqtune.search.space import SpaceError, build_space, load_space
from neqtune.trainables.checks import model_problems
from neqtune.trainables.config import ConfigError, ConfigProblems, ModelConfig
from neqtune.trainables.models.registry import build_model, find_classifier, imagenet_weights_source, model_spec

PLUGIN = '''"""A researcher's own plug-in: a tiny CNN, an .npz image format and a policy."""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset, TensorDataset

import neqtune
from neqtune.datasets.registry import split_train


def tiny_cnn(num_classes):
    """Two convs and a linear head (the ``module:callable`` form: ``{module}:tiny_cnn``)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


@neqtune.register_model("{module}-cnn", source="plugin", input_size=16)
def build_tiny_cnn(config, num_classes):
    return tiny_cnn(num_classes)


@neqtune.register_dataset("{module}-npz")
def build_npz_digits(config):
    """digits.npz under data.root: uint8 images [N, 8, 8] (0..16) and labels; the first fifth is the test split."""
    with np.load(Path(config.root) / "digits.npz") as arrays:
        images = torch.as_tensor(arrays["images"], dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.as_tensor(arrays["labels"], dtype=torch.long)
    images = F.interpolate(images, size=(config.image_size, config.image_size), mode="bilinear", align_corners=False)
    full = TensorDataset(((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous(), labels)
    n_test = len(full) // 5
    train, val, velocity = split_train(
        len(full) - n_test, velocity_images=config.velocity_images, val_fraction=config.val_fraction, seed=config.split_seed
    )
    rest = lambda indices: Subset(full, [n_test + i for i in indices])
    return neqtune.DataSplits(
        train=rest(train), val=rest(val), velocity=rest(velocity), test=Subset(full, list(range(n_test))), classes=[str(d) for d in range(10)]
    )


UNITS = neqtune.register_metric(neqtune.Metric("{module}_units", "mean"))  # its own column in the epochs table


@neqtune.register_policy("{module}-once")
class RandomOnce(neqtune.BudgetPolicy):
    """Random units that fill the budget, chosen once; reports how many it chose."""

    metrics = (UNITS.name,)

    def start(self, probe):
        self.chosen = self.select("random")
        return self.chosen

    def epoch_metrics(self, epoch_time_s):
        return {UNITS.name: sum(int(mask.sum()) for mask in self.chosen.values())}
'''


def write_plugin(folder: Path, module: str | None = None) -> str:
    """Write a plug-in module into ``folder``; returns its module name (unique in this process)."""
    module = module or f"own_{secrets.token_hex(4)}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(PLUGIN.replace("{module}", module))
    return module


def write_digits(root: Path, n: int = 400) -> Path:
    """The plug-in format's fixture: ``digits.npz`` with ``n`` of scikit-learn's digits."""
    bunch = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "digits.npz", images=bunch.images[:n].astype(np.uint8), labels=bunch.target[:n])
    return root


def plugin_space(module: str, data_root: Path, plugins: list[str], **search: Any) -> dict[str, Any]:
    return {
        "experiment": "own",
        "plugins": plugins,
        "data": {"name": f"{module}-npz", "root": str(data_root), "image_size": 16, "batch_size": 64},
        "model": {"name": f"{module}-cnn"},
        "training": {"epochs": 1, "lr": 0.1},
        "budget": {"policy": f"{module}-once", "ratio": 0.5},
        "search": {"algorithm": "grid", "num_samples": 1, "cpus_per_trial": 1, "max_concurrent": 2,
                   "params": {"training.seed": {"choice": [0]}}, **search},
    }


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# --- a real search on two nodes ------------------------------------------------------------------------------------


@pytest.mark.search
def test_a_search_on_two_nodes_uses_a_plugin_the_worker_node_never_saw(tmp_path: Path) -> None:
    """The plug-in's folder is moved away once the driver has loaded it: both nodes import it from the source
    that travelled with the trials, each into its own cache."""
    started = time.monotonic()
    own = tmp_path / "own"
    module = write_plugin(own)
    data = write_digits(tmp_path / "data")
    caches = {"head": tmp_path / "cache-head", "worker": tmp_path / "cache-worker"}
    space = plugin_space(
        module, data, ["own/" + f"{module}.py"], params={"model.name": {"choice": [f"{module}-cnn", f"{module}:tiny_cnn"]}}
    )
    space_dir = tmp_path / "spaces"
    space_dir.mkdir()
    space["plugins"] = [f"../own/{module}.py"]  # relative to the space file
    (space_dir / "own.yaml").write_text(yaml.safe_dump(space))
    storage = tmp_path / "storage"
    with two_node_cluster(head_env={"NEQ_PLUGIN_CACHE": str(caches["head"])}, worker_env={"NEQ_PLUGIN_CACHE": str(caches["worker"])}) as (
        _,
        env,
        _,
        gcs,
    ):
        driver = run_search(
            ["--space", str(space_dir / "own.yaml"), "--address", gcs, "--storage", str(storage), "--name", "own"],
            cwd=tmp_path, mark=env[RUN_MARK], env=env,
        )  # fmt: skip
        assert driver.stdout is not None
        seen = []
        for line in driver.stdout:  # the driver prints this line after loading the space, before Ray starts
            seen.append(line)
            if line.startswith("neqtune: experiment"):
                own.rename(tmp_path / "gone")
                break
        out = "".join(seen) + finish(driver, 150, env[RUN_MARK])
    assert "neqtune: 2 trials (0 failed)" in out, out
    trials = pd.read_parquet(storage / "own" / "trials.parquet")
    epochs = pd.read_parquet(storage / "own" / "epochs.parquet")
    assert (trials.status == "TERMINATED").all() and len(epochs) == 2
    assert trials.node_id.nunique() == 2, trials[["trial_id", "node_id"]]  # one trial per node: each has one CPU
    assert sorted(trials["model.name"]) == sorted([f"{module}-cnn", f"{module}:tiny_cnn"])
    assert set(trials["budget.policy"]) == {f"{module}-once"} and set(trials["data.name"]) == {f"{module}-npz"}
    assert (epochs[f"{module}_units"] > 0).all(), epochs.columns  # the plug-in's metric, declared with register_metric
    for node, cache in caches.items():
        assert list(cache.glob(f"*/{module}.py")), f"the {node} node did not unpack the plug-in"
    saved = yaml.safe_load((storage / "own" / "space.yaml").read_text())
    assert saved["plugins"] == [str(own / f"{module}.py")]  # absolute: --resume loads them again
    print(f"plug-in search on two nodes: {time.monotonic() - started:.0f} s")


@pytest.mark.search
def test_resume_loads_the_plugins_again(tmp_path: Path) -> None:
    """``--resume`` in a fresh process knows the plug-in's names only if it imports the plug-ins the saved space lists."""
    module = write_plugin(tmp_path / "own")
    space = tmp_path / "own.yaml"
    space.write_text(yaml.safe_dump(plugin_space(module, write_digits(tmp_path / "data"), [f"own/{module}.py"], max_concurrent=1)))
    mark = secrets.token_hex(8)
    first = finish(run_search(["--space", str(space), "--results", str(tmp_path / "results"), "--name", "own"], cwd=tmp_path, mark=mark), 150, mark)
    assert "neqtune: 1 trials (0 failed)" in first, first
    again = finish(run_search(["--resume", str(tmp_path / "results" / "own")], cwd=tmp_path / "data", mark=mark), 150, mark)
    assert "neqtune: resuming experiment own" in again and "neqtune: 1 trials (0 failed)" in again, again


# --- a trial whose config is invalid ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    import ray

    from neqtune.search.ray_cluster import start_ray

    start_ray(None)
    yield
    ray.shutdown()


@pytest.mark.search
@pytest.mark.parametrize(
    "search", [{"algorithm": "grid", "params": {"training.seed": {"choice": [0]}}}, {"algorithm": "optuna", "params": {"training.lr": {"loguniform": [0.01, 0.1]}}}]
)
def test_a_trial_whose_config_is_invalid_fails_once_with_its_reason(ray_session: None, tmp_path: Path, search: dict[str, Any]) -> None:
    """A trial refuses a model name its worker does not know (the driver checked another base): one failure, no retry."""
    import optuna

    from neqtune.search.experiment import run_search as run

    space = build_space(
        {
            "data": {"name": "digits", "image_size": 16, "batch_size": 64},
            "model": {"name": "mbv2-w0.35"},
            "training": {"epochs": 1},
            "budget": {"policy": "random", "ratio": 0.1},
            "search": {"num_samples": 1, "max_failures": 3, "max_concurrent": 1, **search},
        },
        "invalid.yaml",
    )
    space.base["model"]["name"] = "no-such-net"  # what the trial sees
    lines: list[str] = []
    outcome = run(space, results_dir=tmp_path, name="invalid", echo=lines.append)
    assert outcome.errors == 1 and outcome.best is None
    trials = pd.read_parquet(tmp_path / "invalid" / "trials.parquet")
    assert trials.status.tolist() == ["ERROR"] and trials.node_id.notna().all()  # the node that refused it
    assert trials.error[0].startswith("model.name: unknown model 'no-such-net'; known models: "), trials.error[0]
    assert sum("started" in line for line in lines) == 1, lines  # not retried
    assert any("FAILED: model.name: unknown model 'no-such-net'" in line for line in lines), lines
    storage = f"sqlite:///{tmp_path / 'invalid' / 'optuna.db'}"
    (name,) = optuna.study.get_all_study_names(storage)
    assert [trial.state for trial in optuna.load_study(study_name=name, storage=storage).trials] == [optuna.trial.TrialState.FAIL]


def test_config_errors_survive_pickling() -> None:
    """Ray pickles a trial's exception for the driver: the message must survive (it used to raise AttributeError)."""
    problems = ConfigProblems([ConfigError("model.name", "unknown model 'x'"), ConfigError("budget.policy", "unknown policy 'y'")])
    again = pickle.loads(pickle.dumps(problems))
    assert str(again) == "model.name: unknown model 'x'" and len(again.problems) == 2
    assert str(pickle.loads(pickle.dumps(ConfigError("data.root", "missing")))) == "data.root: missing"


# --- bad plug-ins: one line, exit 2, nothing written ----------------------------------------------------------------


def test_a_plugin_that_fails_to_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a module name of its own: another test of this process (the docs' example) imports a my_models.py of its own
    module = f"broken_models_{secrets.token_hex(4)}.py"
    (tmp_path / module).write_text("import torch\n\nlayer = nn.Linear(2, 3)\n")
    results = tmp_path / "results"
    code, _, err = run_cli(["--plugin", str(tmp_path / module), "--results", str(results)], capsys)
    assert code == 2 and err == f"error: --plugin: {tmp_path / module}: NameError: name 'nn' is not defined\n"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"plugins": [module]}))
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(["--space", str(space), "--results", str(results), *dry], capsys)
        assert code == 2 and err == f"error: {space}: plugins: {module}: NameError: name 'nn' is not defined\n"
    assert not results.exists()


def test_a_plugin_that_registers_a_taken_name_names_both_origins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = f"dup_{secrets.token_hex(4)}"
    (tmp_path / f"{module}.py").write_text("import neqtune\n\n\n@neqtune.register_policy('random')\nclass Mine(neqtune.BudgetPolicy):\n    pass\n")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"plugins": [f"{module}.py"]}))
    code, _, err = run_cli(["--space", str(space), "--dry-run"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {space}: plugins: {module}.py: policy 'random' is already registered by neqtune.trainables.policies.")
    assert err.endswith(f"again by {module} ({tmp_path / module}.py)\n")


def test_a_missing_plugin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"plugins": ["nowhere/mine.py"]}))
    code, _, err = run_cli(["--space", str(space), "--dry-run"], capsys)
    assert (code, err) == (2, f"error: {space}: plugins: nowhere/mine.py: no such file: {tmp_path / 'nowhere' / 'mine.py'}\n")
    code, _, err = run_cli(["--plugin", "no_such_module_here", "--dry-run"], capsys)
    assert (code, err) == (2, "error: --plugin: no_such_module_here: no module named 'no_such_module_here' (give a path ending in .py for a file)\n")
    with pytest.raises(SpaceError, match=r"^s.yaml: plugins: expected a list of module names or .py paths, got 'mine.py'$"):
        build_space({"plugins": "mine.py"}, "s.yaml")


# --- where plug-ins come from, and how they travel ------------------------------------------------------------------


def test_a_plugin_folds_into_a_dry_run_with_its_model_data_and_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = write_plugin(tmp_path / "own")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(plugin_space(module, write_digits(tmp_path / "data"), [f"own/{module}.py"])))
    code, out, err = run_cli(["--space", str(space), "--dry-run"], capsys)
    assert code == 0, err
    assert f"model {module}-cnn (plugin, native 16 px" in out and f"data {module}-npz: 10 classes" in out


def test_a_module_plugin_outside_site_packages_travels_and_an_installed_one_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_plugin(tmp_path / "own")
    monkeypatch.syspath_prepend(str(tmp_path / "own"))
    (own,) = resolve_plugins([module], key="--plugin", relative_to=tmp_path)
    assert own.archive is not None and own.path is None and own.module == module
    (installed,) = resolve_plugins(["yaml"], key="--plugin", relative_to=tmp_path)
    assert installed.archive is None


def test_a_module_name_is_looked_for_beside_the_space_file_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = write_plugin(tmp_path / "spaces")
    space = tmp_path / "spaces" / "space.yaml"
    space.write_text(yaml.safe_dump(plugin_space(module, write_digits(tmp_path / "data"), [module])))
    loaded = load_space(space)
    assert [(plugin.module, plugin.path) for plugin in loaded.plugins] == [(module, tmp_path / "spaces" / f"{module}.py")]
    assert loaded.to_dict()["plugins"] == [str(tmp_path / "spaces" / f"{module}.py")]


def test_a_shipped_plugin_is_imported_from_the_node_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a worker node that never saw the file does: unpack the source by its hash and import it from there."""
    module = write_plugin(tmp_path / "own")
    (plugin,) = resolve_plugins([f"own/{module}.py"], key="plugins", relative_to=tmp_path)
    (tmp_path / "own" / f"{module}.py").unlink()
    monkeypatch.setenv("NEQ_PLUGIN_CACHE", str(tmp_path / "cache"))
    load_plugins([plugin], shipped=True)
    assert sys.modules[module].__file__ == str(plugin_cache_dir() / plugin.digest / f"{module}.py")
    load_plugins([plugin], shipped=True)  # a reused worker: imported once
    assert model_spec(f"{module}-cnn").source == "plugin"


def test_a_package_folder_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / f"pkg_{secrets.token_hex(4)}"
    package.mkdir()
    (package / "__init__.py").write_text("from . import nets\n")
    (package / "nets.py").write_text("from torch import nn\n\n\ndef small(num_classes):\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))\n")
    (plugin,) = resolve_plugins([package.name + "/"], key="plugins", relative_to=tmp_path)
    monkeypatch.setenv("NEQ_PLUGIN_CACHE", str(tmp_path / "cache"))
    load_plugins([plugin], shipped=True)
    assert (plugin_cache_dir() / plugin.digest / package.name / "nets.py").is_file()
    assert model_problems(ModelConfig(name=f"{package.name}.nets:small")) == []


def test_an_installed_distribution_offers_plugins_through_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = write_plugin(tmp_path / "site")
    dist = tmp_path / "site" / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[neqtune.plugins]\nown = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    space = build_space(plugin_space(module, write_digits(tmp_path / "data"), []), "<test>")
    assert [plugin.key for plugin in space.plugins] == ["entry point own"]
    assert "plugins" not in space.to_dict()  # installed on every node: not listed in the saved space


def test_the_saved_space_loads_its_plugins_again(tmp_path: Path) -> None:
    module = write_plugin(tmp_path / "own")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(plugin_space(module, write_digits(tmp_path / "data"), [f"own/{module}.py"])))
    saved = load_space(space).to_dict()
    assert saved["plugins"] == [str(tmp_path / "own" / f"{module}.py")]
    again = build_space(saved, str(tmp_path / "elsewhere" / "space.yaml"))  # what --resume reads
    assert [plugin.module for plugin in again.plugins] == [module]


# --- model names beyond the registry ------------------------------------------------------------------------------


@pytest.mark.parametrize(("builder", "head"), [("mobilenet_v3_small", "classifier.3"), ("efficientnet_b0", "classifier.1")])
def test_torchvision_builders_build_with_a_head_for_the_classes(builder: str, head: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=f"torchvision:{builder}"), num_classes=7)
    assert find_classifier(model) == head
    model.train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert model_spec(f"torchvision:{builder}").input_size == 224


def test_torchvision_imagenet_weights_are_located_not_fetched() -> None:
    source = imagenet_weights_source(ModelConfig(name="torchvision:efficientnet_b0", pretrained="imagenet"))
    assert source.url.endswith("/efficientnet_b0_rwightman-7f5810bc.pth") and source.path.name == "efficientnet_b0_rwightman-7f5810bc.pth"
    assert model_problems(ModelConfig(name="torchvision:efficientnet_b0", pretrained="imagenet")) == []


def test_an_unknown_torchvision_builder_lists_close_matches() -> None:
    (problem,) = model_problems(ModelConfig(name="torchvision:mobilenet_v3_smal"))
    assert problem.key == "model.name"
    assert problem.message.startswith("unknown torchvision classification builder 'mobilenet_v3_smal'; close matches: torchvision:mobilenet_v3_small")


class TwoHeads(nn.Module):
    """A network whose classifier is not the last nn.Linear (an auxiliary projection comes after it)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3)
        self.out = nn.Linear(4, num_classes)
        self.projection = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x).mean(dim=(2, 3)))


def two_heads(num_classes: int) -> nn.Module:
    return TwoHeads(num_classes)


def conv_only(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def not_a_module(num_classes: int) -> str:
    return "a network"


def fixed_head(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))


def test_a_module_callable_builds_with_factory_num_classes() -> None:
    model = build_model(ModelConfig(name=f"{__name__}:two_heads", classifier="out"), num_classes=5)
    assert isinstance(model, TwoHeads) and model.out.out_features == 5
    assert model_problems(ModelConfig(name=f"{__name__}:two_heads", classifier="out")) == []
    replaced = build_model(ModelConfig(name=f"{__name__}:fixed_head"), num_classes=5)  # a head of another size is replaced
    assert find_classifier(replaced) == "3" and replaced(torch.randn(1, 3, 8, 8)).shape == (1, 5)


@pytest.mark.parametrize(
    ("name", "classifier", "key", "message"),
    [
        (f"{__name__}:not_a_module", None, "model.name", f"{__name__}:not_a_module(num_classes=10) returned a str, not an nn.Module"),
        (f"{__name__}:conv_only", None, "model.classifier", f"model '{__name__}:conv_only': Sequential has no nn.Linear classifier"),
        (f"{__name__}:two_heads", "body", "model.classifier", f"model '{__name__}:two_heads': 'body' is a Conv2d, not an nn.Linear"),
        (f"{__name__}:missing", None, "model.name", f"{__name__}:missing: module '{__name__}' has no 'missing'"),
        ("no_such_module_x:net", None, "model.name", "no_such_module_x:net: cannot import module 'no_such_module_x': ModuleNotFoundError"),
    ],
)
def test_model_name_problems(name: str, classifier: str | None, key: str, message: str) -> None:
    (problem,) = model_problems(ModelConfig(name=name, classifier=classifier))
    assert problem.key == key and problem.message.startswith(message), problem


def test_a_bad_model_name_stops_the_dry_run_and_the_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    for dry in (["--dry-run"], []):
        code, _, err = run_cli(["--set", "model.name=torchvision:resnet17", "--results", str(results), *dry], capsys)
        assert code == 2 and "model.name: unknown torchvision classification builder 'resnet17'; close matches: torchvision:resnet18" in err
        assert err.count("\n") == 1
    assert not results.exists()


def test_plugin_errors_read_as_one_line() -> None:
    err = PluginError("--plugin", "mine.py", "NameError: name 'nn' is not defined")
    assert str(err) == "--plugin: mine.py: NameError: name 'nn' is not defined"


def test_the_docs_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/plugins.md: its plug-in file, its space file and its command, as written."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    blocks = {lang: text.split(f"```{lang}\n", 1)[1].split("```", 1)[0] for lang in ("python", "yaml", "sh")}
    (tmp_path / "my_models.py").write_text(blocks["python"])
    (tmp_path / "my_space.yaml").write_text(blocks["yaml"])
    monkeypatch.chdir(tmp_path)
    command = blocks["sh"].split()
    assert command[:2] == ["python", "run_search.py"]
    code, out, err = run_cli(command[2:], capsys)
    assert code == 0, err
    assert out.startswith("my_space.yaml: valid; 3 trials (grid)")
    for line in ("model my-cnn (my lab", "model my_models:small_cnn (callable", "model torchvision:mobilenet_v3_small (torchvision, native 224 px"):
        assert line in out, out
