"""Faults: a trial whose worker is SIGKILLed, a driver SIGKILLed and resumed, tables written atomically.

The two search tests run the real ``run_search.py`` (real Ray Tune, Optuna,
Parquet) on tiny digits trials; the table tests kill a real writer process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from search.tables import ParquetTable, read_table, write_atomic

ROOT = Path(__file__).resolve().parent.parent
# Metrics that must not depend on the process, the wall clock or a restart.
EXACT_COLUMNS = (
    "epoch", "train_loss", "train_top1", "val_top1", "test_top1", "lr", "best_val_top1", "best_epoch",
    "test_top1_at_best_val", "params_updated", "neurons_updated", "frozen_pct", "layer_frozen_pct",
)  # fmt: skip


def plain(value: Any) -> Any:
    """A cell as a plain Python value (list columns come back as NumPy arrays)."""
    return value.tolist() if hasattr(value, "tolist") else value


def tiny_space(epochs: int, search: dict[str, Any]) -> dict[str, Any]:
    return {
        "experiment": "faults",
        "data": {"name": "digits", "image_size": 16, "batch_size": 32},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": epochs, "lr": 0.1, "momentum": 0.9},
        "budget": {"policy": "velocity", "initialization": "random", "scheme": "mbv2-w0.35_scheme_3"},
        "search": {"max_concurrent": 2, "cpus_per_trial": 1, "max_failures": 2, "checkpoint_interval_s": 0, **search},
    }


def start_search(tmp_path: Path, space: dict[str, Any], *extra: str) -> subprocess.Popen[str]:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run_search.py"), "--space", str(path), "--results", str(tmp_path / "results"), "--name", "exp", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # its own process group: the test can kill the driver with everything it started
    )


def results_lines(experiment: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(experiment.glob("trial_*/result.json")):
        for line in path.read_text().splitlines():
            try:
                yield {**json.loads(line), "_dir": path.parent.name}
            except json.JSONDecodeError:
                continue


def wait_for(condition: Any, proc: subprocess.Popen[str], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the search ended before the fault was injected:\n{out}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting for the search")


def descendants(pid: int) -> list[int]:
    """Pids of every process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the driver's process group and every process it started."""
    family = [proc.pid, *descendants(proc.pid)]
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def finish(proc: subprocess.Popen[str], timeout_s: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        pytest.fail("the search did not finish in time")
    assert proc.returncode == 0, out
    return out


def test_sigkilled_trial_worker_restarts_from_its_checkpoint_and_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    # Two trials of the very same config (seed 0 twice): one runs undisturbed, the other's worker is killed mid-epoch.
    space = tiny_space(3, {"algorithm": "grid", "num_samples": 1, "params": {"training.seed": {"choice": [0, 0]}}})
    proc = start_search(tmp_path, space)
    experiment = tmp_path / "results" / "exp"
    try:
        first = wait_for(lambda: next((r for r in results_lines(experiment) if r.get("epoch") == 1), None), proc, 150)
        time.sleep(0.3 * float(first["epoch_time_s"]))  # into the second epoch
        os.kill(int(first["pid"]), signal.SIGKILL)
        out = finish(proc, 180)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    killed_pid, victim = int(first["pid"]), str(first["trial_id"])
    epochs = pd.read_parquet(experiment / "epochs.parquet")
    trials = pd.read_parquet(experiment / "trials.parquet")
    assert (trials["status"] == "TERMINATED").all() and len(trials) == 2, out
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert epochs.groupby("trial_id")["epoch"].apply(sorted).tolist() == [[1, 2, 3], [1, 2, 3]]
    restarted = epochs[(epochs.trial_id == victim)].sort_values("epoch")
    assert killed_pid in set(restarted.pid) and restarted.pid.iloc[-1] != killed_pid, "the victim was not restarted in a new worker"
    assert restarted[restarted.pid == killed_pid].epoch.max() < 3, "the worker was killed after its last epoch"
    other = epochs[epochs.trial_id != victim].sort_values("epoch")
    for column in EXACT_COLUMNS:
        assert restarted[column].map(plain).tolist() == other[column].map(plain).tolist(), column


def test_sigkilled_driver_resumes_with_every_trial_epoch_exactly_once(tmp_path: Path) -> None:
    space = tiny_space(2, {"algorithm": "optuna", "sampler": "random", "num_samples": 4, "seed": 7,
                           "params": {"training.lr": {"loguniform": [0.01, 0.3]}}})  # fmt: skip
    proc = start_search(tmp_path, space)
    experiment = tmp_path / "results" / "exp"
    table = experiment / "epochs.parquet"
    try:
        wait_for(lambda: table.is_file() and pq.read_metadata(table).num_rows >= 2, proc, 150)
        kill_tree(proc)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    before = pq.read_table(table).to_pandas()
    started = set(before.trial_id)
    lr_before = before.groupby("trial_id")["training.lr"].first().to_dict()
    resumed = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), "--resume", str(experiment)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = pd.read_parquet(table)
    trials = pd.read_parquet(experiment / "trials.parquet")
    print(f"driver kill: {len(before)} trial-epoch rows before the resume, {len(after)} after")
    assert not after.duplicated(["trial_id", "epoch"]).any()
    assert len(after) == 4 * 2 and len(before) < len(after)
    assert sorted(trials.trial_id) == sorted(after.trial_id.unique()) and len(trials) == 4
    assert (trials["status"] == "TERMINATED").all()
    assert after.groupby("trial_id")["epoch"].apply(sorted).tolist() == [[1, 2]] * 4
    assert started <= set(after.trial_id)  # the trials of the killed driver were continued, not replaced
    assert after.groupby("trial_id")["training.lr"].first()[list(lr_before)].to_dict() == lr_before
    assert all(math.isfinite(v) for v in trials.best_val_top1)
    assert "resuming experiment exp" in resumed.stdout
    # The Optuna searcher went on with its seeded stream (a fresh one would propose the first values again).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    expected = [study.ask({"training.lr": optuna.distributions.FloatDistribution(0.01, 0.3, log=True)}).params["training.lr"] for _ in range(4)]
    assert sorted(trials["training.lr"]) == pytest.approx(sorted(expected), rel=1e-12)
    # optuna.db was reopened by the resumed driver and is current: each trial once, complete, with every epoch.
    stored = optuna.load_study(study_name="exp", storage=f"sqlite:///{experiment / 'optuna.db'}").get_trials()
    complete = [t for t in stored if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["tune_trial_id"] for t in complete) == sorted(trials.trial_id)
    # A trial the killed driver had just started, unknown to Tune's saved state, is not left RUNNING.
    assert all(t.state == optuna.trial.TrialState.FAIL and "driver died" in t.user_attrs["fail_reason"] for t in stored if t not in complete)
    by_id = trials.set_index("trial_id")
    for frozen in complete:
        curve = after[after.trial_id == frozen.user_attrs["tune_trial_id"]].sort_values("epoch")
        assert frozen.intermediate_values == pytest.approx(dict(zip(curve.epoch, curve.best_val_top1, strict=True)))
        assert frozen.value == pytest.approx(by_id.loc[frozen.user_attrs["tune_trial_id"], "best_val_top1"])
        assert frozen.params["training.lr"] == pytest.approx(by_id.loc[frozen.user_attrs["tune_trial_id"], "training.lr"])


# --- durable tables -------------------------------------------------------------------------------------------------
WRITER = """
import sys
import pyarrow as pa
from search.tables import write_atomic
path, n = sys.argv[1], int(sys.argv[2])
version = 2
while True:
    write_atomic(pa.table({"version": [version] * n, "i": list(range(n))}), path)
    version += 1
    print(version, flush=True)
"""


def test_a_writer_killed_mid_write_leaves_a_whole_table(tmp_path: Path) -> None:
    path = tmp_path / "epochs.parquet"
    n = 300_000
    write_atomic(pa.table({"version": [1] * n, "i": list(range(n))}), path)
    for delay in (0.05, 0.4, 0.9):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(n)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        table = pq.read_table(path)  # never a partial file
        assert table.num_rows == n and table.column("i").to_pylist()[-1] == n - 1
        assert len(set(table.column("version").to_pylist())) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["epochs.parquet"]


def test_a_failed_write_keeps_the_previous_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "epochs.parquet"
    write_atomic(pa.table({"a": [1, 2]}), path)
    real_write = pq.write_table

    def disk_full(table: pa.Table, where: str, **kwargs: Any) -> None:
        real_write(table, where, **kwargs)
        Path(where).write_bytes(Path(where).read_bytes()[:20])  # half a file on disk, then the device is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(pa.table({"a": [3, 4, 5]}), path)
    assert pq.read_table(path).column("a").to_pylist() == [1, 2]
    assert list(tmp_path.iterdir()) == [path]  # the partial temporary file is gone


def test_a_later_run_appends_and_a_reported_again_epoch_replaces_its_row(tmp_path: Path) -> None:
    path = tmp_path / "epochs.parquet"
    first = ParquetTable(path, key=("experiment", "trial_id", "epoch"))
    for epoch in (1, 2):
        first.add({"experiment": "old", "trial_id": "t1", "epoch": epoch, "loss": float(epoch)})
    first.add({"experiment": "e", "trial_id": "t2", "epoch": 1, "loss": 1.0})
    first.flush()
    second = ParquetTable(path, key=("experiment", "trial_id", "epoch"))
    assert second.previous_keys() == {("old", "t1", 1), ("old", "t1", 2), ("e", "t2", 1)}
    second.add({"experiment": "e", "trial_id": "t2", "epoch": 1, "loss": 0.5, "extra": "x"})  # a resumed trial reports epoch 1 again
    second.add({"experiment": "e", "trial_id": "t2", "epoch": 2, "loss": 0.25, "extra": "y"})
    second.flush()
    rows = read_table(path)
    assert rows is not None
    assert [(r["experiment"], r["trial_id"], r["epoch"], r["loss"], r["extra"]) for r in rows.to_pylist()] == [
        ("old", "t1", 1, 1.0, None),
        ("old", "t1", 2, 2.0, None),
        ("e", "t2", 1, 0.5, "x"),
        ("e", "t2", 2, 0.25, "y"),
    ]


def test_tables_under_a_uri_are_written_through_pyarrow_filesystems(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/bucket/exp/trials.parquet"
    table = ParquetTable(uri, key=("trial_id",))
    table.add({"trial_id": "a", "v": 1})
    table.flush()
    again = ParquetTable(uri, key=("trial_id",))
    again.add({"trial_id": "b", "v": 2})
    again.flush()
    assert pq.read_table(tmp_path / "bucket" / "exp" / "trials.parquet").to_pylist() == [{"trial_id": "a", "v": 1}, {"trial_id": "b", "v": 2}]
    assert sorted(p.name for p in (tmp_path / "bucket" / "exp").iterdir()) == ["trials.parquet"]


def test_resume_backfills_the_epochs_a_dead_driver_never_wrote(tmp_path: Path) -> None:
    from search.recorder import ResultRecorder
    from search.space import load_space

    base = load_space(None).base
    experiment = tmp_path / "exp"
    (experiment / "trial_t1").mkdir(parents=True)
    log = experiment / "trial_t1" / "result.json"

    def results(epochs: range) -> str:
        return "".join(
            json.dumps({"trial_id": "t1", "epoch": e, "config": {"training.lr": 0.02}, "train_loss": 1.0 / e, "epoch_time_s": 0.5}) + "\n"
            for e in epochs
        )

    def recorder() -> ResultRecorder:
        return ResultRecorder(experiment, "exp", base, searched=[], echo=lambda _: None)

    log.write_text(results(range(1, 2)))
    first = recorder()
    assert first.backfill(str(experiment)) == 1
    first.flush()  # the dead driver had written epoch 1 only ...
    log.write_text(results(range(1, 4)) + '{"trial_id": "t1", "epo')  # ... while Ray's log holds 1-3 and a line cut mid-write
    resumed = recorder()
    assert resumed.backfill(str(experiment)) == 2
    resumed.flush()
    assert recorder().backfill(str(experiment)) == 0  # everything written: nothing twice
    rows = pd.read_parquet(experiment / "epochs.parquet")
    assert rows.epoch.tolist() == [1, 2, 3] and (rows["training.lr"] == 0.02).all()
    assert rows.train_loss.tolist() == [1.0, 0.5, 1.0 / 3]


def test_resume_takes_a_trials_last_epoch_from_the_table_when_the_log_lost_it(tmp_path: Path) -> None:
    """A driver killed after writing a trial's last epoch row but before Ray's log reached the disk with it."""
    from search.recorder import ResultRecorder
    from search.space import load_space

    base = load_space(None).base
    experiment = tmp_path / "exp"
    (experiment / "trial_t1").mkdir(parents=True)
    log = experiment / "trial_t1" / "result.json"
    line = {"trial_id": "t1", "config": {"training.lr": 0.02}, "epoch_time_s": 0.5, "best_epoch": 1}
    log.write_text("".join(json.dumps({**line, "epoch": e, "best_val_top1": 10.0 * e}) + "\n" for e in (1, 2)))
    first = ResultRecorder(experiment, "exp", base, searched=[], echo=lambda _: None)
    first.backfill(str(experiment))
    first.epochs.add(first._epoch_row("t1", {**line, "epoch": 3, "best_val_top1": 30.0, "best_epoch": 3}))
    first.flush()  # epoch 3 is in the table, never in the log
    resumed = ResultRecorder(experiment, "exp", base, searched=[], echo=lambda _: None)
    assert resumed.backfill(str(experiment)) == 0
    last = resumed._last["t1"]
    assert (last["epoch"], last["best_val_top1"], last["best_epoch"]) == (3, 30.0, 3)
    assert resumed._epoch_times["t1"] == {1: 0.5, 2: 0.5, 3: 0.5}


def test_storage_root_and_space_file_under_a_uri(tmp_path: Path) -> None:
    from search.experiment import ClusterError, storage_root, write_text

    assert storage_root(None, tmp_path / "results") == str((tmp_path / "results").resolve())
    assert storage_root(f"file://{tmp_path}/store/", tmp_path) == f"file://{tmp_path}/store"
    write_text(f"file://{tmp_path}/store/exp/space.yaml", "experiment: exp\n")
    assert (tmp_path / "store" / "exp" / "space.yaml").read_text() == "experiment: exp\n"
    with pytest.raises(ClusterError, match=r"^--storage nope://x: not a storage URI pyarrow can open"):
        storage_root("nope://x", tmp_path)


def test_checkpoints_a_stale_experiment_state_may_name_are_recreated(tmp_path: Path) -> None:
    from search.experiment import fill_missing_checkpoints

    newest = tmp_path / "trial_a" / "checkpoint_000005"
    newest.mkdir(parents=True)
    (newest / "state.pt").write_bytes(b"epoch 6")
    (tmp_path / "trial_a" / "checkpoint_000003").mkdir()  # still there: left alone
    (tmp_path / "trial_b").mkdir()  # no checkpoint yet
    created = fill_missing_checkpoints(str(tmp_path), lag=3)
    assert sorted(Path(c).name for c in created) == ["checkpoint_000002", "checkpoint_000004"]
    for name in ("checkpoint_000002", "checkpoint_000004"):
        copy = tmp_path / "trial_a" / name / "state.pt"
        assert copy.read_bytes() == b"epoch 6" and copy.stat().st_ino == (newest / "state.pt").stat().st_ino  # a link, no copy
    assert list((tmp_path / "trial_a" / "checkpoint_000003").iterdir()) == []
    assert fill_missing_checkpoints(str(tmp_path), lag=3) == []
