"""A trial's start-up against the data set's size, with and without the decoded cache, and the dry run of a 10 k-combination space.

``python -m benchmarks.startup`` writes its own image folders (``--workdir``,
reused when already there): 1 k, 10 k and 100 k 8x8 PNGs over 10 classes,
90 % under ``train/``, 10 % under ``test/``. For each it times a trial's
start-up, from its config dict to the first training batch, through the
trial's own code: ``TrialConfig.from_dict``, ``BudgetedRun(config)`` (the
config checks, the data set through the node's file index, the decoded
cache, the model (mbv2-w0.35 at 32 px), the budget, the loaders, the
policy's first mask) and the first batch out of the run's train loader, the
loader ``train_epoch`` iterates. No timing hook is added to the trainer:
:func:`neqtune.trainables.trainer.train` does nothing else before that batch.

Each start runs in a fresh process forked from one that has imported
neqtune (a Ray worker imports the trainable before its trial), so nothing is
held in memory from the trial before; what a node keeps is on disk, under
the cache directory the run is given:

- ``cold``: the first trial on the node: no file index, no decoded cache
  (each repeat gets an empty cache directory); with ``cache: decoded`` it
  decodes the whole train split;
- ``warm``: a later trial on the node: the index (and the cache) exist.

Beside them, the wall time of ``run_search.py --dry-run``'s work
(:func:`neqtune.search.dry_run.dry_run`) on a digits grid of 10 x 100 x 10 =
10,000 combinations (``training.lr`` x ``training.seed`` x
``training.weight_decay``). Each figure is the median of ``--repeats`` runs.
Rows go to ``docs/benchmarks/startup.parquet``, the table and the targets
(met or missed) to ``startup.md``:

- start-up at the largest folder <= 1.5 x at the smallest, once the node's
  index exists (``warm``, with and without the cache);
- a trial's start-up under 1 s once the node's cache exists (``warm``,
  ``cache: decoded``, at every size);
- the 10 k-combination dry run under 30 s.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (120, 240)
CLASSES = 10
TEST_SHARE = 0.1
IMAGE_SIDE = 8
GRID = {"training.lr": 10, "training.seed": 100, "training.weight_decay": 10}  # 10,000 combinations
QUICK_GRID = {"training.lr": 2, "training.seed": 5, "training.weight_decay": 2}
TARGETS = {"flat_ratio": 1.5, "warm_cached_s": 1.0, "dry_run_s": 30.0}
SETTLE_MARGIN_S = 0.5


# --- inputs -------------------------------------------------------------------


def _pngs(rng: np.random.Generator, label: int, variants: int) -> list[bytes]:
    """``variants`` distinct 8x8 PNGs of class ``label``, encoded once: the folder repeats them under many names."""
    encoded = []
    for _ in range(variants):
        pixels = rng.integers(0, 64, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8) + np.uint8(16 * label)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def write_folder(workdir: Path, files: int) -> Path:
    """``<workdir>/folder-<files>/{train,test}/c<k>/<n>.png``, reused if there; written into ``.partial`` and renamed, so never half there."""
    root = workdir / f"folder-{files}"
    if root.is_dir():
        return root
    partial = workdir / f"folder-{files}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    rng = np.random.default_rng(files)
    images = [_pngs(rng, label, 16) for label in range(CLASSES)]
    test_every = round(1 / TEST_SHARE)
    for n in range(files):
        label = n % CLASSES
        split = "test" if (n // CLASSES) % test_every == 0 else "train"
        directory = partial / split / f"c{label}"
        if n < CLASSES * test_every:
            directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{n:06d}.png").write_bytes(images[label][n % 16])
    partial.rename(root)
    return root


def wait_until_settled(root: Path) -> None:
    """Sleep until the folder's directories are older than the file index's settle time (a data set not being written)."""
    from neqtune.datasets.file_index import SETTLE_SECONDS

    newest = max(p.stat().st_mtime_ns for p in [root, *root.iterdir(), *(d for s in root.iterdir() for d in s.iterdir())])
    wait = newest / 1e9 + SETTLE_SECONDS + SETTLE_MARGIN_S - time.time()
    if wait > 0:
        time.sleep(wait)


def trial_config(root: Path, cache: str) -> dict[str, Any]:
    """A one-epoch trial of mbv2-w0.35 at 32 px on the folder, in the trial's own process (one CPU, no loader workers)."""
    return {
        "data": {
            "name": "image-folder",
            "root": str(root),
            "image_size": 32,
            "batch_size": 32,
            "velocity_images": 10,
            "workers": 0,
            "cache": cache,
        },
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": 1, "lr": 0.1, "device": "cpu"},
        "budget": {"policy": "velocity", "initialization": "random", "scheme": "mbv2-w0.35_scheme_3"},
    }


# --- timing -------------------------------------------------------------------


def trial_start(config: dict[str, Any], cache_dir: str) -> dict[str, float]:
    """In a fresh process: seconds from the config dict to a built run, and to its first training batch."""
    from neqtune.trainables.config import TrialConfig
    from neqtune.trainables.trainer import BudgetedRun

    os.environ["NEQ_CACHE"] = cache_dir
    torch.set_num_threads(1)
    started = time.perf_counter()
    run = BudgetedRun(TrialConfig.from_dict(config))
    built = time.perf_counter()
    images, _ = next(iter(run.train_loader))
    first_batch = time.perf_counter()
    assert images.shape[0] == config["data"]["batch_size"]
    return {"build_s": built - started, "startup_s": first_batch - started}


def _child(connection: Connection, work: Callable[..., Any], args: tuple[Any, ...]) -> None:
    connection.send(work(*args))
    connection.close()


def in_fresh_process(work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)`` in a process of its own, forked from a server that imported neqtune once (its result sent back)."""
    context = get_context("forkserver")
    context.set_forkserver_preload(["__main__", "neqtune.datasets", "neqtune.trainables.trainer", "neqtune.search.dry_run"])
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, work, args))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        result = None
    process.join()
    if process.exitcode != 0 or result is None:
        raise RuntimeError(f"the measuring process failed (exit code {process.exitcode}); its error is above")
    return result


def startup_rows(root: Path, files: int, work: Path, repeats: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Cold and warm start-up of the folder without and with the decoded cache, ``repeats`` fresh processes each."""
    rows = []
    for cache in ("none", "decoded"):
        config = trial_config(root, cache)
        cold, warm = [], []
        for repeat in range(repeats):
            node = work / f"cache-{files}-{cache}-{repeat}"
            shutil.rmtree(node, ignore_errors=True)
            cold.append(in_fresh_process(trial_start, config, str(node)))  # the node's first trial: builds the index (and the cache)
            warm.append(in_fresh_process(trial_start, config, str(node)))  # a later trial on the same node
            shutil.rmtree(node, ignore_errors=True)
        for node_state, runs in (("cold", cold), ("warm", warm)):
            row = {
                "kind": "startup",
                "files": files,
                "cache": cache,
                "node": node_state,
                "startup_s": statistics.median(r["startup_s"] for r in runs),
                "build_s": statistics.median(r["build_s"] for r in runs),
                "repeats": len(runs),
            }
            rows.append(row)
            log(
                f"  {files:>7,} files, cache {cache:<7} {node_state}: start-up {row['startup_s']:.3f} s (run built in {row['build_s']:.3f} s)"
            )
    return rows


def write_grid_space(workdir: Path, grid: dict[str, int]) -> tuple[Path, int]:
    """The offline digits grid with ``grid``'s keys searched over that many values each; its path and combination count."""
    space = yaml.safe_load((ROOT / "spaces" / "digits_grid.yaml").read_text())
    values: dict[str, list[Any]] = {
        "training.lr": [round(0.01 * (k + 1), 3) for k in range(grid["training.lr"])],
        "training.seed": list(range(grid["training.seed"])),
        "training.weight_decay": [k * 1e-5 for k in range(grid["training.weight_decay"])],
    }
    space["experiment"] = "startup-dry-run"
    space["search"]["params"] = {key: {"choice": choice} for key, choice in values.items()}
    path = workdir / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path, math.prod(len(v) for v in values.values())


def dry_run_seconds(path: Path) -> float:
    """In a fresh process: the wall time of the dry run of the space at ``path`` (its report must say valid)."""
    from neqtune.search.dry_run import dry_run

    started = time.perf_counter()
    lines, problems = dry_run(path)
    elapsed = time.perf_counter() - started
    assert not problems and ": valid;" in lines[0], lines[0]
    return elapsed


def dry_run_row(workdir: Path, grid: dict[str, int], repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    path, combinations = write_grid_space(workdir, grid)
    times = [in_fresh_process(dry_run_seconds, path) for _ in range(repeats)]
    seconds = statistics.median(times)
    log(f"  dry run of {combinations:,} combinations: {seconds:.1f} s")
    return {
        "kind": "dry_run",
        "files": combinations,
        "cache": None,
        "node": None,
        "startup_s": seconds,
        "build_s": None,
        "repeats": repeats,
    }


# --- report -------------------------------------------------------------------


def _figure(table: pd.DataFrame, files: int, cache: str, node: str) -> float:
    row = table[(table.kind == "startup") & (table.files == files) & (table.cache == cache) & (table.node == node)]
    return float(row.startup_s.iloc[0])


def targets(table: pd.DataFrame) -> list[tuple[str, float, str, bool]]:
    """``(what, measured, required, met)`` per target."""
    startups = table[table.kind == "startup"]
    smallest, largest = int(startups.files.min()), int(startups.files.max())
    found = []
    for cache in ("none", "decoded"):
        ratio = _figure(table, largest, cache, "warm") / _figure(table, smallest, cache, "warm")
        what = f"start-up at {largest:,} files / at {smallest:,}, cache {cache}, warm node (x)"
        found.append((what, ratio, f"<= {TARGETS['flat_ratio']}", ratio <= TARGETS["flat_ratio"]))
    slowest = float(startups[(startups.cache == "decoded") & (startups.node == "warm")].startup_s.max())
    found.append(
        (
            "slowest warm start-up with the decoded cache, any size (s)",
            slowest,
            f"< {TARGETS['warm_cached_s']}",
            slowest < TARGETS["warm_cached_s"],
        )
    )
    dry = table[table.kind == "dry_run"].iloc[0]
    what = f"dry run of a {int(dry.files):,}-combination space (s)"
    found.append((what, float(dry.startup_s), f"< {TARGETS['dry_run_s']}", float(dry.startup_s) < TARGETS["dry_run_s"]))
    return found


def render(table: pd.DataFrame, wall_s: float, repeats: int) -> str:
    startups = table[table.kind == "startup"]
    smallest = int(startups.files.min())
    lines = [
        "# Start-up: a trial's start against the data set's size",
        "",
        f"`python -m benchmarks.startup` on {os.cpu_count()} CPUs ({platform.machine()}, torch {torch.__version__}); medians of {repeats} runs,",
        "each trial start in a fresh process forked from one that imported neqtune. Start-up: from the trial's config dict to the",
        "first training batch (`TrialConfig.from_dict`, `BudgetedRun`, the first batch of its train loader); mbv2-w0.35 at 32 px,",
        f"batch 32, one thread, no loader workers; image folders of 8x8 PNGs, {CLASSES} classes, {round(100 * (1 - TEST_SHARE))} % `train/`, "
        f"{round(100 * TEST_SHARE)} % `test/`. `cold`: the node's first trial",
        "(no file index, no decoded cache: it builds them); `warm`: a later trial on the node. `run built`: the part before the",
        f"first batch. `x {smallest:,}`: start-up over the same column at {smallest:,} files.",
        "",
        "| files | cache | node | start-up (s) | run built (s) | x " + f"{smallest:,} |",
        "|---|---|---|---|---|---|",
    ]
    for row in startups.itertuples():
        base = _figure(table, smallest, str(row.cache), str(row.node))
        lines.append(f"| {row.files:,} | {row.cache} | {row.node} | {row.startup_s:.3f} | {row.build_s:.3f} | {row.startup_s / base:.2f} |")
    dry = table[table.kind == "dry_run"].iloc[0]
    lines += [
        "",
        f"Dry run (`neqtune.search.dry_run.dry_run`, as `run_search.py --dry-run`) of the digits grid over `training.lr` x `training.seed` x "
        f"`training.weight_decay`, {int(dry.files):,} combinations: {dry.startup_s:.1f} s.",
        "",
        "| target | measured | required | |",
        "|---|---|---|---|",
    ]
    for what, measured, required, met in targets(table):
        lines.append(f"| {what} | {measured:.2f} | {required} | {'met' if met else 'missed'} |")
    lines += ["", f"Wall time: {wall_s / 60:.1f} min.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="image files per folder (default 1000 10000 100000)")
    parser.add_argument("--repeats", type=int, default=None, help="fresh-process runs per figure (default 3; 1 with --quick)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the folders go, reused when there (default: a directory under the system's temp dir)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks", help="where startup.md / .parquet go")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"toy sizes ({' and '.join(map(str, QUICK_SIZES))} files, a 20-combination dry run, one run each): a check that it runs, not figures; writes startup_quick.*",
    )
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    repeats = args.repeats or (1 if args.quick else 3)
    if min(sizes) <= CLASSES * round(1 / TEST_SHARE) or repeats < 1:
        parser.error(f"--sizes must be above {CLASSES * round(1 / TEST_SHARE)} (every class in train/ and test/) and --repeats at least 1")
    workdir = args.workdir or Path(tempfile.gettempdir()) / "neqtune-benchmark-startup"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows: list[dict[str, Any]] = []
    for files in sizes:
        log(f"folder of {files:,} files in {workdir}")
        root = write_folder(workdir, files)
        wait_until_settled(root)
        rows += startup_rows(root, files, workdir, repeats, log)
    rows.append(dry_run_row(workdir, QUICK_GRID if args.quick else GRID, repeats, log))
    table = pd.DataFrame(rows)
    text = render(table, time.perf_counter() - started, repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "startup_quick" if args.quick else "startup"
    table.to_parquet(args.out / f"{name}.parquet")
    (args.out / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
