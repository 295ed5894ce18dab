"""The input pipeline: loader workers, the decoded cache under a trial, batched augmentation, reproducibility, bad input."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from data_fixtures import write_fashion_mnist
from PIL import Image

from neqtune.datasets import build_dataset
from neqtune.datasets.config import DataConfig
from neqtune.datasets.pipeline import BatchedLoader, LoaderSettings, loader_workers, make_loader
from neqtune.datasets.samples import SplitView
from neqtune.search.cli import main
from neqtune.search.space import DEFAULT_SPACE
from neqtune.trainables import TrialConfig
from neqtune.trainables.checks import check_config
from neqtune.trainables.config import ConfigError
from neqtune.trainables.trainer import BudgetedRun, Metrics, StateFn, train

TIMING = ("epoch_time_s", "velocity_time_s")


def write_image_folder(root: Path, *, per_class: int = 10, size: tuple[int, int] = (90, 68)) -> Path:
    """``train/`` and ``test/`` of two classes: real JPEGs with structure (gradients and noise), not flat colours."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 2)):
        for label in range(2):
            for i in range(count):
                y, x = np.mgrid[0 : size[1], 0 : size[0]]
                base = np.stack([x * (2 + label), y * (3 - label), (x + y) % 97], axis=-1) % 256
                pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
                path = root / split / f"class{label}" / f"{i:03d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path, quality=90)
    return root


def settings(seed: int = 0, cpus: int = 1) -> LoaderSettings:
    return LoaderSettings(torch.device("cpu"), cpus, torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 3))


def batches(loader: Any, count: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [batch for _, batch in zip(range(count), loader, strict=False)]


@pytest.fixture
def fashion(tmp_path: Path) -> DataConfig:
    return DataConfig(name="fashion-mnist", root=str(write_fashion_mnist(tmp_path / "fashion")), image_size=32, batch_size=8, velocity_images=2)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataConfig:
    monkeypatch.setenv("NEQ_CACHE", str(tmp_path / "cache"))
    return DataConfig(name="flowers", root=str(write_image_folder(tmp_path / "flowers")), image_size=32, batch_size=4, velocity_images=2)


def test_pil_augmentation_does_not_depend_on_the_number_of_workers(fashion: DataConfig) -> None:
    """Each training sample carries its own augmentation seed: in-process and 2 worker processes load the same crops."""
    split = build_dataset(fashion).train
    loads = [batches(make_loader(split, dataclasses.replace(fashion, workers=n), settings(), train=True), 3) for n in (0, 2)]
    for (a, la), (b, lb) in zip(*loads, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    again = batches(make_loader(split, dataclasses.replace(fashion, workers=0), settings(seed=1), train=True), 1)
    assert not torch.equal(again[0][0], loads[0][0][0])


def test_workers_auto_follows_what_a_sample_costs(fashion: DataConfig, folder: DataConfig) -> None:
    splits = build_dataset(fashion)
    digits = build_dataset(DataConfig(name="digits"))
    assert loader_workers(fashion, splits.train, cpus=3) == 2  # PIL per sample: one fewer than the trial's CPUs
    assert loader_workers(fashion, splits.train, cpus=1) == 0  # a one-CPU trial loads in its own process
    assert loader_workers(fashion, splits.train, cpus=16) == 4  # at most MAX_AUTO_WORKERS
    assert loader_workers(dataclasses.replace(fashion, augment="batched"), splits.train, cpus=3) == 0  # a gather from memory
    assert loader_workers(fashion, digits.train, cpus=3) == 0  # tensors already made
    files = build_dataset(folder)
    assert loader_workers(dataclasses.replace(folder, augment="batched"), files.train, cpus=3) == 2  # decoding files
    assert loader_workers(dataclasses.replace(fashion, workers=3), splits.train, cpus=1) == 3  # a number is a number


def test_batched_augmentation_of_arrays_is_seeded_and_shaped(fashion: DataConfig) -> None:
    config = dataclasses.replace(fashion, augment="batched")
    split = build_dataset(config).train
    loader = make_loader(split, config, settings(), train=True)
    assert isinstance(loader, BatchedLoader) and len(loader) == math.ceil(len(split) / 8)  # type: ignore[arg-type]
    first, again, other = (batches(make_loader(split, config, settings(seed), train=True), 2) for seed in (0, 0, 1))
    images, labels = first[0]
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.long
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][0], other[0][0])
    # the fixture's class c is an image of grey level 20 c + 5: the batch's labels are the images' own
    plain = make_loader(build_dataset(fashion).test, config, settings(), train=False)
    for images, labels in plain:
        grey = ((images[:, 0].mean(dim=(1, 2)) * 0.5 + 0.5) * 255).round()
        assert torch.allclose(grey, (20 * labels + 5).float(), atol=1.5)


def test_batched_eval_matches_the_pil_eval_transform(folder: DataConfig) -> None:
    """Evaluation draws nothing: the batched centre crop of the decoded files is PIL's resize and centre crop, up to resampling."""
    splits = build_dataset(folder)
    pil = torch.cat([b for b, _ in make_loader(splits.test, folder, settings(), train=False)])
    batched = torch.cat([b for b, _ in make_loader(splits.test, dataclasses.replace(folder, augment="batched"), settings(), train=False)])
    assert pil.shape == batched.shape == (len(splits.test), 3, 32, 32)  # type: ignore[arg-type]
    assert float((pil - batched).abs().mean()) < 0.03  # the batched path resamples the file at twice 32 px first, as the cache does


def test_a_trial_reads_the_decoded_cache_and_a_second_trial_reuses_it(folder: DataConfig, tmp_path: Path) -> None:
    cfg = TrialConfig(data=dataclasses.replace(folder, cache="decoded"))
    cfg.model.name, cfg.training.epochs, cfg.budget.policy, cfg.budget.ratio = "mbv2-w0.35", 1, "random", 0.2
    run = BudgetedRun(cfg)
    assert isinstance(run.data.train, SplitView) and type(run.data.train.source).__name__ == "DecodedImages"
    files = sorted((tmp_path / "cache").glob("*.u8"))
    assert len(files) == 2  # one for the official train split (train, val and velocity read it), one for the test split
    stamps = [f.stat().st_mtime_ns for f in files]
    loss, _, _ = run.train_epoch()
    assert math.isfinite(loss)
    BudgetedRun(cfg)  # a second trial on this node: the file is there, nothing is decoded again
    assert sorted((tmp_path / "cache").glob("*.u8")) == files and [f.stat().st_mtime_ns for f in files] == stamps


@pytest.mark.parametrize(
    ("data", "space_data"),
    [
        ({"augment": "batched"}, "fashion"),
        ({"augment": "batched", "cache": "decoded"}, "folder"),
        ({"cache": "decoded", "workers": 1}, "folder"),
    ],
)
def test_a_seeded_run_repeats_itself_and_resumes_exactly(data: dict[str, Any], space_data: str, request: pytest.FixtureRequest) -> None:
    """Same seed, same numbers; stopped after epoch 1 and resumed from its state, the same epoch 2 (the augmentation's generator is saved)."""
    base: DataConfig = request.getfixturevalue(space_data)
    cfg = {
        "data": {**dataclasses.asdict(base), **data},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": 2, "lr": 0.02, "momentum": 0.5},
        "budget": {"policy": "random", "ratio": 0.2},
    }
    runs = []
    for _ in range(2):
        records: list[Metrics] = []
        states: list[dict[str, Any]] = []

        def report(metrics: Metrics, state: StateFn, records: list[Metrics] = records, states: list[dict[str, Any]] = states) -> None:
            records.append(metrics)
            states.append(state())

        train(cfg, report)
        runs.append((records, states))
    (first, states), (second, _) = runs
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in first]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in second]
    resumed: list[Metrics] = []
    train(cfg, lambda metrics, state: resumed.append(metrics), resume=states[0])
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in resumed] == strip[1:]


def test_negative_workers_are_refused_when_parsing() -> None:
    with pytest.raises(ConfigError, match=r"data\.workers: must be >= 0 \(or auto\), got -1"):
        TrialConfig.from_dict({"data": {"workers": -1}})


def test_an_unwritable_cache_directory_is_refused_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("NEQ_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(ConfigError) as caught:
        check_config(TrialConfig.from_dict({"data": {"cache": "decoded"}}))
    assert caught.value.key == "data.cache" and str(tmp_path / "a-file" / "cache") in caught.value.message


def space_with(tmp_path: Path, data: dict[str, Any] | None = None, training: dict[str, Any] | None = None, **search: Any) -> Path:
    space = yaml.safe_load(DEFAULT_SPACE.read_text())
    space["data"].update(data or {})
    space.setdefault("training", {}).update(training or {})
    space["search"].update(search)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.parametrize(
    ("data", "training", "search", "key"),
    [
        ({"workers": -2}, {}, {}, "data.workers"),
        ({"cache": "decoded"}, {}, {}, "data.cache"),
        ({}, {"precision": "fp16"}, {}, "training.precision"),
        ({}, {"precision": "fp16", "device": "cpu"}, {"gpus_per_trial": 1}, "training.precision"),
        ({}, {}, {"gpus_per_trial": -0.5}, "search.gpus_per_trial"),
        ({}, {}, {"gpus_per_trial": 1.5}, "search.gpus_per_trial"),
    ],
)
def test_bad_pipeline_and_device_input_is_one_line_exit_2_nothing_written(
    data: dict[str, Any], training: dict[str, Any], search: dict[str, Any], key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("NEQ_CACHE", str(tmp_path / "a-file" / "cache"))
    out = tmp_path / "out"
    assert main(["--space", str(space_with(tmp_path, data, training, **search)), "--results", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and str(tmp_path / "space.yaml") in err, err
    assert not out.exists()


def test_only_the_training_loader_keeps_its_workers(fashion: DataConfig) -> None:
    """After an epoch and an evaluation, the loader processes still alive are the training loader's: one set, not three."""
    import multiprocessing

    splits = build_dataset(fashion)
    config = dataclasses.replace(fashion, workers=2)
    before = set(multiprocessing.active_children())
    train_loader = make_loader(splits.train, config, settings(cpus=3), train=True)
    assert len(batches(train_loader, 1)) == 1
    trained = set(multiprocessing.active_children()) - before
    evaluation = [make_loader(split, config, settings(cpus=3), train=False) for split in (splits.val, splits.test)]
    for loader in evaluation:  # kept, as a trial keeps them between epochs
        assert len(batches(loader, 100)) == len(loader)  # iterated to the end, as an evaluation does
    left = set(multiprocessing.active_children()) - before
    assert len(trained) == 2 and left == trained
