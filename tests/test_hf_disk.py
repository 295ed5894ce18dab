"""``hf-disk``: a HuggingFace ``datasets`` folder written by a real ``save_to_disk`` here.

Its splits (a ``DatasetDict``'s train / validation / test, or a single
``Dataset`` carved with the seed), a real one-trial search with the batched
augmentation, and bad input through the command line: one line naming the
key, exit 2, nothing written. Without the extra ``[hf]`` only the refusal
that says how to install it runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from search_procs import tiny_space

from neqtune.datasets import DataConfig, build_dataset, check_dataset
from neqtune.datasets.parsing import ConfigError
from neqtune.datasets.samples import SplitView
from neqtune.search.cli import main as cli_main
from neqtune.trainables.config import TrialConfig


def huggingface() -> Any:
    """HuggingFace's ``datasets`` (the extra ``[hf]``, which ``[dev]`` installs: its absence is a broken test setup)."""
    from neqtune.datasets.hf_disk import huggingface as load

    try:
        hf = load()
    except ConfigError:
        pytest.fail("HuggingFace's datasets is not installed: the dev extra installs it (pip install -e '.[dev]')")
    hf.disable_progress_bars()
    return hf


def images(count: int, start: int = 0) -> list[Image.Image]:
    out = []
    for i in range(start, start + count):
        pixels = np.full((14, 20, 3), (i * 37) % 256, dtype=np.uint8)
        pixels[:, :10, 2] = (i * 13) % 256
        out.append(Image.fromarray(pixels))
    return out


def saved(
    root: Path, *, splits: dict[str, int] | None = None, classes: tuple[str, ...] = ("ant", "bee", "cow"), label_names: bool = True
) -> Path:
    """A ``save_to_disk`` folder: a DatasetDict of ``splits`` (name: images), else one Dataset of 30 images."""
    hf = huggingface()
    label = hf.ClassLabel(names=list(classes)) if label_names else hf.Value("int64")
    features = hf.Features({"img": hf.Image(), "y": label, "note": hf.Value("string")})

    def dataset(count: int, start: int) -> Any:
        return hf.Dataset.from_dict(
            {"img": images(count, start), "y": [i % len(classes) for i in range(count)], "note": ["x"] * count}, features=features
        )

    if splits is None:
        dataset(30, 0).save_to_disk(str(root))
    else:
        hf.DatasetDict({name: dataset(n, 100 * k) for k, (name, n) in enumerate(splits.items())}).save_to_disk(str(root))
    return root


def data(root: Path, **values: Any) -> DataConfig:
    raw = {
        "name": "hf-disk",
        "root": str(root),
        "image_column": "img",
        "label_column": "y",
        "velocity_images": 3,
        "image_size": 16,
        **values,
    }
    return TrialConfig.from_dict({"data": raw}).data


def indices(view: Any) -> list[tuple[str | None, int]]:
    assert isinstance(view, SplitView)
    return [(view.source.split, i) for i in view.indices]  # type: ignore[attr-defined]


def test_a_dataset_dict_gives_its_train_validation_and_test(tmp_path: Path) -> None:
    root = saved(tmp_path / "bugs", splits={"train": 18, "validation": 6, "test": 9})
    config = data(root)
    assert config.label == "bugs"
    check_dataset(config)
    splits = build_dataset(config)
    assert splits.classes == ["ant", "bee", "cow"]
    assert (len(splits.train), len(splits.velocity), len(splits.val), len(splits.test)) == (15, 3, 6, 9)
    assert {s for s, _ in indices(splits.val)} == {"validation"} and {s for s, _ in indices(splits.test)} == {"test"}
    image, label = splits.test[4]
    assert image.shape == (3, 16, 16) and label == 1


def test_a_single_dataset_is_carved_by_the_seed(tmp_path: Path) -> None:
    root = saved(tmp_path / "flat", label_names=False)

    def carve(seed: int) -> dict[str, list[tuple[str | None, int]]]:
        splits = build_dataset(data(root, split_seed=seed))
        assert splits.classes == ["0", "1", "2"]
        return {name: indices(getattr(splits, name)) for name in ("train", "val", "velocity", "test")}

    first, again, other = carve(0), carve(0), carve(1)
    assert first == again and first != other
    assert len(first["test"]) == 6 and len(first["velocity"]) == 3
    assert sorted(i for split in first.values() for _, i in split) == list(range(30))


@pytest.mark.search
def test_a_search_reads_a_huggingface_folder_with_batched_augmentation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = saved(tmp_path / "bugs", splits={"train": 25, "test": 6})  # train 18 after velocity and val: no batch of 1
    space = tiny_space(1, {"algorithm": "grid", "num_samples": 1, "max_concurrent": 1, "params": {"training.seed": {"choice": [0]}}})
    space["experiment"] = "hf"
    space["data"] = {"name": "hf-disk", "root": str(root), "image_column": "img", "label_column": "y", "image_size": 16, "batch_size": 8,
                     "velocity_images": 3, "augment": "batched", "workers": 1}  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    assert cli_main(["--space", str(tmp_path / "space.yaml"), "--results", str(tmp_path / "results"), "--name", "hf"]) == 0, (
        capsys.readouterr()
    )
    epochs = pd.read_parquet(tmp_path / "results" / "hf" / "epochs.parquet")
    assert epochs["data.label"].tolist() == ["bugs"] and epochs.val_top1.notna().all() and epochs.test_top1.notna().all()


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], **data_values: Any) -> str:
    """The one error line of a dry run and of a run; both exit 2 and write nothing."""
    space = tiny_space(1, {"algorithm": "grid", "num_samples": 1, "params": {"training.seed": {"choice": [0]}}})
    space["data"] = {"name": "hf-disk", "image_size": 16, "image_column": "img", "label_column": "y", **data_values}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    before = sorted(os.listdir(tmp_path))
    lines = []
    for extra in (["--dry-run"], ["--results", str(tmp_path / "results")]):
        assert cli_main(["--space", str(path), *extra]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1, err
        lines.append(err[0])
    assert sorted(os.listdir(tmp_path)) == before and lines[0] == lines[1], lines
    return lines[0]


def test_without_the_extra_the_space_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # what an environment without HuggingFace's package sees
    line = refused(tmp_path, capsys, root=str(tmp_path))
    assert "data.name" in line and "pip install 'neqtune[hf]'" in line


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"image_column": "picture"}, "data.image_column", "has no column 'picture'; its columns: img, y, note"),
        ({"image_column": "note"}, "data.image_column", "column 'note' is Value, not HuggingFace's Image feature"),
        ({"label_column": "labels"}, "data.label_column", "has no column 'labels'"),
        ({"label_column": "note"}, "data.label_column", "column 'note' holds str, not class indices"),
        ({"cache": "decoded"}, "data.cache", "use cache: none"),
    ],
)
def test_bad_columns_and_options_name_their_key(
    change: dict[str, Any], key: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = saved(tmp_path / "bugs", splits={"train": 9, "test": 3})
    line = refused(tmp_path, capsys, root=str(root), **change)
    assert f": {key}: " in line and words in line, line


def test_a_folder_that_is_not_a_saved_dataset_or_has_one_class_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    huggingface()
    (tmp_path / "plain").mkdir()
    line = refused(tmp_path, capsys, root=str(tmp_path / "plain"))
    assert ": data.root: " in line and "not a folder written by save_to_disk" in line
    line = refused(tmp_path, capsys, root=str(tmp_path / "nowhere"))
    assert ": data.root: " in line and f"no HuggingFace folder at {tmp_path / 'nowhere'}" in line
    one = saved(tmp_path / "one", splits={"train": 4}, classes=("ant",))
    line = refused(tmp_path, capsys, root=str(one))
    assert ": data.label_column: " in line and "at least 2 classes" in line
