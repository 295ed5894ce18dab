"""Result tables as Parquet datasets: atomic parts, flushes that write only what changed, every reader.

Real files and real processes: a writer is SIGKILLed mid-write, a write
fails the way a full disk makes it fail, the directory is read by pandas,
pyarrow and DuckDB.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neqtune.search.tables import (
    ParquetTable,
    StorageError,
    join_location,
    location_name,
    read_table,
    storage_fault,
    table_files,
    write_atomic,
)

ROOT = Path(__file__).resolve().parent.parent
KEY = ("experiment", "trial_id", "epoch")


def epoch_row(trial: int, epoch: int, **extra: Any) -> dict[str, Any]:
    return {"experiment": "e", "trial_id": f"t{trial}", "epoch": epoch, "loss": 1.0 / epoch, "layers": [0.5, float(epoch)], **extra}


def parts(path: Path) -> dict[str, int]:
    """Part file name -> modification time in ns."""
    return {p.name: p.stat().st_mtime_ns for p in sorted(path.glob("part-*.parquet"))}


def test_a_flush_writes_the_new_rows_into_the_newest_part_only(tmp_path: Path) -> None:
    path = tmp_path / "epochs.parquet"
    table = ParquetTable(path, key=KEY, part_rows=4)
    for epoch in range(1, 10):
        table.add(epoch_row(0, epoch))
    table.flush()
    assert list(parts(path)) == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert [pq.read_metadata(path / name).num_rows for name in parts(path)] == [4, 4, 1]
    before = parts(path)
    time.sleep(0.01)
    table.add(epoch_row(0, 10))
    table.flush()
    after = parts(path)
    changed = [name for name in after if after[name] != before.get(name)]
    assert changed == ["part-000002.parquet"]  # the full parts were not touched
    table.flush()  # nothing new: nothing written
    assert parts(path) == after
    assert pd.read_parquet(path).epoch.tolist() == list(range(1, 11))


def test_an_epoch_reported_again_replaces_its_row_in_the_part_that_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "epochs.parquet"
    first = ParquetTable(path, key=KEY, part_rows=2)
    for epoch in (1, 2, 3):
        first.add(epoch_row(0, epoch))
    first.flush()
    second = ParquetTable(path, key=KEY, part_rows=2)  # a resumed driver
    assert second.previous_keys() == {("e", "t0", 1), ("e", "t0", 2), ("e", "t0", 3)}
    before = parts(path)
    time.sleep(0.01)
    second.add(epoch_row(0, 1, loss=0.25))  # a restarted trial reports epoch 1 again ...
    second.add(epoch_row(0, 4))  # ... and goes on
    second.flush()
    after = parts(path)
    assert [n for n in after if after[n] != before.get(n)] == ["part-000000.parquet", "part-000001.parquet"]
    rows = pd.read_parquet(path).sort_values("epoch")
    assert rows.epoch.tolist() == [1, 2, 3, 4] and rows.loss.tolist() == [0.25, 0.5, 1 / 3, 0.25]
    assert len(second) == 2 and second.pending == 0


def test_a_later_run_appends_and_a_reported_again_epoch_replaces_its_row(tmp_path: Path) -> None:
    path = tmp_path / "epochs.parquet"
    first = ParquetTable(path, key=KEY)
    for epoch in (1, 2):
        first.add({"experiment": "old", "trial_id": "t1", "epoch": epoch, "loss": float(epoch)})
    first.add({"experiment": "e", "trial_id": "t2", "epoch": 1, "loss": 1.0})
    first.flush()
    second = ParquetTable(path, key=KEY)
    second.add({"experiment": "e", "trial_id": "t2", "epoch": 1, "loss": 0.5, "extra": "x"})  # a new column, too
    second.add({"experiment": "e", "trial_id": "t2", "epoch": 2, "loss": 0.25, "extra": "y"})
    second.flush()
    rows = read_table(path)
    assert rows is not None
    assert sorted((r["experiment"], r["trial_id"], r["epoch"], r["loss"], r["extra"]) for r in rows.to_pylist()) == [
        ("e", "t2", 1, 0.5, "x"),
        ("e", "t2", 2, 0.25, "y"),
        ("old", "t1", 1, 1.0, None),
        ("old", "t1", 2, 2.0, None),
    ]
    assert second.table().num_rows == 4


def test_a_new_column_reaches_every_part_so_readers_that_take_one_files_schema_see_it(tmp_path: Path) -> None:
    path = tmp_path / "epochs.parquet"
    table = ParquetTable(path, key=KEY, part_rows=2)
    for epoch in (1, 2, 3):
        table.add(epoch_row(0, epoch))
    table.flush()
    table.add(epoch_row(0, 4, val_top1=50.0))
    table.flush()
    schemas = {name: pq.read_schema(path / name) for name in parts(path)}
    assert len({str(s) for s in schemas.values()}) == 1 and "val_top1" in next(iter(schemas.values())).names
    assert pd.read_parquet(path).val_top1.isna().sum() == 3


def test_pandas_pyarrow_and_duckdb_read_the_directory_as_one_table(tmp_path: Path) -> None:
    path = tmp_path / "epochs.parquet"
    table = ParquetTable(path, key=KEY, part_rows=3)
    for trial in range(2):
        for epoch in range(1, 6):
            table.add(epoch_row(trial, epoch))
    table.flush()
    (path / ".part-000009.parquet.1.ab.tmp").write_bytes(b"a write cut short")  # readers skip hidden files
    by_pandas = pd.read_parquet(path).sort_values(["trial_id", "epoch"]).reset_index(drop=True)
    by_arrow = pq.read_table(path).to_pandas().sort_values(["trial_id", "epoch"]).reset_index(drop=True)
    by_duckdb = duckdb.sql(f"SELECT * FROM read_parquet('{path}/*.parquet') ORDER BY trial_id, epoch").df()
    assert len(by_pandas) == len(by_arrow) == len(by_duckdb) == 10
    for frame in (by_arrow, by_duckdb):
        assert frame[["trial_id", "epoch", "loss"]].equals(by_pandas[["trial_id", "epoch", "loss"]])
    assert [list(v) for v in by_duckdb.layers] == [list(v) for v in by_pandas.layers]
    assert duckdb.sql(f"SELECT count(*) FROM '{path}/*.parquet' WHERE trial_id = 't1'").fetchall() == [(5,)]


def test_a_failed_flush_keeps_every_part_whole_and_its_rows_pending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "epochs.parquet"
    table = ParquetTable(path, key=KEY, part_rows=2)
    table.add(epoch_row(0, 1))
    table.flush()
    real_write = pq.write_table

    def disk_full(data: pa.Table, where: Any, **kwargs: Any) -> None:
        real_write(data.slice(0, 1), where, **kwargs)  # part of the bytes reach the disk, then it is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    table.add(epoch_row(0, 2))
    table.add(epoch_row(0, 3))
    with pytest.raises(OSError, match="No space left"):
        table.flush()
    assert pd.read_parquet(path).epoch.tolist() == [1]  # the last whole version
    assert sorted(p.name for p in path.iterdir()) == ["part-000000.parquet"]  # no temporary file left
    assert table.pending == 2
    monkeypatch.setattr(pq, "write_table", real_write)  # space again
    table.flush()
    assert sorted(pd.read_parquet(path).epoch) == [1, 2, 3] and table.pending == 0


WRITER = """
import sys
from neqtune.search.tables import ParquetTable
path, n = sys.argv[1], int(sys.argv[2])
table = ParquetTable(path, key=("i",), part_rows=n)
version = 2
while True:
    for i in range(n):
        table.add({"i": i, "version": version})
    table.flush()  # rewrites the one part: every row replaced
    version += 1
"""


def test_a_writer_killed_mid_write_leaves_a_whole_table(tmp_path: Path) -> None:
    path = tmp_path / "epochs.parquet"
    n = 200_000
    first = ParquetTable(path, key=("i",), part_rows=n)
    for i in range(n):
        first.add({"i": i, "version": 1})
    first.flush()
    for delay in (0.5, 1.5, 2.5):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(n)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        table = pq.read_table(path)  # never a partial part
        assert table.num_rows == n and sorted(table.column("i").to_pylist())[-1] == n - 1
        assert len(set(table.column("version").to_pylist())) == 1
    reopened = ParquetTable(path, key=("i",), part_rows=n)  # a new writer removes what the killed one left
    assert len(reopened.previous_keys()) == n
    assert [p.name for p in path.iterdir()] == ["part-000000.parquet"]


def test_tables_follow_the_umask_like_every_other_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        table = ParquetTable(tmp_path / "epochs.parquet", key=KEY)
        table.add(epoch_row(0, 1))
        table.flush()
        write_atomic(pa.table({"a": [1]}), tmp_path / "pareto.parquet")
        os.umask(0o002)
        write_atomic(pa.table({"a": [2]}), tmp_path / "group.parquet")
    finally:
        os.umask(old)
    (tmp_path / "plain.txt").write_text("x")  # what open() gives under umask 022
    mode = stat.S_IMODE
    assert mode((tmp_path / "epochs.parquet" / "part-000000.parquet").stat().st_mode) == 0o644
    assert mode((tmp_path / "pareto.parquet").stat().st_mode) == mode((tmp_path / "plain.txt").stat().st_mode) == 0o644
    assert mode((tmp_path / "group.parquet").stat().st_mode) == 0o664


def test_a_one_file_table_of_the_older_layout_is_read_and_turned_into_a_dataset(tmp_path: Path) -> None:
    path = tmp_path / "epochs.parquet"
    write_atomic(pa.table({"experiment": ["e", "e"], "trial_id": ["t0", "t0"], "epoch": [1, 2], "loss": [1.0, 0.5]}), path)
    assert path.is_file() and read_table(path, columns=["epoch", "nope"]).column_names == ["epoch"]  # type: ignore[union-attr]
    table = ParquetTable(path, key=KEY)
    assert path.is_dir() and table.previous_keys() == {("e", "t0", 1), ("e", "t0", 2)}
    table.add(epoch_row(0, 2, loss=0.4))
    table.add(epoch_row(0, 3))
    table.flush()
    rows = pd.read_parquet(path).sort_values("epoch")
    assert rows.loss.tolist() == [1.0, 0.4, 1 / 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epochs.parquet"]


def test_tables_under_a_uri_are_written_through_pyarrow_filesystems(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/bucket/exp/trials.parquet"
    table = ParquetTable(uri, key=("trial_id",))
    table.add({"trial_id": "a", "v": 1})
    table.flush()
    again = ParquetTable(uri, key=("trial_id",))
    again.add({"trial_id": "b", "v": 2})
    again.flush()
    assert pq.read_table(tmp_path / "bucket" / "exp" / "trials.parquet").to_pylist() == [{"trial_id": "a", "v": 1}, {"trial_id": "b", "v": 2}]
    assert table_files(uri)[1] == [f"{tmp_path}/bucket/exp/trials.parquet/part-000000.parquet"]


def test_locations_join_before_a_uris_query() -> None:
    assert join_location("s3://b/p?endpoint_override=h:9&scheme=http", "exp", "epochs.parquet") == (
        "s3://b/p/exp/epochs.parquet?endpoint_override=h:9&scheme=http"
    )
    assert join_location("/r/results/", "exp") == "/r/results/exp"
    assert location_name("s3://b/p/exp?scheme=http") == "exp" and location_name("/r/exp/") == "exp"


def test_a_full_or_read_only_disk_is_told_apart_from_other_errors() -> None:
    assert storage_fault(OSError(28, "No space left on device")) == "No space left on device"
    assert storage_fault(RuntimeError("worker died").with_traceback(None)) is None
    try:
        try:
            raise OSError(30, "Read-only file system")
        except OSError as inner:
            raise RuntimeError("could not save the checkpoint") from inner
    except RuntimeError as outer:
        assert storage_fault(outer) == "Read-only file system"
    remote = "ray.exceptions.RayTaskError(OSError): ray::train() ...\nOSError: [Errno 28] No space left on device: '/mnt/x'"
    assert storage_fault(remote) == "No space left on device"
    assert str(StorageError("/mnt/results/exp", "No space left on device")) == "/mnt/results/exp: No space left on device"


@pytest.mark.benchmark
def test_the_flush_benchmark_measures_both_layouts_and_the_dataset_writes_less_per_flush(tmp_path: Path) -> None:
    from benchmarks.table_flush import TableBenchConfig, run

    config = TableBenchConfig(sizes=(1_500,), storages=("local",), flushes=2, out_dir=tmp_path, name="flush")
    table = run(config, "python -m benchmarks.table_flush (test)", log=lambda _: None)
    saved = pd.read_parquet(tmp_path / "flush.parquet")
    assert saved.layout.tolist() == ["before", "after"] and (saved.rows == 1_500).all()
    before, after = (saved[saved.layout == layout].iloc[0] for layout in ("before", "after"))
    assert before.files == 1 and after.files == 6  # 1,516 rows in parts of 256
    assert after.written_per_flush_kb < before.written_per_flush_kb / 3  # the newest part, not the whole table
    assert (table.flush_median_s > 0).all() and "| local | 1,500 | after |" in (tmp_path / "flush.md").read_text()


def test_a_table_on_a_local_s3_server_named_by_the_endpoint_variable_or_by_the_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.local_s3 import s3_server

    with s3_server("tables") as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{endpoint}")  # pyarrow's S3 file system reads it
        table = ParquetTable("s3://tables/exp/epochs.parquet", key=KEY, part_rows=2)
        for epoch in (1, 2, 3):
            table.add(epoch_row(0, epoch))
        table.flush()
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        by_query = f"s3://tables/exp/epochs.parquet?endpoint_override={endpoint}&scheme=http"
        again = ParquetTable(by_query, key=KEY, part_rows=2)
        assert again.previous_keys() == {("e", "t0", 1), ("e", "t0", 2), ("e", "t0", 3)}
        again.add(epoch_row(0, 1, loss=0.1))
        again.flush()
        rows = read_table(by_query)
        assert rows is not None and sorted(zip(rows.column("epoch").to_pylist(), rows.column("loss").to_pylist(), strict=True)) == [(1, 0.1), (2, 0.5), (3, 1 / 3)]
        assert [f.rpartition("/")[2] for f in table_files(by_query)[1]] == ["part-000000.parquet", "part-000001.parquet"]
