"""``vww``: Visual Wake Words, COCO 2014 images with the annotation files of ``pyvww``.

Layout of ``<root>``::

    annotations/instances_train.json   # VWW train (COCO train2014 + val2014 minus minival)
    annotations/instances_val.json     # VWW minival: the test split
    all2014/                           # every COCO 2014 image (or train2014/ and val2014/ side by side)

The annotation files are those ``scripts/create_visualwakewords_annotations.py``
of https://github.com/Mxbonn/visualwakewords writes: COCO json whose
categories are 0 (not-person) and 1 (person). As ``pyvww`` does, the label
of an image is the ``category_id`` of its first annotation. Raw COCO
``instances_*2014.json`` files (category ids up to 90) are refused.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from neqtune.datasets.config import DataConfig
from neqtune.datasets.registry import DatasetError, DataSplits, register_check, register_dataset
from neqtune.datasets.roots import dataset_root, require
from neqtune.datasets.samples import FileSource, SplitSettings, official_splits

ANNOTATION_FILES = {"train": "instances_train.json", "test": "instances_val.json"}
IMAGE_DIRS = ("all2014", "train2014", "val2014")
CLASSES = ("not-person", "person")
HOW_TO_BUILD = (
    "build it from COCO 2014 with scripts/create_coco_train_minival_split.py then "
    "scripts/create_visualwakewords_annotations.py --threshold 0.005 --foreground_class person "
    "of https://github.com/Mxbonn/visualwakewords (pyvww)"
)
_SNIFF_BYTES = 1 << 20
_CATEGORY_ID = re.compile(rb'"category_id"\s*:\s*(\d+)')


def _raw_coco_message(path: Path, category: int) -> str:
    target = ANNOTATION_FILES["train"] if "train" in path.name else ANNOTATION_FILES["test"]
    return (
        f"{path} is a raw COCO annotation file (category_id {category} is not a VWW label 0/1); "
        f"VWW needs {path.parent / target}: {HOW_TO_BUILD}"
    )


@functools.cache
def _sniffed_category(path: Path, size: int, mtime_ns: int) -> int | None:
    """The largest ``category_id`` in the first and last MiB of a json file (cheap; keyed by size and mtime)."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
        tail = b""
        if size > 2 * _SNIFF_BYTES:
            handle.seek(size - _SNIFF_BYTES)
            tail = handle.read()
    found = [int(m) for m in _CATEGORY_ID.findall(head + tail)]
    return max(found) if found else None


def check_vww(config: DataConfig) -> None:
    """Annotation files present and not raw COCO (a cheap sniff), an image directory present."""
    require(not config.download, "Visual Wake Words cannot be downloaded automatically; " + HOW_TO_BUILD, key="data.download")
    root = dataset_root(config)
    layout = f"expected {root}/annotations/{{{','.join(ANNOTATION_FILES.values())}}} and {root}/all2014/ (or train2014/ + val2014/)"
    for name in ANNOTATION_FILES.values():
        path = root / "annotations" / name
        if not path.is_file():
            raw = path.with_name(name.replace(".json", "2014.json"))
            if raw.is_file():
                require(False, f"{path} is missing and {raw} is raw COCO, not VWW: {HOW_TO_BUILD}")
            require(False, f"no Visual Wake Words at {root} (missing {path}); {layout}; {HOW_TO_BUILD}")
        stat = path.stat()
        category = _sniffed_category(path, stat.st_size, stat.st_mtime_ns)
        if category is not None and category > 1:
            require(False, _raw_coco_message(path, category))
    require(any((root / d).is_dir() for d in IMAGE_DIRS), f"no COCO 2014 images under {root}; {layout}")


def _image_path(root: Path, file_name: str) -> str:
    """``all2014/<name>`` when that directory exists, else the ``train2014``/``val2014`` directory its name says."""
    if (root / "all2014").is_dir():
        return str(root / "all2014" / file_name)
    folder = "val2014" if "val2014" in file_name else "train2014"
    return str(root / folder / file_name)


@functools.cache
def read_vww_annotations(path: Path, root: Path) -> FileSource:
    """Image paths and 0/1 labels of one VWW annotation file, images sorted by id as ``pyvww`` does (cached per process)."""
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read VWW annotations {path}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{path}: not a COCO-style annotation file (needs 'images' and 'annotations' lists)")
    first_label: dict[int, int] = {}
    for annotation in data["annotations"]:
        category = int(annotation["category_id"])
        if category not in (0, 1):
            raise DatasetError(_raw_coco_message(path, category))
        first_label.setdefault(int(annotation["image_id"]), category)
    images = sorted(data["images"], key=lambda image: int(image["id"]))
    paths, labels = [], []
    for image in images:
        image_id = int(image["id"])
        if image_id not in first_label:
            raise DatasetError(f"{path}: image {image_id} ({image.get('file_name')}) has no annotation, so no VWW label")
        paths.append(_image_path(root, str(image["file_name"])))
        labels.append(first_label[image_id])
    return FileSource(tuple(paths), tuple(labels))


@register_dataset("vww")
def build_vww(config: DataConfig) -> DataSplits:
    """Visual Wake Words: VWW train / minival (the test split), 2 classes, square resize transforms."""
    check_vww(config)
    root = dataset_root(config).resolve()
    train = read_vww_annotations(root / "annotations" / ANNOTATION_FILES["train"], root)
    test = read_vww_annotations(root / "annotations" / ANNOTATION_FILES["test"], root)
    settings = SplitSettings.of(config, square_resize=True)
    return official_splits(train, test, CLASSES, settings)


register_check("vww")(check_vww)
