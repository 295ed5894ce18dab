"""Faults: a trial worker SIGKILLed, a driver SIGKILLed on object storage and resumed, corrupt checkpoints, orphans.

The two search tests run the real ``run_search.py`` (real Ray Tune, Optuna,
Parquet; a real S3 server, moto, on 127.0.0.1) on tiny digits trials.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pyarrow.fs as pafs
import pytest
import torch
import yaml
from search_procs import (
    S3_ENV,
    command,
    end_marked,
    finish,
    marked,
    new_mark,
    plain,
    results_lines,
    run_search,
    s3_server,
    tiny_space,
    wait_gone,
    wait_until,
)

from neqtune.search.checkpoints import CHECKSUM_FILE, STATE_FILE, checkpoint_reports, load_state, restore_state, save_state, write_reports
from neqtune.search.tables import join_location, read_table

ROOT = Path(__file__).resolve().parent.parent
# Metrics that must not depend on the process, the wall clock or a restart.
EXACT_COLUMNS = (
    "epoch", "train_loss", "train_top1", "val_top1", "test_top1", "lr", "best_val_top1", "best_epoch",
    "test_top1_at_best_val", "params_updated", "neurons_updated", "frozen_pct", "layer_frozen_pct",
)  # fmt: skip


# The memory-budget policies carry more state across a restart (layer ranking, gradient norms, channels seen).
MEMORY_BUDGET = {"unit": "input_channel", "memory": 20000, "options": {name: {"ranking_batches": 2} for name in ("trady", "rgn", "medyate")}}


# medyate: the policy that carries the most state across a restart (layer ranking, gradient norms, channels seen), under
# a memory budget. The kill and the restart are the same for every policy (the trainable and its checkpoint); what
# differs is each policy's own state, and its exact resume from a checkpoint is checked in process, per policy
# (test_memory_policies.py::test_every_policy_resumes_exactly, velocity included).
@pytest.mark.search
@pytest.mark.parametrize("policy", ["medyate"])
def test_sigkilled_trial_worker_restarts_from_its_checkpoint_and_ends_like_an_uninterrupted_run(policy: str, tmp_path: Path) -> None:
    # Two trials of the very same config (seed 0 twice): one runs undisturbed, the other's worker is killed mid-epoch.
    space = tiny_space(3, {"algorithm": "grid", "num_samples": 1, "params": {"training.seed": {"choice": [0, 0]}}})
    if policy != "velocity":
        space["budget"] = {"policy": policy, "initialization": "random", **MEMORY_BUDGET}
        space["training"]["lr"] = 0.02  # 0.1 with momentum diverges here: NaN losses would compare unequal
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    experiment = tmp_path / "results" / "exp"
    mark = new_mark()
    try:
        proc = run_search(["--space", "space.yaml", "--results", "results", "--name", "exp"], cwd=tmp_path, mark=mark)
        first = wait_until(lambda: next((r for r in results_lines(experiment) if r.get("epoch") == 1), None), 150, "epoch 1", proc)
        time.sleep(0.3 * float(first["epoch_time_s"]))  # into the second epoch
        os.kill(int(first["pid"]), signal.SIGKILL)
        out = finish(proc, 180, mark)
    finally:
        end_marked(mark)
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
    extra = {"velocity": ()}.get(policy, ("memory_used", "layers_selected")) + (("channels_seen_pct",) if policy == "medyate" else ())
    for column in EXACT_COLUMNS + extra:
        assert restarted[column].map(plain).tolist() == other[column].map(plain).tolist(), column
    # Each trial's newest checkpoint carries all its reports (what a resume recovers when the driver died before logging them).
    for trial_id, rows in epochs.groupby("trial_id"):
        carried = checkpoint_reports(pafs.LocalFileSystem(), str(experiment / f"trial_{trial_id}"))
        assert [r["epoch"] for r in carried] == [1, 2, 3] and {r["trial_id"] for r in carried} == {trial_id}
        assert [r["train_loss"] for r in carried] == rows.sort_values("epoch").train_loss.tolist()


def s3_objects(fs: pafs.FileSystem, prefix: str) -> list[str]:
    return [i.path for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True)) if i.type == pafs.FileType.File]


def checkpointed_trials(fs: pafs.FileSystem, experiment: str) -> set[str]:
    """Trials whose checkpoint Tune's newest saved experiment state names (a restore will hand it to the trial).

    The names sit in cloudpickled blobs of the state's JSON, written as hex.
    """
    states = sorted(p for p in s3_objects(fs, experiment) if p.rpartition("/")[2].startswith("experiment_state-"))
    if not states:
        return set()
    with fs.open_input_stream(states[-1]) as stream:
        try:
            data = json.loads(stream.read())
        except ValueError:
            return set()
    found = set()
    for trial, metadata in data.get("trial_data", []):
        blobs = re.findall(r"[0-9a-f]{64,}", json.dumps(metadata))
        if any(b"checkpoint_0" in bytes.fromhex(blob) for blob in blobs):
            found.add(json.loads(trial)["trial_id"])
    return found


@pytest.mark.search
def test_a_driver_sigkilled_on_s3_storage_leaves_no_process_and_resumes_from_s3_with_every_trial_epoch_once(tmp_path: Path) -> None:
    trials_n, epochs_n = 4, 3
    space = tiny_space(epochs_n, {"algorithm": "optuna", "sampler": "random", "num_samples": trials_n, "seed": 7,
                                  "params": {"training.lr": {"loguniform": [0.01, 0.3]}}})  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    mark = new_mark()
    with s3_server("bucket") as endpoint:
        query = f"?endpoint_override={endpoint}&scheme=http"
        storage = f"s3://bucket/neqtune{query}"
        location = join_location(storage, "exp")
        table = join_location(location, "epochs.parquet")
        fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")

        def epoch_rows() -> int:
            found = read_table(table)
            return 0 if found is None else found.num_rows

        try:
            driver = run_search(["--space", "space.yaml", "--storage", storage, "--results", "results", "--name", "exp"], cwd=tmp_path, mark=mark, env=S3_ENV)

            def unfinished_checkpointed() -> set[str]:
                found = read_table(table)
                if found is None or found.num_rows < 2:
                    return set()
                last = found.to_pandas().groupby("trial_id").epoch.max()
                return {t for t in checkpointed_trials(fs, "bucket/neqtune/exp") if t in last and last[t] < epochs_n}

            def stopped_driver_shows_one() -> set[str]:
                """Looked at with the driver stopped (SIGSTOP): it cannot flush the table or save the state between this
                look and the kill, so a trial seen unfinished here is unfinished in what the killed driver leaves."""
                time.sleep(0.4)  # the driver runs between looks
                try:
                    os.kill(driver.pid, signal.SIGSTOP)
                except ProcessLookupError:
                    return set()
                found = unfinished_checkpointed()
                if not found:
                    os.kill(driver.pid, signal.SIGCONT)
                return found

            wait_until(stopped_driver_shows_one, 150, "a saved experiment state naming a checkpoint of an unfinished trial", driver)
            # 1. SIGKILL the driver alone: no process of the Ray it started may outlive it by more than a few seconds.
            running = [pid for pid in marked(mark) if pid != driver.pid]
            assert any("raylet" in command(pid) for pid in running) and len(running) >= 4, [command(p) for p in running]
            os.kill(driver.pid, signal.SIGKILL)
            killed = time.monotonic()
            driver.wait(timeout=30)
            left = wait_gone(mark, 15)
            gone_s = time.monotonic() - killed
            assert left == [], f"still running after the driver was SIGKILLed: {[command(p) for p in left]}"
            before = read_table(table)
            assert before is not None
            before_rows = before.to_pandas()
            # 2. Every checkpoint of an unfinished trial that the saved state names, truncated on S3.
            done = before_rows.groupby("trial_id").epoch.max()
            victim = sorted(t for t in checkpointed_trials(fs, "bucket/neqtune/exp") if done.get(t, epochs_n) < epochs_n)[0]
            for state in (p for p in s3_objects(fs, f"bucket/neqtune/exp/trial_{victim}") if p.endswith(f"/{STATE_FILE}")):
                with fs.open_input_stream(state) as stream:
                    data = stream.read()
                with fs.open_output_stream(state) as stream:
                    stream.write(data[: len(data) // 2])
            # 3. Resume from S3.
            resumed = run_search(["--resume", location, "--results", "results"], cwd=tmp_path, mark=mark, env=S3_ENV)
            out = finish(resumed, 240, mark)
        finally:
            end_marked(mark)
        assert "resuming experiment exp" in out
        notes = [line for line in out.splitlines() if line.startswith(f"trial {victim}: checkpoint_")]
        assert len(notes) == 1 and "unreadable" in notes[0] and notes[0].endswith(": restarted from scratch"), out
        print(notes[0])
        epochs = read_table(table).to_pandas()  # type: ignore[union-attr]
        trials = read_table(join_location(location, "trials.parquet")).to_pandas()  # type: ignore[union-attr]
        print(f"driver kill on S3: its Ray processes gone {gone_s:.1f} s after; {len(before_rows)} trial-epoch rows before the resume, {len(epochs)} after")
        assert not epochs.duplicated(["trial_id", "epoch"]).any()
        assert len(epochs) == trials_n * epochs_n and len(before_rows) < len(epochs)
        assert sorted(trials.trial_id) == sorted(epochs.trial_id.unique()) and (trials["status"] == "TERMINATED").all()
        assert epochs.groupby("trial_id")["epoch"].apply(sorted).tolist() == [list(range(1, epochs_n + 1))] * trials_n
        assert set(before_rows.trial_id) <= set(epochs.trial_id)  # the trials of the killed driver were continued, not replaced
        lr_before = before_rows.groupby("trial_id")["training.lr"].first().to_dict()
        assert epochs.groupby("trial_id")["training.lr"].first()[list(lr_before)].to_dict() == lr_before
        assert all(math.isfinite(v) for v in trials.best_val_top1)
        # The trial that lost its newest checkpoint computed its epochs again: the same numbers, never garbage.
        again = epochs[epochs.trial_id == victim].set_index("epoch")
        for _, row in before_rows[before_rows.trial_id == victim].iterrows():
            for column in EXACT_COLUMNS[1:]:
                assert plain(again.loc[row.epoch, column]) == plain(row[column]), (row.epoch, column)
        # optuna.db (in the local experiment directory, the tables being on S3) was reopened by the resumed driver and is
        # current: each trial once, complete, with every epoch; a trial the killed driver had just started, unknown to
        # Tune's saved state, is not left RUNNING.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        stored = optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path / 'results' / 'exp' / 'optuna.db'}").get_trials()
        complete = [t for t in stored if t.state == optuna.trial.TrialState.COMPLETE]
        # The Optuna searcher went on with its seeded stream: a fresh one would propose the first values again. Each
        # trial's value is one of the stream's first draws, none twice; a trial the killed driver had drawn but Tune
        # had not saved (failed in optuna.db) used up its draw, so the stream runs that much further.
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
        lr = optuna.distributions.FloatDistribution(0.01, 0.3, log=True)
        stream = [study.ask({"training.lr": lr}).params["training.lr"] for _ in range(trials_n + len(stored) - len(complete))]
        drawn = [next((i for i, value in enumerate(stream) if value == pytest.approx(v, rel=1e-12)), None) for v in trials["training.lr"]]
        assert None not in drawn and len(set(drawn)) == trials_n and 0 in drawn, (list(trials["training.lr"]), stream)
        assert sorted(t.params["training.lr"] for t in stored) == pytest.approx(sorted(stream), rel=1e-12)  # each draw one trial
        states = {t.user_attrs["tune_trial_id"]: (t.state.name, t.user_attrs.get("epochs_run")) for t in stored}
        assert sorted(t.user_attrs["tune_trial_id"] for t in complete) == sorted(trials.trial_id), states
        assert all(t.state == optuna.trial.TrialState.FAIL and "driver died" in t.user_attrs["fail_reason"] for t in stored if t not in complete)
        by_id = trials.set_index("trial_id")
        for frozen in complete:
            curve = epochs[epochs.trial_id == frozen.user_attrs["tune_trial_id"]].sort_values("epoch")
            assert frozen.intermediate_values == pytest.approx(dict(zip(curve.epoch, curve.best_val_top1, strict=True)))
            assert frozen.value == pytest.approx(by_id.loc[frozen.user_attrs["tune_trial_id"], "best_val_top1"])
            assert frozen.params["training.lr"] == pytest.approx(by_id.loc[frozen.user_attrs["tune_trial_id"], "training.lr"])
        # 4. The analysis reads the experiment straight from S3.
        analysis = subprocess.run(
            [sys.executable, "-m", "neqtune.results.analyze", location, "-o", str(tmp_path / "analysis")],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, **S3_ENV}, timeout=120,
        )  # fmt: skip
        assert analysis.returncode == 0, analysis.stdout + analysis.stderr
        outcomes = pd.read_csv(tmp_path / "analysis" / "trials.csv")
        assert len(outcomes) == trials_n and outcomes.usable.all()
        assert (tmp_path / "analysis" / "table.md").read_text().count("| mbv2-w0.35 |") == 1
        assert (tmp_path / "results" / "exp" / "tensorboard").is_dir()  # a URI storage keeps TensorBoard files under --results


# --- checkpoints that cannot be read --------------------------------------------------------------------------------
def write_checkpoint(directory: Path, epoch: int) -> Path:
    directory.mkdir(parents=True)
    save_state({"epoch": epoch, "weights": torch.arange(1000, dtype=torch.float32) * epoch}, directory)
    return directory


def test_a_truncated_newest_checkpoint_falls_back_to_an_older_one_then_to_scratch(tmp_path: Path) -> None:
    from ray import tune

    trial = tmp_path / "trial_a"
    older = write_checkpoint(trial / "checkpoint_000002", epoch=3)
    newest = write_checkpoint(trial / "checkpoint_000004", epoch=5)
    assert load_state(newest)["epoch"] == 5 and restore_state(tune.Checkpoint(str(newest)))[1] is None
    data = (newest / STATE_FILE).read_bytes()
    (newest / STATE_FILE).write_bytes(data[: len(data) // 2])  # truncated
    state, note = restore_state(tune.Checkpoint(str(newest)))
    assert state is not None and state["epoch"] == 3 and torch.equal(state["weights"], torch.arange(1000, dtype=torch.float32) * 3)
    assert note is not None and note.startswith("checkpoint_000004 unreadable (state.pt: its CRC-32 does not match") and note.endswith(
        ": resumed from checkpoint_000002"
    )
    raw = bytearray((older / STATE_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the middle: torch.load might accept it, the checksum does not
    (older / STATE_FILE).write_bytes(bytes(raw))
    state, note = restore_state(tune.Checkpoint(str(newest)))
    assert state is None and note is not None
    assert note.endswith("; 1 older checkpoint(s) unreadable too: restarted from scratch")


def test_a_checkpoint_without_checksum_is_trusted_only_if_it_loads(tmp_path: Path) -> None:
    old = write_checkpoint(tmp_path / "checkpoint_000001", epoch=2)
    (old / CHECKSUM_FILE).unlink()  # written before checkpoints had one
    assert load_state(old)["epoch"] == 2
    (old / STATE_FILE).write_bytes((old / STATE_FILE).read_bytes()[:100])
    with pytest.raises(ValueError, match=r"^state\.pt: "):
        load_state(old)
    (old / STATE_FILE).write_bytes(b"")
    with pytest.raises(ValueError):
        load_state(old)


# --- leftovers of a dead driver --------------------------------------------------------------------------------------
@pytest.mark.search
def test_the_next_search_ends_what_a_dead_drivers_ray_left_and_only_that(tmp_path: Path) -> None:
    from neqtune.search.local_ray import DIR_PREFIX, OWNER_FILE, process_start, sweep_dead_instances
    from neqtune.search.reaper import MARK

    dead, alive = tmp_path / f"{DIR_PREFIX}dead", tmp_path / f"{DIR_PREFIX}alive"
    dead.mkdir()
    alive.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    (dead / OWNER_FILE).write_text(json.dumps({"pid": int(gone.stdout), "start": "0"}))  # its driver has exited
    (alive / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": process_start(os.getpid())}))
    (dead / "session_1" / "logs").mkdir(parents=True)
    log = dead / "session_1" / "logs" / "dashboard_agent.log"
    sleeper = [sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "f = open(sys.argv[1]) if len(sys.argv) > 1 else None; print(flush=True); time.sleep(120)"]  # fmt: skip
    unmarked = {k: v for k, v in os.environ.items() if k != MARK}

    def start(env: dict[str, str], *args: str, stderr: Any = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen([*sleeper, *args], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "\n"  # its SIGTERM handler is in place
        return proc

    orphan = start({**os.environ, MARK: str(dead)})  # ignores SIGTERM, like Ray's agents
    # An agent whose mark setproctitle wiped from /proc/PID/environ: its stderr goes to its log in the dead instance's directory.
    with log.open("w") as stderr:
        agent = start(unmarked, stderr=stderr)
    keeper = start({**os.environ, MARK: str(alive)})
    stranger = start(unmarked)
    reader = start(unmarked, str(log))  # someone's ``tail -f`` of that log: not Ray's
    try:
        ended = sweep_dead_instances(tmp_path)
        assert sorted(ended) == sorted([orphan.pid, agent.pid])
        assert orphan.wait(timeout=10) == -signal.SIGKILL and agent.wait(timeout=10) == -signal.SIGKILL
        assert keeper.poll() is None and stranger.poll() is None and reader.poll() is None
        assert not dead.exists() and alive.is_dir()
    finally:
        for proc in (orphan, agent, keeper, stranger, reader):
            proc.kill()
            proc.wait()


def test_the_watchdog_keeps_on_record_the_children_of_the_instance_that_lost_the_mark(tmp_path: Path) -> None:
    """What Ray's agents look like once the driver and the raylet died: an orphan without the mark, its output a pipe."""
    from neqtune.search.reaper import MARK, instance_processes

    ray_dir = str(tmp_path / "neqtune-ray-x")
    code = (
        "import os, subprocess, sys, time; env = {k: v for k, v in os.environ.items() if k != sys.argv[1]}; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], env=env, stdout=subprocess.PIPE); "
        "print(child.pid, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code, MARK], env={**os.environ, MARK: ray_dir}, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        known = instance_processes(ray_dir)
        assert list(known) == sorted([parent.pid, child])
        parent.kill()
        parent.wait()
        assert instance_processes(ray_dir) == {}  # by mark or log alone, the orphan is a stranger
        assert list(instance_processes(ray_dir, known)) == [child]  # on the record, it is the instance's
        assert instance_processes(ray_dir, {child: "0"}) == {}  # a pid of the record reused by another process is not
    finally:
        parent.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_resume_backfills_the_epochs_a_dead_driver_never_wrote(tmp_path: Path) -> None:
    from neqtune.search.recorder import ResultRecorder
    from neqtune.search.space import load_space

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
    from neqtune.search.recorder import ResultRecorder
    from neqtune.search.space import load_space

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


def test_resume_recovers_the_epochs_only_a_stored_checkpoint_carries(tmp_path: Path) -> None:
    """The worker stored epoch 3's checkpoint, the driver died before logging epoch 2 or 3: the checkpoint's reports fill them.

    Only for a trial that the saved experiment state names.
    """
    from neqtune.search.recorder import ResultRecorder, read_results
    from neqtune.search.space import load_space

    experiment = tmp_path / "exp"
    trial = experiment / "trial_t1"
    config = {"training.lr": 0.02}
    reports = [{"epoch": e, "train_loss": 1.0 / e, "epoch_time_s": 0.5, "best_val_top1": float("nan") if e == 2 else 10.0 * e} for e in (1, 2, 3)]
    write_checkpoint(trial / "checkpoint_000000", epoch=1)
    write_reports(trial / "checkpoint_000000", "t1", config, reports[:1])
    write_checkpoint(trial / "checkpoint_000002", epoch=3)
    write_reports(trial / "checkpoint_000002", "t1", config, reports)
    (trial / "checkpoint_000003").mkdir()  # being written when the driver died: no reports yet
    (trial / "result.json").write_text(json.dumps({**reports[0], "trial_id": "t1", "config": config}) + "\n")
    # t2 was started by the dying driver after it last saved the experiment state: Tune will not continue it.
    write_checkpoint(experiment / "trial_t2" / "checkpoint_000000", epoch=1)
    write_reports(experiment / "trial_t2" / "checkpoint_000000", "t2", config, reports[:1])
    (experiment / "experiment_state-2026-12-01_10-00-00.json").write_text(json.dumps({"trial_data": []}))
    state = {"trial_data": [[json.dumps({"trial_id": "t1"}), "{}"]]}
    (experiment / "experiment_state-2026-12-01_10-00-05.json").write_text(json.dumps(state))  # the newest
    assert [(r["trial_id"], r["epoch"], r["config"]) for r in read_results(str(experiment))] == [("t1", e, config) for e in (1, 2, 3)]
    recorder = ResultRecorder(experiment, "exp", load_space(None).base, searched=[], echo=lambda _: None)
    assert recorder.backfill(str(experiment)) == 3
    recorder.flush()
    rows = pd.read_parquet(experiment / "epochs.parquet")
    assert rows.epoch.tolist() == [1, 2, 3] and rows.train_loss.tolist() == [1.0, 0.5, 1.0 / 3] and (rows["training.lr"] == 0.02).all()
    assert math.isnan(rows.best_val_top1[1]) and recorder._last["t1"]["epoch"] == 3


def test_storage_root_and_space_file_under_a_uri(tmp_path: Path) -> None:
    from neqtune.search.ray_cluster import ClusterError
    from neqtune.search.storage import storage_root, write_text

    assert storage_root(None, tmp_path / "results") == str((tmp_path / "results").resolve())
    assert storage_root(f"file://{tmp_path}/store/", tmp_path) == f"file://{tmp_path}/store"
    write_text(f"file://{tmp_path}/store/exp/space.yaml", "experiment: exp\n")
    assert (tmp_path / "store" / "exp" / "space.yaml").read_text() == "experiment: exp\n"
    with pytest.raises(ClusterError, match=r"^--storage nope://x: not a storage URI pyarrow can open"):
        storage_root("nope://x", tmp_path)


def test_checkpoints_a_stale_experiment_state_may_name_are_recreated(tmp_path: Path) -> None:
    from neqtune.search.checkpoints import fill_missing_checkpoints

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
