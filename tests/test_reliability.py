"""Faults a real search meets, injected for real: Ctrl-C, a full or read-only disk, object storage.

Each test runs the real ``run_search.py`` (real Ray Tune, Optuna, Parquet)
on tiny digits trials, injects the fault, checks that nothing is lost and
that no process the search started is left, then resumes it to the end.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from search_procs import end_marked, finish, marked, new_mark, run_search, tiny_space, wait_gone, wait_until

from neqtune.search.tables import StorageError, read_table

TRIALS = 2
EPOCHS = 6
# Trials long enough that a search still has work left when the test presses Ctrl-C or fills the disk on seeing
# rows in the table: the tables are written every second (search.table_flush_s), an epoch takes about a second.
LONG_EPOCHS = 8
FLUSH = {"table_flush_s": 1.0}


def rows(table: Path | str) -> int:
    found = read_table(table)
    return 0 if found is None else found.num_rows


def check_complete(experiment: Path | str, epochs_n: int = EPOCHS) -> pd.DataFrame:
    """The search's epochs table (a path or a URI) holds every trial-epoch exactly once."""
    table = read_table(f"{experiment}/epochs.parquet")
    assert table is not None
    epochs = table.to_pandas()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert epochs.groupby("trial_id")["epoch"].apply(sorted).tolist() == [list(range(1, epochs_n + 1))] * TRIALS
    return epochs


@pytest.mark.search
def test_ctrl_c_stops_the_search_in_order_a_second_forces_it_and_the_tables_stay_whole(tmp_path: Path) -> None:
    space = tiny_space(LONG_EPOCHS, {"algorithm": "optuna", "sampler": "random", "num_samples": TRIALS, "seed": 3,
                                "params": {"training.lr": {"loguniform": [0.01, 0.3]}}, **FLUSH})  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    experiment = tmp_path / "results" / "exp"
    table = experiment / "epochs.parquet"
    mark = new_mark()
    try:
        # 1. One Ctrl-C, sent as a terminal does: to the driver's whole process group.
        driver = run_search(["--space", "space.yaml", "--results", "results", "--name", "exp"], cwd=tmp_path, mark=mark)
        wait_until(lambda: rows(table) >= 2, 150, "two epoch rows", driver)
        sent = time.monotonic()
        os.killpg(driver.pid, signal.SIGINT)
        out = finish(driver, 60, mark, expect=130)
        stop_s = time.monotonic() - sent
        assert stop_s < 30, out
        hints = [line for line in out.splitlines() if "--resume" in line]
        assert hints == [f"neqtune: search interrupted; every epoch reported so far is in the tables; resume with: python run_search.py --resume {experiment}"], out
        assert "Tuner.restore" not in out and "Traceback" not in out, out
        assert wait_gone(mark, 10) == [], "processes of the stopped search are still running"
        first = read_table(table).to_pandas()  # type: ignore[union-attr]
        assert 2 <= len(first) < TRIALS * LONG_EPOCHS and not first.duplicated(["trial_id", "epoch"]).any()

        # 2. The resumed search, stopped by two Ctrl-C in a row: the second does not wait for the orderly stop.
        resumed = run_search(["--resume", str(experiment)], cwd=tmp_path, mark=mark)
        wait_until(lambda: rows(table) > len(first), 150, "a new epoch row after the resume", resumed)
        os.killpg(resumed.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(resumed.pid, signal.SIGINT)
        out = finish(resumed, 60, mark, expect=130)
        assert [line for line in out.splitlines() if "--resume" in line] == [
            f"neqtune: search interrupted (forced); the tables are whole; resume with: python run_search.py --resume {experiment}"
        ], out
        assert wait_gone(mark, 10) == [], "processes of the forced stop are still running"
        second = read_table(table).to_pandas()  # type: ignore[union-attr]
        assert not second.duplicated(["trial_id", "epoch"]).any() and len(second) > len(first)
        assert set(first.trial_id) <= set(second.trial_id) and second.trial_id.nunique() <= TRIALS  # the stopped trials went on
        # A resume after the forced stop runs to the end like any other: the driver SIGKILLed on S3 (test_faults.py)
        # leaves less behind than a forced stop, and its resume is checked to finish with every trial-epoch once.
        print(f"Ctrl-C: stopped {stop_s:.1f} s after the signal; {len(first)} and {len(second)} epoch rows at the two stops")
    finally:
        end_marked(mark)
    assert marked(mark) == []


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only), unmounted afterwards."""
    where.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); tests/test_tables.py injects ENOSPC at the write instead")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path) -> None:
    """Write zeros until the file system says it is full."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 2**16)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_read_only_disk_fails_a_flush_cleanly_and_the_table_stays_whole(tmp_path: Path) -> None:
    from neqtune.search.recorder import ResultRecorder
    from neqtune.search.space import load_space

    with small_disk(tmp_path / "disk", "4m") as disk:
        recorder = ResultRecorder(disk / "exp", "exp", load_space(None).base, searched=[], echo=lambda _: None)
        recorder.epochs.add({"experiment": "exp", "trial_id": "t", "epoch": 1, "loss": 1.0})
        recorder.flush()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        try:
            recorder.epochs.add({"experiment": "exp", "trial_id": "t", "epoch": 2, "loss": 0.5})
            with pytest.raises(StorageError) as raised:
                recorder.flush()
            assert str(raised.value) == f"{disk / 'exp'}: Read-only file system"
            assert recorder.epochs.pending == 1 and pd.read_parquet(disk / "exp" / "epochs.parquet").epoch.tolist() == [1]
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        recorder.flush()  # writable again: the pending row goes out
        assert pd.read_parquet(disk / "exp" / "epochs.parquet").epoch.tolist() == [1, 2]


@pytest.mark.search
def test_a_disk_that_fills_up_mid_search_stops_it_with_one_line_and_resume_finishes_it(tmp_path: Path) -> None:
    space = tiny_space(LONG_EPOCHS, {"algorithm": "optuna", "sampler": "random", "num_samples": TRIALS, "seed": 5,
                                "params": {"training.lr": {"loguniform": [0.01, 0.3]}}, **FLUSH})  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    mark = new_mark()
    with small_disk(tmp_path / "disk", "64m") as disk:
        experiment = disk / "results" / "exp"
        table = experiment / "epochs.parquet"
        try:
            driver = run_search(["--space", "space.yaml", "--results", str(disk / "results"), "--name", "exp"], cwd=tmp_path, mark=mark)
            wait_until(lambda: rows(table) >= 2, 150, "two epoch rows", driver)
            fill(disk)
            full = time.monotonic()
            out = finish(driver, 90, mark, expect=1)
            stop_s = time.monotonic() - full
            errors = [line for line in out.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and errors[0].startswith(f"error: {experiment}"), out
            assert "No space left on device" in errors[0] and f"--resume {experiment}" in errors[0], out
            assert "Traceback" not in out, out
            assert wait_gone(mark, 10) == []
            before = read_table(table)  # the last whole version of every part
            assert before is not None and before.num_rows >= 2
            (disk / "filler").unlink()
            out = finish(run_search(["--resume", str(experiment)], cwd=tmp_path, mark=mark), 240, mark)
            check_complete(experiment, LONG_EPOCHS)
            trials = pd.read_parquet(experiment / "trials.parquet")
            assert len(trials) == TRIALS and (trials.status == "TERMINATED").all(), out
            print(f"full disk: the search stopped {stop_s:.1f} s after the disk filled, with {before.num_rows} epoch rows whole")
        finally:
            end_marked(mark)


def test_tensorboards_writer_thread_dies_quietly_on_a_full_disk_and_other_errors_still_show(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from neqtune.search.recorder import quiet_event_writer_storage_errors

    shown: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: shown.append(f"{type(args.thread).__module__}: {args.exc_value}"))

    def raising(error: BaseException, module: str) -> None:
        def run(self: threading.Thread) -> None:
            raise error

        thread = type("_AsyncWriterThread", (threading.Thread,), {"__module__": module, "run": run})()
        thread.start()
        thread.join()

    quiet_event_writer_storage_errors()
    quiet_event_writer_storage_errors()  # installed once
    raising(OSError(errno.ENOSPC, "No space left on device"), "tensorboard.summary.writer.event_file_writer")
    raising(OSError(errno.EROFS, "Read-only file system"), "tensorboard.summary.writer.event_file_writer")
    assert shown == []  # the table write that follows says it, once
    raising(OSError(errno.ENOSPC, "No space left on device"), "someone.else")
    raising(ValueError("a real bug"), "tensorboard.summary.writer.event_file_writer")
    assert shown == ["someone.else: [Errno 28] No space left on device", "tensorboard.summary.writer.event_file_writer: a real bug"]
