"""What a flush of the epochs table costs the driver as the table grows: the dataset layout against the one-file table.

    python -m benchmarks.table_flush                  # 1k / 10k / 60k rows, local disk and a local S3 server (moto)
    python -m benchmarks.table_flush --quick          # 300 / 1,500 rows, local disk only (the test runs this)

A study-sized search (hundreds of trials x 200 epochs) is replayed into the
table: realistic epoch rows, with every config column of ``TrialConfig``,
the recorder's metrics and the two per-layer lists of mbv2 (52 convs), from
8 trials running at once, one epoch of each between two flushes. For each
storage, layout and table size, in a fresh process of its own:

1. the table is filled to the size (the dataset layout in flushes of one
   part's rows, the one-file table as one run that reported them all);
2. ``--flushes`` more flushes follow, each after one epoch of the 8 trials
   (8 rows): their wall times are what is reported (median and max);
3. the driver's resident memory above what the process held before the
   table existed, after those flushes (``rss``) and at its peak during them
   (``peak``; Linux's high-water mark, reset after filling);
4. ``open_s``: how long a resumed driver takes to open the table.

``before`` is the previous ``neqtune.search.tables.ParquetTable``, kept here as
:class:`OneFileTable`: every flush turns all the run's rows into one Arrow
table and rewrites the file whole. ``after`` is the current one: a
directory of part files, a flush rewrites the newest part only.

Results: ``docs/benchmarks/table_flush.md`` and ``.parquet``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.report import cpu_name, table_lines, write_tables

SIZES = (1_000, 10_000, 60_000)
QUICK_SIZES = (300, 1_500)
CONCURRENT = 8
EPOCHS_PER_TRIAL = 200
LAYERS = 52  # convs of mbv2 / mbv2-w0.35: the length of the per-layer lists
LAYOUTS = ("before", "after")


@dataclass(frozen=True)
class TableBenchConfig:
    """What to measure and where to write it."""

    sizes: tuple[int, ...] = SIZES
    storages: tuple[str, ...] = ("local", "s3")
    flushes: int = 15
    out_dir: Path = Path("docs/benchmarks")
    name: str = "table_flush"
    quick: bool = False


# --- rows --------------------------------------------------------------------------------------------------------
def row_template() -> tuple[dict[str, Any], dict[str, Any]]:
    """The config columns of a trial (``TrialConfig``'s defaults, flattened) and the Arrow types the recorder fixes."""
    from neqtune.search.recorder import TEXT_COLUMN_TYPES
    from neqtune.search.tables import config_column_types
    from neqtune.trainables.config import TrialConfig, flatten

    config = flatten(TrialConfig.from_dict({"budget": {"scheme": "mbv2-w0.35_scheme_3"}}).to_dict())
    return config, {**config_column_types(TrialConfig), **TEXT_COLUMN_TYPES}


def epoch_rows(config: Mapping[str, Any], start: int = 0) -> Iterator[dict[str, Any]]:
    """Epoch rows in the order a search reports them: 8 trials at a time, one epoch each per round.

    Row ``start`` onwards (rows are numbered from 0 in that order).
    """
    rng = random.Random(start)
    index = start
    while True:
        group, step = divmod(index, CONCURRENT * EPOCHS_PER_TRIAL)
        epoch, slot = divmod(step, CONCURRENT)
        trial = group * CONCURRENT + slot
        frozen = [rng.uniform(0, 100) for _ in range(LAYERS)]
        yield {
            "schema_version": 1, "experiment": "study", "trial_id": f"{trial:05d}_{trial * 7919 % 100_000:05d}", **config,
            "epoch": epoch + 1, "train_loss": rng.random(), "train_top1": rng.uniform(0, 100), "val_top1": rng.uniform(0, 100),
            "test_top1": rng.uniform(0, 100), "lr": rng.random() * 0.1, "best_val_top1": rng.uniform(0, 100),
            "best_epoch": epoch + 1, "test_top1_at_best_val": rng.uniform(0, 100), "budget_params": 55_920,
            "total_conv_params": 382_048, "params_updated": rng.randint(50_000, 55_920), "budget_gap": rng.randint(0, 5_000),
            "neurons_updated": rng.randint(500, 3_000), "neurons_total": 3_264, "frozen_pct": rng.uniform(0, 100),
            "flops_saved": rng.random() * 1e7, "flops_saved_pct": rng.uniform(0, 100), "layer_frozen_pct": frozen,
            "layer_flops_saved": [f * 1e4 for f in frozen], "epoch_time_s": rng.uniform(5, 60), "velocity_time_s": rng.random(),
            "node_id": f"{trial % 8:056x}", "hostname": f"ip-10-0-0-{trial % 8}", "pid": 10_000 + trial % 8,
        }  # fmt: skip
        index += 1


# --- the previous layout -----------------------------------------------------------------------------------------
class OneFileTable:
    """The previous ``neqtune.search.tables.ParquetTable``: one file, rewritten whole (every row of the run) on each flush."""

    def __init__(self, path: str, key: Sequence[str], types: Mapping[str, Any]) -> None:
        from neqtune.search.tables import read_table

        self.path, self.key, self.types = path, tuple(key), dict(types)
        self._previous = read_table(path)
        self._rows: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add(self, row: dict[str, Any]) -> None:
        self._rows[tuple(row[k] for k in self.key)] = row

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        from neqtune.search.tables import _key_strings, rows_to_table

        new = rows_to_table(list(self._rows.values()), self.types)
        table = new
        if self._previous is not None and self._previous.num_rows:
            keep = pc.invert(pc.is_in(_key_strings(self._previous, self.key), value_set=_key_strings(new, self.key)))
            table = pa.concat_tables([self._previous.filter(keep), new], promote_options="permissive")
        write_one_file(table, self.path)


def write_one_file(table: Any, path: str) -> None:
    """The previous ``write_atomic``: a temporary file and a rename (on S3: an upload and a server-side move)."""
    import pyarrow.parquet as pq

    from neqtune.search.tables import resolve_location

    fs, where = resolve_location(path)
    if fs is None:
        local = Path(where)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
        os.close(fd)
        pq.write_table(table, tmp)
        os.replace(tmp, local)
        return
    parent, _, name = where.rpartition("/")
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.{os.getpid()}.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, where)


# --- one measurement, in a process of its own ---------------------------------------------------------------------
def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    """Reset the resident-memory high-water mark (Linux: ``5`` into ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


@dataclass
class Measurement:
    storage: str
    layout: str
    rows: int
    flush_s: list[float] = field(default_factory=list)
    open_s: float = 0.0
    rss_mib: float = 0.0
    peak_mib: float = 0.0
    files: int = 0
    bytes_per_flush: float = 0.0


def measure(storage: str, layout: str, rows: int, location: str, flushes: int) -> Measurement:
    """Fill the table at ``location`` to ``rows`` rows, then time ``flushes`` flushes of one round of epochs each."""
    import neqtune.search.tables
    from neqtune.search.tables import PART_ROWS, ParquetTable, filesystem_of, table_files

    config, types = row_template()
    key = ("experiment", "trial_id", "epoch")
    written = [0]
    write_part = neqtune.search.tables._write_to

    def counted(fs: Any, path: str, table: Any) -> None:  # the bytes each flush puts on the storage
        write_part(fs, path, table)
        written[0] += fs.get_file_info(path).size

    neqtune.search.tables._write_to = counted
    baseline = _status_kib("VmRSS")
    source = epoch_rows(config)
    table: Any = ParquetTable(location, key=key, types=types) if layout == "after" else OneFileTable(location, key, types)
    batch = PART_ROWS if layout == "after" else rows  # the dataset is filled flush by flush, one part at a time
    for start in range(0, rows, batch):
        for _ in range(min(batch, rows - start)):
            table.add(next(source))
        table.flush()
    result = Measurement(storage, layout, rows)
    _reset_peak()
    written[0] = 0
    for _ in range(flushes):
        for _ in range(CONCURRENT):
            table.add(next(source))
        started = time.perf_counter()
        table.flush()
        result.flush_s.append(time.perf_counter() - started)
        if layout == "before":
            fs, where = filesystem_of(location)
            written[0] += fs.get_file_info(where).size
    result.rss_mib = (_status_kib("VmRSS") - baseline) / 1024
    result.peak_mib = (_status_kib("VmHWM") - baseline) / 1024
    result.files = len(table_files(location)[1])
    result.bytes_per_flush = written[0] / max(1, flushes)
    del table
    started = time.perf_counter()
    if layout == "after":
        ParquetTable(location, key=key, types=types)
    else:
        OneFileTable(location, key, types)
    result.open_s = time.perf_counter() - started
    return result


def child_main(spec: str) -> int:
    """``--child JSON``: one measurement, printed as JSON."""
    args = json.loads(spec)
    result = measure(args["storage"], args["layout"], args["rows"], args["location"], args["flushes"])
    print(json.dumps(result.__dict__))
    return 0


# --- the whole benchmark -------------------------------------------------------------------------------------------
def run_child(storage: str, layout: str, rows: int, location: str, flushes: int, env: Mapping[str, str]) -> Measurement:
    spec = json.dumps({"storage": storage, "layout": layout, "rows": rows, "location": location, "flushes": flushes})
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.table_flush", "--child", spec], capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{storage}/{layout}/{rows} rows failed:\n{done.stdout}\n{done.stderr}")
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def rows_of(measurement: Measurement) -> dict[str, Any]:
    times = measurement.flush_s
    return {
        "storage": measurement.storage,
        "layout": measurement.layout,
        "rows": measurement.rows,
        "flush_median_s": statistics.median(times),
        "flush_max_s": max(times),
        "flushes": len(times),
        "written_per_flush_kb": measurement.bytes_per_flush / 1e3,
        "files": measurement.files,
        "open_s": measurement.open_s,
        "rss_mib": measurement.rss_mib,
        "peak_mib": measurement.peak_mib,
    }


def run(config: TableBenchConfig, command: str, log: Any = print) -> pd.DataFrame:
    """Measure every storage x layout x size; write ``<name>.parquet`` and ``<name>.md`` into ``config.out_dir``."""
    import contextlib

    from benchmarks.local_s3 import S3_ENV, s3_server

    results = []
    with tempfile.TemporaryDirectory(prefix="neqtune-tables-") as scratch, contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(s3_server("bench")) if "s3" in config.storages else None
        for storage in config.storages:
            for rows in config.sizes:
                for layout in LAYOUTS:
                    name = f"{layout}-{rows}/epochs.parquet"
                    location = f"{scratch}/{name}" if storage == "local" else f"s3://bench/{name}?endpoint_override={endpoint}&scheme=http"
                    if storage == "local":
                        Path(location).parent.mkdir(parents=True, exist_ok=True)
                    measurement = run_child(storage, layout, rows, location, config.flushes, S3_ENV if storage == "s3" else {})
                    results.append(rows_of(measurement))
                    r = results[-1]
                    log(
                        f"{storage:5} {layout:6} {rows:>6} rows: flush median {r['flush_median_s'] * 1e3:8.1f} ms, max {r['flush_max_s'] * 1e3:8.1f} ms, "
                        f"rss {r['rss_mib']:6.1f} MiB, open {r['open_s']:.2f} s, {r['files']} files"
                    )
    table = pd.DataFrame(results)
    before = table[table.layout == "before"].set_index(["storage", "rows"]).flush_median_s
    table["before_over_after"] = [
        before[(r.storage, r.rows)] / r.flush_median_s if r.layout == "after" else float("nan") for r in table.itertuples()
    ]
    write_tables(config.out_dir, config.name, table, markdown(table, config, command))
    return table


def machine_line() -> str:
    cpu = cpu_name(platform.machine())
    load = os.getloadavg()
    return f"{cpu}, {os.cpu_count()} cores; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) at the end"


def markdown(table: pd.DataFrame, config: TableBenchConfig, command: str) -> str:
    """The results as Markdown."""
    lines = [
        "# Epochs table: driver time per flush and memory, one-file table (before) against the dataset (after)",
        "",
        f"`{command}` on {machine_line()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"Rows of realistic width ({len(next(epoch_rows(row_template()[0])))} columns, two {LAYERS}-entry per-layer lists), "
        f"{CONCURRENT} trials at a time; each timed flush adds one epoch of each ({CONCURRENT} rows); "
        f"median and max of {config.flushes} flushes. `rss` / `peak`: the driver's resident memory above what it held "
        "before the table existed, after the timed flushes / at its highest during them. `open`: a resumed driver "
        "opening the table. S3: a local moto server on 127.0.0.1. `before / after`: ratio of the median flush times.",
        "",
    ]
    header = ["storage", "rows", "layout", "flush median (ms)", "flush max (ms)", "written per flush (kB)", "files", "open (s)", "rss (MiB)",
              "peak (MiB)", "before / after"]  # fmt: skip
    rows = [
        (r.storage, f"{r.rows:,}", r.layout, f"{r.flush_median_s * 1e3:.1f}", f"{r.flush_max_s * 1e3:.1f}", f"{r.written_per_flush_kb:,.0f}", r.files,
         f"{r.open_s:.2f}", f"{r.rss_mib:.1f}", f"{r.peak_mib:.1f}", "" if r.layout == "before" else f"{r.before_over_after:.1f}x")
        for r in table.itertuples()
    ]  # fmt: skip
    lines += table_lines(header, rows, right_aligned=[name for name in header if name not in ("storage", "layout")])
    after = table[table.layout == "after"]
    lines += ["", "Flush time of the dataset layout against the table's size (median, ms):", ""]
    for storage in after.storage.unique():
        times = after[after.storage == storage].sort_values("rows")
        cells = ", ".join(f"{r.rows:,} rows {r.flush_median_s * 1e3:.1f}" for r in times.itertuples())
        lines.append(f"- {storage}: {cells}")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> TableBenchConfig:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table_flush", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help=f"table sizes in rows (default: {' '.join(map(str, SIZES))})")
    parser.add_argument("--storage", nargs="+", choices=("local", "s3"), default=None, help="where the tables go (default: local s3)")
    parser.add_argument("--flushes", type=int, default=None, help="timed flushes per measurement (default 15)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: docs/benchmarks)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, local disk, 3 flushes, into results/table_flush_quick")
    args = parser.parse_args(argv)
    if args.quick:
        base = TableBenchConfig(sizes=QUICK_SIZES, storages=("local",), flushes=3, out_dir=Path("results/table_flush_quick"), quick=True)
    else:
        base = TableBenchConfig()
    return TableBenchConfig(
        sizes=tuple(args.sizes) if args.sizes else base.sizes,
        storages=tuple(args.storage) if args.storage else base.storages,
        flushes=args.flushes or base.flushes,
        out_dir=args.out or base.out_dir,
        name=base.name if not base.quick else "table_flush_quick",
        quick=base.quick,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.table_flush``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    config = parse_args(argv)
    command = ("python -m benchmarks.table_flush " + " ".join(argv)).strip()
    table = run(config, command)
    print(f"wrote {config.out_dir / (config.name + '.parquet')} and {config.out_dir / (config.name + '.md')} ({len(table)} measurements)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
