"""Every data set read from a tiny fixture in its real on-disk format, the split tool, and bad data."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from data_fixtures import (
    FOLDER_CLASSES,
    WRITERS,
    fixture_env,
    huggingface_installed,
    label_colour,
    pets_breeds,
    vww_annotations,
    write_cub_release,
    write_fixture,
    write_flowers_release,
    write_food_release,
    write_jpeg,
    write_pets_release,
)

from neqtune.datasets import DatasetError, build_dataset, check_dataset, dataset_names, dataset_root
from neqtune.datasets.cifar import read_cifar
from neqtune.datasets.config import FOLDER_DATASETS
from neqtune.datasets.samples import SplitView
from neqtune.datasets.split import main as split_main
from neqtune.search.cli import main as cli_main
from neqtune.trainables.config import ConfigError, DataConfig

# hf-disk needs the extra [hf] (installed by [dev]); without it, it has no fixture.
FILE_DATASETS = [name for name in dataset_names() if name != "digits" and (name != "hf-disk" or huggingface_installed())]

# name: (classes, official train images, official test images) of the fixture
FIXTURE_SIZES = {
    "c10": (10, 40, 10),
    "c100": (100, 200, 100),
    "fashion-mnist": (10, 30, 10),
    "vww": (2, 16, 6),
    "flowers": (102, 204, 102),  # train + val
    "food": (101, 202, 101),
    "pets": (37, 74, 37),
    "cub": (200, 400, 200),
    "image-folder": (5, 20, 5),
    "hf-disk": (4, 16, 4),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All fixtures, once per module, in the NEQ_DATA layout."""
    root = tmp_path_factory.mktemp("neq_data")
    fixture_env(root)
    return root


def config(name: str, root: Path, **values: object) -> DataConfig:
    return DataConfig(name=name, root=str(root / name), **values)  # type: ignore[arg-type]


def pixel_colour(image: torch.Tensor) -> np.ndarray:
    """Mean RGB of a normalised image tensor, back in 0..255."""
    return ((image * 0.5 + 0.5) * 255).mean(dim=(1, 2)).numpy()


def test_every_registered_data_set_has_a_fixture() -> None:
    assert sorted(WRITERS) == sorted(FILE_DATASETS) == sorted(set(FIXTURE_SIZES) & set(FILE_DATASETS))


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_fixture_loads_with_official_splits_shapes_and_labels(name: str, data_root: Path) -> None:
    classes, n_train, n_test = FIXTURE_SIZES[name]
    cfg = config(name, data_root, image_size=20, velocity_images=3, val_fraction=0.25)
    check_dataset(cfg)
    splits = build_dataset(cfg)
    assert splits.num_classes == classes and len(set(splits.classes)) == classes
    sizes = {split: len(getattr(splits, split)) for split in ("train", "val", "velocity", "test")}
    assert sizes == {"velocity": 3, "val": int(0.25 * (n_train - 3)), "train": n_train - 3 - int(0.25 * (n_train - 3)), "test": n_test}
    for split in ("train", "val", "velocity", "test"):
        image, label = getattr(splits, split)[0]
        assert image.shape == (3, 20, 20) and image.dtype == torch.float32
        assert isinstance(label, int) and 0 <= label < classes
        assert -1.0 <= float(image.min()) and float(image.max()) <= 1.0
    # The colour of a fixture image encodes its label: evaluation transforms keep it (up to JPEG rounding).
    test = splits.test
    for position in range(0, len(test), max(1, len(test) // 7)):
        image, label = test[position]
        expected = np.array(label_colour(label))
        if name == "fashion-mnist":
            expected = np.full(3, 20 * label + 5)
        assert np.abs(pixel_colour(image) - expected).max() < 4, (name, position, label)


def test_class_names_follow_each_format(data_root: Path) -> None:
    def classes(name: str) -> list[str]:
        return build_dataset(config(name, data_root)).classes

    assert classes("c10") == [f"class{c}" for c in range(10)]
    assert classes("c100")[:2] == ["fine0", "fine1"]
    assert classes("fashion-mnist")[0] == "T-shirt/top" and classes("fashion-mnist")[9] == "Ankle boot"
    assert classes("vww") == ["not-person", "person"]
    assert classes("flowers")[:2] == ["001", "002"] and classes("flowers")[-1] == "102"
    assert classes("food")[:2] == ["dish_000", "dish_001"]
    assert classes("pets") == pets_breeds()
    assert classes("cub")[0] == "001.class"


def test_vww_labels_come_from_the_annotations(data_root: Path) -> None:
    splits = build_dataset(config("vww", data_root, image_size=16))
    test = splits.test
    assert [test[i][1] for i in range(len(test))] == [0, 1, 0, 1, 0, 1]  # odd positions hold a person
    assert isinstance(test, SplitView)
    assert Path(test.source.paths[0]).name == "COCO_val2014_000000000500.jpg"  # type: ignore[attr-defined]


def test_fashion_mnist_grey_images_become_three_equal_channels(data_root: Path) -> None:
    image, _ = build_dataset(config("fashion-mnist", data_root, image_size=28)).test[3]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@pytest.mark.parametrize("name", ["c10", "cub"])
def test_splits_are_disjoint_complete_and_fixed_by_the_split_seed(name: str, data_root: Path) -> None:
    a = build_dataset(config(name, data_root, split_seed=3))
    b = build_dataset(config(name, data_root, split_seed=3))
    c = build_dataset(config(name, data_root, split_seed=4))
    parts = [a.train.indices, a.val.indices, a.velocity.indices]  # type: ignore[attr-defined]
    assert sorted(i for part in parts for i in part) == list(range(FIXTURE_SIZES[name][1]))
    assert a.train.indices == b.train.indices and a.velocity.indices == b.velocity.indices  # type: ignore[attr-defined]
    assert a.train.indices != c.train.indices  # type: ignore[attr-defined]
    assert a.train.source is a.val.source is a.velocity.source  # type: ignore[attr-defined]


def test_train_split_is_augmented_and_the_others_are_not(data_root: Path) -> None:
    splits = build_dataset(config("c10", data_root))
    assert any("RandomResizedCrop" in repr(t) for t in splits.train.transform.transforms)  # type: ignore[attr-defined]
    for split in (splits.val, splits.velocity, splits.test):
        assert not any("Random" in repr(t) for t in split.transform.transforms)  # type: ignore[attr-defined]
        assert torch.equal(split[0][0], split[0][0])
    vww = build_dataset(config("vww", data_root))
    assert [type(t).__name__ for t in vww.train.transform.transforms][:2] == ["Resize", "RandomHorizontalFlip"]  # type: ignore[attr-defined]
    assert [type(t).__name__ for t in vww.test.transform.transforms][:1] == ["Resize"]  # type: ignore[attr-defined]


def test_seeded_augmentation_repeats(data_root: Path) -> None:
    train = build_dataset(config("food", data_root, image_size=16)).train
    torch.manual_seed(7)
    first = train[5][0]
    torch.manual_seed(7)
    assert torch.equal(first, train[5][0])


def test_splits_pickle_and_indexes_are_cached_per_process(data_root: Path) -> None:
    splits = build_dataset(config("c100", data_root))
    copy = pickle.loads(pickle.dumps(splits))
    assert torch.equal(copy.test[4][0], splits.test[4][0]) and copy.classes == splits.classes
    hits = read_cifar.cache_info().hits
    again = build_dataset(config("c100", data_root))
    assert read_cifar.cache_info().hits == hits + 1
    assert again.train.source is splits.train.source  # type: ignore[attr-defined]


def test_neq_data_gives_the_root_and_data_root_wins(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEQ_DATA", str(data_root))
    assert dataset_root(DataConfig(name="pets")) == data_root / "pets"
    assert dataset_root(DataConfig(name="pets", root="/elsewhere")) == Path("/elsewhere")
    for name in FILE_DATASETS:
        check_dataset(DataConfig(name=name))
    assert build_dataset(DataConfig(name="vww", velocity_images=2)).num_classes == 2


def test_fixture_env_returns_the_neq_data_variable(tmp_path: Path) -> None:
    assert fixture_env(tmp_path) == {"NEQ_DATA": str(tmp_path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILE_DATASETS)


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_a_missing_data_set_is_one_config_error_naming_layout_and_source(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        check_dataset(config(name, tmp_path))
    err = caught.value
    assert err.key == "data.root" and "\n" not in str(err)
    assert str(tmp_path / name) in err.message and "expected" in err.message
    assert "http" in err.message or name in FOLDER_DATASETS  # the user's own folder comes from nowhere to link
    with pytest.raises(ConfigError, match=r"^data.root: "):
        build_dataset(config(name, tmp_path))


def test_without_root_or_neq_data_the_error_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEQ_DATA", raising=False)
    with pytest.raises(ConfigError, match=r"data.root: data set 'c10' needs a directory: set data.root, or set NEQ_DATA"):
        check_dataset(DataConfig(name="c10"))


def test_download_is_allowed_only_where_torchvision_can_fetch(tmp_path: Path) -> None:
    for name in ("c10", "c100", "fashion-mnist", "flowers", "food", "pets"):
        check_dataset(config(name, tmp_path, download=True))  # missing is fine: the trial will fetch it
    for name in ("vww", "cub"):
        with pytest.raises(ConfigError, match=r"cannot be downloaded automatically") as caught:
            check_dataset(config(name, tmp_path, download=True))
        assert caught.value.key == "data.download"


def test_the_cli_refuses_a_space_whose_data_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(f"data: {{name: flowers, root: {tmp_path / 'nowhere'}}}\nmodel: {{name: mbv2-w0.35}}\nbudget: {{policy: full}}\n")
    assert cli_main(["--space", str(space), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {space}: data.root: no Oxford Flowers-102 at {tmp_path / 'nowhere'}") and "\n" not in err
    assert not (tmp_path / "results").exists()


def test_the_cli_accepts_a_space_whose_data_is_there(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(f"data: {{name: cub, root: {data_root / 'cub'}}}\nmodel: {{name: mbv2-w0.35}}\nbudget: {{policy: full}}\n")
    assert cli_main(["--space", str(space), "--dry-run"]) == 0, capsys.readouterr().err
    assert "valid" in capsys.readouterr().out


def test_raw_coco_annotations_are_refused_naming_the_file_to_build(tmp_path: Path) -> None:
    root = write_fixture("vww", tmp_path / "vww")
    (root / "annotations" / "instances_train.json").write_text(json.dumps(vww_annotations(range(100, 116), "train", raw_coco=True)))
    with pytest.raises(ConfigError, match=r"instances_train.json is a raw COCO annotation file \(category_id 18") as caught:
        check_dataset(DataConfig(name="vww", root=str(root)))
    assert "create_visualwakewords_annotations.py" in caught.value.message
    # Only the raw COCO files, under their own names:
    (root / "annotations" / "instances_train.json").rename(root / "annotations" / "instances_train2014.json")
    with pytest.raises(ConfigError, match=r"instances_train.json is missing and .*instances_train2014.json is raw COCO"):
        check_dataset(DataConfig(name="vww", root=str(root)))


def test_raw_coco_labels_deep_inside_a_large_file_are_refused_when_loading(tmp_path: Path) -> None:
    root = write_fixture("vww", tmp_path / "vww")
    data = vww_annotations(range(100, 116), "train", raw_coco=True)
    padded = {"info": {"pad": "x" * (3 << 20)}, "images": data["images"], "annotations": data["annotations"], "zz": "y" * (3 << 20)}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(padded))
    cfg = DataConfig(name="vww", root=str(root))
    check_dataset(cfg)  # the cheap sniff sees only padding
    with pytest.raises(DatasetError, match=r"instances_train.json is a raw COCO annotation file"):
        build_dataset(cfg)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_corrupt_image_raises_an_error_naming_the_file(damage: str, tmp_path: Path) -> None:
    root = write_fixture("pets", tmp_path / "pets")
    splits = build_dataset(DataConfig(name="pets", root=str(root), velocity_images=2))
    path = Path(splits.test.source.paths[1])  # type: ignore[attr-defined]
    if damage == "garbage":
        path.write_bytes(b"not a jpeg at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    else:
        path.unlink()
    splits.test[0]  # its neighbours still load
    with pytest.raises(DatasetError, match=rf"cannot read image {path}"):
        splits.test[1]


WRITE_RELEASE = {"cub": write_cub_release, "food": write_food_release, "pets": write_pets_release, "flowers": write_flowers_release}


def release_label_of(name: str, folder: str, classes: int) -> int:
    """The release's label of a class directory the split tool wrote."""
    if name == "cub":
        return int(folder[:3]) - 1  # 001.Bird_000
    if name == "food":
        return int(folder[-3:])  # dish_000
    if name == "pets":
        return pets_breeds(classes).index(folder)
    return int(folder) - 1  # flowers: 001


@pytest.mark.parametrize("name", sorted(WRITE_RELEASE))
def test_split_tool_turns_a_release_into_image_folders(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    classes = 6
    WRITE_RELEASE[name](tmp_path / "raw", classes)
    source = next((tmp_path / "raw").iterdir())  # the release directory itself
    dest = tmp_path / name
    assert split_main([name, str(source), str(dest)]) == 0
    captured = capsys.readouterr()
    assert "100%" in captured.err and f"wrote {dest}" in captured.out
    splits_written = sorted(p.name for p in dest.iterdir())
    assert splits_written == (["test", "train", "val"] if name == "flowers" else ["test", "train"])
    per_class = {split: sorted(len(list(d.iterdir())) for d in (dest / split).iterdir()) for split in splits_written}
    assert all(len(counts) == classes for counts in per_class.values())
    loaded = build_dataset(DataConfig(name=name, root=str(dest), velocity_images=2, image_size=16))
    assert loaded.num_classes == classes and len(loaded.test) == classes
    assert len(loaded.train) + len(loaded.val) + len(loaded.velocity) == 2 * classes
    for position in range(len(loaded.test)):
        image, label = loaded.test[position]
        folder = loaded.classes[label]
        release_label = release_label_of(name, folder, classes)
        assert np.abs(pixel_colour(image) - np.array(label_colour(release_label))).max() < 4, (folder, label)


def test_split_tool_accepts_the_parent_of_the_release_and_links(tmp_path: Path) -> None:
    write_cub_release(tmp_path / "raw", 3)
    assert split_main(["cub", str(tmp_path / "raw"), str(tmp_path / "cub"), "--link", "--quiet"]) == 0
    image = next((tmp_path / "cub" / "train" / "001.Bird_000").iterdir())
    assert image.stat().st_nlink == 2


def test_split_tool_refuses_bad_input_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_food_release(tmp_path / "raw", 3)
    source = tmp_path / "raw" / "food-101"
    existing = tmp_path / "existing"
    existing.mkdir()
    assert split_main(["food", str(source), str(existing)]) == 2
    assert f"{existing}: already exists" in capsys.readouterr().err
    assert split_main(["pets", str(source), str(tmp_path / "pets")]) == 2
    assert "no Oxford-IIIT Pets release here, missing annotations/trainval.txt, annotations/test.txt" in capsys.readouterr().err
    (source / "images" / "dish_001" / "1001.jpg").unlink()
    assert split_main(["food", str(source), str(tmp_path / "food")]) == 2
    err = capsys.readouterr().err
    assert f"\nerror: {source / 'images' / 'dish_001' / '1001.jpg'}: image listed by the release is missing\n" in err
    (source / "meta" / "test.json").write_text("{not json")
    assert split_main(["food", str(source), str(tmp_path / "food")]) == 2
    assert f"cannot read {source.resolve() / 'meta' / 'test.json'}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "raw"]


def test_split_tool_reports_a_malformed_split_file_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cub_release(tmp_path / "raw", 2)
    (tmp_path / "raw" / "CUB_200_2011" / "train_test_split.txt").write_text("1 1\n2 maybe\n")
    assert split_main(["cub", str(tmp_path / "raw"), str(tmp_path / "cub")]) == 2
    assert "train_test_split.txt, line 2: expected '<image id> <1 for train, 0 for test>'" in capsys.readouterr().err


def test_split_tool_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        split_main(["--help"])
    assert caught.value.code == 0
    assert "{cub,flowers,food,pets}" in capsys.readouterr().out


def test_an_image_folder_without_classes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "food" / "train").mkdir(parents=True)
    (tmp_path / "food" / "test").mkdir()
    with pytest.raises(ConfigError, match=r"food/train has no class directories"):
        check_dataset(config("food", tmp_path))
    write_jpeg(tmp_path / "food" / "train" / "a" / "x.jpg", 0)
    write_jpeg(tmp_path / "food" / "test" / "b" / "y.jpg", 1)
    with pytest.raises(DatasetError, match=r"class 'b' has no directory in"):
        build_dataset(config("food", tmp_path, velocity_images=1))


def test_fixture_sizes_match_the_writers() -> None:
    assert FOLDER_CLASSES == {name: FIXTURE_SIZES[name][0] for name in FOLDER_CLASSES}


def test_torchvision_reads_the_fixtures_as_we_do(data_root: Path, tmp_path: Path) -> None:
    """The fixtures are in the real formats: torchvision's own readers see the same images and labels."""
    from torchvision.datasets import CIFAR10, CIFAR100, Flowers102, Food101, OxfordIIITPet
    from torchvision.datasets.mnist import read_image_file, read_label_file

    class Cifar10(CIFAR10):  # the fixture's files do not have the release's md5 sums
        meta: ClassVar[dict[str, Any]] = {**CIFAR10.meta, "md5": None}

        def _check_integrity(self) -> bool:
            return True

    class Cifar100(CIFAR100):
        meta: ClassVar[dict[str, Any]] = {**CIFAR100.meta, "md5": None}

        def _check_integrity(self) -> bool:
            return True

    class Flowers(Flowers102):
        def _check_integrity(self) -> bool:
            return True

    for name, reader in (("c10", Cifar10), ("c100", Cifar100)):
        theirs = reader(str(data_root / name), train=False)
        ours = build_dataset(config(name, data_root)).test.source  # type: ignore[attr-defined]
        assert np.array_equal(theirs.data, ours.images) and theirs.targets == ours.labels.tolist()
        assert theirs.classes == build_dataset(config(name, data_root)).classes
    for name, split, their_reader in (
        ("flowers", "test", lambda root: Flowers(root, split="test")),
        ("food", "test", lambda root: Food101(root, split="test")),
        ("pets", "test", lambda root: OxfordIIITPet(root, split="test")),
    ):
        theirs = their_reader(str(data_root / name))
        files = getattr(theirs, "_image_files", None) or theirs._images
        ours = getattr(build_dataset(config(name, data_root)), split).source
        assert sorted(zip(map(str, files), theirs._labels, strict=True)) == sorted(zip(ours.paths, ours.labels, strict=True))
    import gzip
    import shutil

    for prefix in ("train", "t10k"):
        for kind, read in (("images-idx3", read_image_file), ("labels-idx1", read_label_file)):
            plain = tmp_path / f"{prefix}-{kind}-ubyte"
            with gzip.open(data_root / "fashion-mnist" / f"{plain.name}.gz") as packed, open(plain, "wb") as out:
                shutil.copyfileobj(packed, out)
            source = build_dataset(config("fashion-mnist", data_root)).test.source  # type: ignore[attr-defined]
            if prefix == "t10k":
                assert np.array_equal(read(str(plain)).numpy(), source.images if kind.startswith("images") else source.labels)


def test_a_trial_on_a_fixture_repeats_under_its_seed(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neqtune.trainables import train

    monkeypatch.setenv("NEQ_DATA", str(data_root))
    torch.set_num_threads(1)
    trial = {
        "data": {"name": "vww", "image_size": 32, "velocity_images": 4, "batch_size": 8},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": 2, "seed": 3},
        "budget": {"policy": "velocity", "ratio": 0.1},
    }
    runs: list[list[dict[str, object]]] = [[], []]
    for rows in runs:
        train(trial, lambda metrics, *_, rows=rows: rows.append(metrics))  # type: ignore[misc]
    keys = ("train_loss", "train_top1", "val_top1", "test_top1", "params_updated")
    assert [[r[k] for k in keys] for r in runs[0]] == [[r[k] for k in keys] for r in runs[1]]
    assert len(runs[0]) == 2


def test_the_benchmark_compares_cold_and_cached_builds(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from neqtune.datasets.benchmark import main as benchmark_main

    assert benchmark_main(["pets", "--root", str(data_root / "pets"), "--repeats", "2", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "pets: 52 train / 12 val / 10 velocity / 37 test" in out and "ratio cold / cached:" in out
    assert benchmark_main(["pets", "--root", str(data_root / "missing")]) == 2


def test_digits_are_read_as_scikit_learn_loads_them() -> None:
    """The digits come from scikit-learn's CSV without importing scikit-learn: the same pixels and labels as load_digits()."""
    from sklearn.datasets import load_digits

    from neqtune.datasets.digits import digit_images

    bunch = load_digits()
    images, labels = digit_images(8).tensors
    expected = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0
    assert torch.equal(labels, torch.as_tensor(bunch.target, dtype=torch.long))
    assert images.shape == (1797, 3, 8, 8)
    assert torch.allclose(images[:, 0] * 0.5 + 0.5, expected, atol=1e-6)  # 8 px: the bilinear resize keeps every pixel


def test_a_release_is_indexed_once_per_node_and_rebuilt_when_its_metadata_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Food-101 as released: the node's file index watches meta/*.json and the image directories (datasets/file_index.py)."""
    from neqtune.datasets import file_index

    monkeypatch.setenv("NEQ_CACHE", str(tmp_path / "cache"))
    root = write_food_release(tmp_path / "food", classes=8)
    when = time.time_ns() - 60_000_000_000
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(when, when))  # a release unpacked a minute ago
    file_index.clear_memory()
    first = build_dataset(config("food", tmp_path))
    assert len(list((tmp_path / "cache").glob("index-*.json"))) == 1
    file_index.clear_memory()
    images = {str(p) for p in root.rglob("*.jpg")}
    stat_calls: list[str] = []
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        stat_calls.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    again = build_dataset(config("food", tmp_path))
    monkeypatch.undo()
    assert not images & set(stat_calls)  # no image stat-ed: 8 class directories, the release and its two json files
    assert again.train.source == first.train.source and again.train.source.digest == first.train.source.digest  # type: ignore[attr-defined]
    meta = root / "food-101" / "meta" / "train.json"
    table = json.loads(meta.read_text())
    table["dish_000"] = table["dish_000"][:1]  # one image fewer in train
    meta.write_text(json.dumps(table))
    file_index.clear_memory()
    changed = build_dataset(config("food", tmp_path))
    assert len(changed.train.source) == len(first.train.source) - 1  # type: ignore[attr-defined, arg-type]
