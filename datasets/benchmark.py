"""Benchmark: building a data set cold (indexes read from disk) versus again in the same process (cached).

Ray reuses a worker process for many trials, and every trial calls
:func:`neqtune.datasets.build_dataset`; the per-process caches make every build after
the first cheap. This runs both side by side in one process and prints the
medians and their ratio, plus the time to fetch one evaluation batch::

    python -m neqtune.datasets.benchmark fashion-mnist --root /usr/share/datasets/fashion-mnist
    NEQ_DATA=/data python -m neqtune.datasets.benchmark c10 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence, Sized
from typing import cast

import torch
from torch.utils.data import DataLoader

from neqtune.datasets import build_dataset, check_dataset, dataset_names
from neqtune.datasets.cifar import read_cifar
from neqtune.datasets.config import DataConfig
from neqtune.datasets.fashion_mnist import read_fashion_mnist
from neqtune.datasets.file_index import clear_memory
from neqtune.datasets.parsing import ConfigError
from neqtune.datasets.vww import read_vww_annotations

CACHES: tuple[Callable[[], None], ...] = (
    read_cifar.cache_clear,
    read_fashion_mnist.cache_clear,
    clear_memory,
    read_vww_annotations.cache_clear,
)


def clear_caches() -> None:
    """Forget every per-process index (what a fresh worker process starts with)."""
    for clear in CACHES:
        clear()


def timed(action: Callable[[], object]) -> float:
    """Wall time of ``action()``, seconds."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit code 2 when the data set is not there."""
    parser = argparse.ArgumentParser(prog="python -m neqtune.datasets.benchmark", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("name", choices=[n for n in dataset_names() if n != "digits"])
    parser.add_argument("--root", default=None, help="the data set's directory (default $NEQ_DATA/<name>)")
    parser.add_argument("--repeats", type=int, default=5, help="builds of each kind (default 5)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256, help="images in the timed evaluation batch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = DataConfig(name=args.name, root=args.root, image_size=args.image_size)
    try:
        check_dataset(config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cold, warm = [], []
    for _ in range(args.repeats):
        clear_caches()
        cold.append(timed(lambda: build_dataset(config)))
        warm.append(timed(lambda: build_dataset(config)))
    splits = build_dataset(config)
    loader = DataLoader(splits.test, batch_size=args.batch)
    batch_s = timed(lambda: next(iter(loader)))
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    sizes = " / ".join(f"{len(cast('Sized', getattr(splits, split)))} {split}" for split in ("train", "val", "velocity", "test"))
    print(f"{args.name}: {sizes}")
    print(f"build, cold (indexes read from disk): median {cold_s * 1e3:.1f} ms over {args.repeats}")
    print(f"build, cached (same process):        median {warm_s * 1e3:.1f} ms over {args.repeats}")
    print(f"ratio cold / cached: {cold_s / warm_s:.0f}x")
    print(f"one evaluation batch of {args.batch} images at {args.image_size} px: {batch_s * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
