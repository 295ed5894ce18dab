"""Turn a CUB / Food / Pets / Flowers release into ``train/`` and ``test/`` image folders.

Usage::

    python -m neqtune.datasets.split cub     ~/raw/CUB_200_2011    $NEQ_DATA/cub
    python -m neqtune.datasets.split food    ~/raw/food-101        $NEQ_DATA/food
    python -m neqtune.datasets.split pets    ~/raw/oxford-iiit-pet $NEQ_DATA/pets
    python -m neqtune.datasets.split flowers ~/raw/flowers-102     $NEQ_DATA/flowers

The release files that define the official splits are read as the study's
``train_test_split`` scripts read them: CUB ``images.txt`` +
``train_test_split.txt``; Food ``meta/train.json`` + ``meta/test.json``;
Pets ``annotations/trainval.txt`` + ``annotations/test.txt``; Flowers
``setid.mat`` (train, val, test) + ``imagelabels.mat``. Class directories are
CUB's own (``001.Black_footed_Albatross``), Food's class names, Pets' breed
names and Flowers' label numbers zero-padded (``001`` .. ``102``, so that
their sorted order is the label order).

Every source image is checked before anything is written; the folders are
written to ``DEST.partial`` and renamed to ``DEST`` at the end, so ``DEST``
is either complete or absent. Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from neqtune.datasets.images import RELEASES, ReleaseIndex, missing_release_files, release_dir
from neqtune.datasets.registry import DatasetError


class SplitError(ValueError):
    """Bad input to the split tool (one line, naming the path)."""


def plan(key: str, source: Path) -> list[tuple[Path, Path]]:
    """``(source image, path under DEST)`` for every image of the release's official splits.

    Raises:
        SplitError: the release is incomplete, malformed, or names an image
            file that is not there.
    """
    release = RELEASES[key]
    if not source.is_dir():
        raise SplitError(f"{source}: no such directory (the unpacked {release.title} release)")
    missing = missing_release_files(source, release)
    if missing:
        folder = release_dir(source, release)
        raise SplitError(f"{folder}: no {release.title} release here, missing {', '.join(missing)} (get it from {release.url})")
    try:
        index: ReleaseIndex = release.read(release_dir(source, release).resolve())  # not the cached index: the tool reads afresh
    except DatasetError as err:
        raise SplitError(str(err)) from None
    moves: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for split, pairs in index.splits.items():
        for image, label in pairs:
            path = Path(image)
            if not path.is_file():
                raise SplitError(f"{path}: image listed by the release is missing")
            target = Path(split) / index.classes[label] / path.name
            if target in seen:
                raise SplitError(f"{path}: a second image named {path.name} in {split}/{index.classes[label]}")
            seen.add(target)
            moves.append((path, target))
    return moves


def write(moves: Sequence[tuple[Path, Path]], dest: Path, *, link: bool, progress: TextIO | None) -> None:
    """Copy (or hard-link) every image to ``DEST.partial/<split>/<class>/``, then rename it to ``dest``."""
    partial = dest.with_name(dest.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    step = max(1, len(moves) // 10)
    for n, (image, target) in enumerate(moves, 1):
        out = partial / target
        out.parent.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(image, out)
            except OSError:  # another file system: copy instead
                shutil.copy2(image, out)
        else:
            shutil.copy2(image, out)
        if progress is not None and (n % step == 0 or n == len(moves)):
            print(f"  {n}/{len(moves)} images ({100 * n // len(moves)}%)", file=progress, flush=True)
    partial.rename(dest)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m neqtune.datasets.split",
        description="Turn a CUB / Food / Pets / Flowers release into train/ and test/ image folders "
        "(Flowers also val/, which neqtune adds to train), by the release's official split files.",
    )
    parser.add_argument("dataset", choices=sorted(RELEASES), help="which release")
    parser.add_argument("source", type=Path, help="the unpacked release (e.g. CUB_200_2011/, food-101/, oxford-iiit-pet/, flowers-102/)")
    parser.add_argument("dest", type=Path, help="the image folder to create (must not exist); use it as data.root or $NEQ_DATA/<dataset>")
    parser.add_argument("--link", action="store_true", help="hard-link the images instead of copying them (same file system)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit code (2: bad input, nothing written)."""
    args = parse_args(argv)
    dest: Path = args.dest
    progress = None if args.quiet else sys.stderr
    try:
        if dest.exists():
            raise SplitError(f"{dest}: already exists; give a new directory")
        if not dest.parent.is_dir():
            raise SplitError(f"{dest.parent}: no such directory")
        if progress is not None:
            print(f"{args.dataset}: reading the release at {args.source}", file=progress, flush=True)
        moves = plan(args.dataset, args.source)
    except SplitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for _, target in moves:
        counts[target.parts[0]] = counts.get(target.parts[0], 0) + 1
    if progress is not None:
        print(
            f"{args.dataset}: writing {', '.join(f'{n} {split}' for split, n in counts.items())} images to {dest}",
            file=progress,
            flush=True,
        )
    write(moves, dest, link=args.link, progress=progress)
    print(f"{args.dataset}: wrote {dest} ({', '.join(f'{split}: {n}' for split, n in counts.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
