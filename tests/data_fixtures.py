"""Tiny data set fixtures in each real on-disk format, for tests and dry runs.

``write_fixture(name, root)`` writes data set ``name`` under ``root`` and
returns the directory to use as ``data.root``; ``fixture_env(tmp)`` writes
every one in the ``$NEQ_DATA`` layout and returns ``{"NEQ_DATA": str(tmp)}``.
Images are 12x10 pixels (CIFAR 32x32, Fashion-MNIST 28x28), a few per class;
the colour of an image encodes its label, so a label mix-up shows.
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = (12, 10)  # width, height: not square, so resizing and cropping are exercised

# Per fixture: classes, and images per class in the train (and test) split.
CIFAR_TRAIN_PER_CLASS = {"c10": 4, "c100": 2}
CIFAR_TEST_PER_CLASS = 1
FASHION_TRAIN, FASHION_TEST = 30, 10
VWW_TRAIN, VWW_TEST = 16, 6
FOLDER_CLASSES = {"flowers": 102, "food": 101, "pets": 37, "cub": 200}
USER_FOLDER = (5, 4, 1)  # image-folder: classes, train and test images per class
HF_FOLDER = (4, 4, 1)  # hf-disk: the same


def label_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of the fixture images of class ``label``."""
    return ((37 * label) % 256, (91 * label + 50) % 256, (13 * label + 100) % 256)


def write_jpeg(path: Path, label: int) -> None:
    """A tiny JPEG of one colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", IMAGE_SIZE, label_colour(label)).save(path, format="JPEG")


def _cifar_batch(labels: list[int], label_key: str) -> dict[str, object]:
    """A batch as the release holds it: ``data`` ``[N, 3072]`` uint8 (channel planes, rows), labels a list of ints."""
    data = np.stack([np.repeat(np.array(label_colour(label), np.uint8), 32 * 32) for label in labels])
    return {"batch_label": "fixture batch", label_key: labels, "data": data, "filenames": [f"img_{i}.png" for i in range(len(labels))]}


def _pickle(path: Path, value: object) -> None:
    # Protocol 2 with text keys: what the release's Python 2 pickles load as with encoding="latin1" (torchvision's reading).
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=2)


def write_cifar(name: str, root: Path) -> Path:
    """torchvision's CIFAR layout: ``cifar-10-batches-py/`` (5 train batches) or ``cifar-100-python/``."""
    classes = 10 if name == "c10" else 100
    train_labels = [c for c in range(classes) for _ in range(CIFAR_TRAIN_PER_CLASS[name])]
    test_labels = list(range(classes)) * CIFAR_TEST_PER_CLASS
    if name == "c10":
        folder = root / "cifar-10-batches-py"
        for i in range(5):
            _pickle(folder / f"data_batch_{i + 1}", _cifar_batch(train_labels[i::5], "labels"))
        _pickle(folder / "test_batch", _cifar_batch(test_labels, "labels"))
        _pickle(
            folder / "batches.meta", {"num_cases_per_batch": len(train_labels) // 5, "label_names": [f"class{c}" for c in range(classes)]}
        )
    else:
        folder = root / "cifar-100-python"
        _pickle(folder / "train", _cifar_batch(train_labels, "fine_labels"))
        _pickle(folder / "test", _cifar_batch(test_labels, "fine_labels"))
        _pickle(folder / "meta", {"fine_label_names": [f"fine{c}" for c in range(classes)], "coarse_label_names": ["all"]})
    return root


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path) -> Path:
    """The four gzipped idx files, as Debian's package installs them."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", FASHION_TRAIN), ("t10k", FASHION_TEST)):
        labels = np.arange(count) % 10
        images = np.stack([np.full((28, 28), 20 * label + 5) for label in labels])
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def vww_annotations(image_ids: range, split: str, *, raw_coco: bool = False) -> dict[str, object]:
    """A VWW annotation file as pyvww writes it (or raw COCO, person = 1 and a dog = 18)."""
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for n, image_id in enumerate(image_ids):
        images.append({"id": image_id, "file_name": f"COCO_{split}2014_{image_id:012d}.jpg", "height": 10, "width": 12})
        person = n % 2 == 1
        category = (1 if person else 18) if raw_coco else int(person)
        bbox = [0.0, 0.0, 6.0, 5.0] if person or raw_coco else []
        annotations.append(
            {"id": len(annotations), "image_id": image_id, "category_id": category, "area": 30.0, "bbox": bbox, "iscrowd": 0}
        )
    categories = [{"id": 0, "name": "not-person", "supercategory": "background"}, {"id": 1, "name": "person", "supercategory": "person"}]
    return {"info": {"description": "fixture"}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def write_vww(root: Path) -> Path:
    """``annotations/instances_{train,val}.json`` and the JPEGs in ``all2014/`` (label 1 on odd positions)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for file, split, ids in (
        ("instances_train.json", "train", range(100, 100 + VWW_TRAIN)),
        ("instances_val.json", "val", range(500, 500 + VWW_TEST)),
    ):
        data = vww_annotations(ids, split)
        (root / "annotations" / file).write_text(json.dumps(data))
        for image, annotation in zip(data["images"], data["annotations"], strict=True):  # type: ignore[call-overload]
            write_jpeg(root / "all2014" / image["file_name"], annotation["category_id"])
    return root


def write_flowers_release(root: Path, classes: int = FOLDER_CLASSES["flowers"]) -> Path:
    """``flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}``: per class one train, one val, one test image."""
    from scipy.io import savemat

    folder = root / "flowers-102"
    labels = [c + 1 for c in range(classes) for _ in range(3)]  # image id i (1-based) has label labels[i - 1]
    for image_id, label in enumerate(labels, 1):
        write_jpeg(folder / "jpg" / f"image_{image_id:05d}.jpg", label - 1)
    ids = np.arange(1, len(labels) + 1)
    savemat(folder / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(folder / "setid.mat", {"trnid": ids[0::3][None], "valid": ids[1::3][None], "tstid": ids[2::3][None]})
    return root


def write_food_release(root: Path, classes: int = FOLDER_CLASSES["food"]) -> Path:
    """``food-101/{images/<class>/<id>.jpg, meta/{train,test}.json, meta/classes.txt}``: 2 train, 1 test per class."""
    folder = root / "food-101"
    names = [f"dish_{c:03d}" for c in range(classes)]
    train: dict[str, list[str]] = {}
    test: dict[str, list[str]] = {}
    for c, name in enumerate(names):
        ids = [f"{name}/{1000 * c + k}" for k in range(3)]
        train[name], test[name] = ids[:2], ids[2:]
        for image in ids:
            write_jpeg(folder / "images" / f"{image}.jpg", c)
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    (folder / "meta" / "train.json").write_text(json.dumps(train))
    (folder / "meta" / "test.json").write_text(json.dumps(test))
    (folder / "meta" / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def pets_breeds(classes: int = FOLDER_CLASSES["pets"]) -> list[str]:
    """Breed names in class-id order: cats capitalised, dogs in lower case, as in the release."""
    return [f"Cat{c:02d}" if c % 3 == 0 else f"dog_breed_{c:02d}" for c in range(classes)]


def write_pets_release(root: Path, classes: int = FOLDER_CLASSES["pets"]) -> Path:
    """``oxford-iiit-pet/{images/<Breed>_<n>.jpg, annotations/{trainval,test}.txt}``: 2 trainval, 1 test per class."""
    folder = root / "oxford-iiit-pet"
    lines: dict[str, list[str]] = {"trainval": ["#Image CLASS-ID SPECIES BREED ID"], "test": []}
    for c, breed in enumerate(pets_breeds(classes)):
        species = 1 if breed[0].isupper() else 2
        for k in range(3):
            image = f"{breed}_{k + 1}"
            write_jpeg(folder / "images" / f"{image}.jpg", c)
            lines["trainval" if k < 2 else "test"].append(f"{image} {c + 1} {species} {c // 3 + 1}")
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (folder / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def write_cub_release(root: Path, classes: int = FOLDER_CLASSES["cub"]) -> Path:
    """``CUB_200_2011/{images/<NNN.Name>/<file>.jpg, images.txt, train_test_split.txt, classes.txt}``: 2 train, 1 test per class."""
    folder = root / "CUB_200_2011"
    images, split, class_lines = [], [], []
    for c in range(classes):
        directory = f"{c + 1:03d}.Bird_{c:03d}"
        class_lines.append(f"{c + 1} {directory}")
        for k in range(3):
            image_id = 3 * c + k + 1
            relative = f"{directory}/Bird_{c:03d}_{k:04d}_{image_id}.jpg"
            write_jpeg(folder / "images" / relative, c)
            images.append(f"{image_id} {relative}")
            split.append(f"{image_id} {1 if k < 2 else 0}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (folder / "classes.txt").write_text("\n".join(class_lines) + "\n")
    return root


def write_image_folder(root: Path, classes: int, *, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    """``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, the layout the split tool writes."""
    for c in range(classes):
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for k in range(count):
                write_jpeg(root / split / f"{c + 1:03d}.class" / f"img_{k}.jpg", c)
    return root


def _cub_folder(root: Path) -> Path:
    return write_image_folder(root, FOLDER_CLASSES["cub"])


def write_user_folder(root: Path) -> Path:
    """``image-folder``: a user's ``train/`` and ``test/`` class folders, PNG and JPEG mixed."""
    write_image_folder(root, USER_FOLDER[0], train_per_class=USER_FOLDER[1], test_per_class=USER_FOLDER[2])
    first_train = root / "train" / "001.class" / "img_0.jpg"
    Image.open(first_train).save(first_train.with_suffix(".png"))  # a PNG among the JPEGs, colour kept
    first_train.unlink()
    return root


def huggingface_installed() -> bool:
    """Whether HuggingFace's ``datasets`` (neqtune's extra ``[hf]``) can be imported."""
    from neqtune.datasets.hf_disk import huggingface
    from neqtune.datasets.parsing import ConfigError

    try:
        huggingface()
    except ConfigError:
        return False
    return True


def write_hf_disk(root: Path) -> Path:
    """``hf-disk``: a ``DatasetDict`` of ``train`` and ``test`` written by ``save_to_disk`` (columns ``image``, ``label``)."""
    from neqtune.datasets.hf_disk import huggingface

    hf = huggingface()
    hf.disable_progress_bars()
    classes, train_per_class, test_per_class = HF_FOLDER
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=[f"kind{c}" for c in range(classes)])})

    def split(per_class: int) -> object:
        labels = [c for c in range(classes) for _ in range(per_class)]
        images = [Image.new("RGB", IMAGE_SIZE, label_colour(c)) for c in labels]
        return hf.Dataset.from_dict({"image": images, "label": labels}, features=features)

    hf.DatasetDict({"train": split(train_per_class), "test": split(test_per_class)}).save_to_disk(str(root))
    return root


WRITERS: dict[str, Callable[[Path], Path]] = {
    "c10": lambda root: write_cifar("c10", root),
    "c100": lambda root: write_cifar("c100", root),
    "fashion-mnist": write_fashion_mnist,
    "vww": write_vww,
    "flowers": write_flowers_release,
    "food": write_food_release,
    "pets": write_pets_release,
    "cub": _cub_folder,  # the study read CUB as an image folder built by its split script
    "image-folder": write_user_folder,
}
if huggingface_installed():  # without the extra [hf] there is no hf-disk fixture, and its tests skip
    WRITERS["hf-disk"] = write_hf_disk


def write_fixture(name: str, root: Path) -> Path:
    """Write a tiny copy of data set ``name`` in its real format under ``root``; returns the ``data.root`` to use."""
    if name == "hf-disk" and name not in WRITERS:
        import pytest

        pytest.fail("HuggingFace's datasets is not installed: the dev extra installs it (pip install -e '.[dev]')")
    if name not in WRITERS:
        raise ValueError(f"no fixture for data set {name!r}; fixtures: {', '.join(sorted(WRITERS))}")
    return WRITERS[name](Path(root))


def fixture_env(tmp: Path) -> dict[str, str]:
    """Every fixture under ``tmp/<name>`` (the ``$NEQ_DATA`` layout); returns ``{"NEQ_DATA": str(tmp)}``."""
    for name in WRITERS:
        write_fixture(name, Path(tmp) / name)
    return {"NEQ_DATA": str(tmp)}
