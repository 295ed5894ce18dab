"""A real two-node Ray cluster on this machine (loopback only): a search submitted as a Ray job, a node lost mid-trial.

The cluster is :func:`cluster_procs.two_node_cluster`'s (the ``ray`` CLI of the
project's virtualenv, free ports, a private temporary directory per node,
token authentication); the tests stop only its processes, even when they fail.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cluster_procs import HOST, VENV_BIN, cluster_pids, node_ports, start_node, stop_cluster, two_node_cluster
from search_procs import RUN_MARK, finish, plain, run_search, tiny_space, wait_until

from neqtune.search.tables import read_table

pytestmark = pytest.mark.search  # every test here runs a real search or a Ray cluster (make test-fast leaves them out)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cluster() -> Iterator[tuple[str, dict[str, str], Path, str]]:
    """A head and one worker node, one CPU each: ``(dashboard URL, env for ray commands, temp dir, GCS address)``."""
    with two_node_cluster() as found:
        yield found


def test_a_search_submitted_as_a_ray_job_runs_trials_on_both_nodes(cluster: tuple[str, dict[str, str], Path, str], tmp_path: Path) -> None:
    started = time.monotonic()
    dashboard, env, _, _ = cluster
    space = {
        "experiment": "cluster",
        "data": {"name": "digits", "image_size": 16, "batch_size": 64},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": 2, "lr": 0.1},
        "budget": {"policy": "velocity", "initialization": "random", "scheme": "mbv2-w0.35_scheme_3"},
        "search": {"algorithm": "grid", "num_samples": 1, "cpus_per_trial": 1, "params": {"budget.policy": {"choice": ["velocity", "random"]}}},
    }
    space_path = tmp_path / "tiny.yaml"
    space_path.write_text(yaml.safe_dump(space))
    storage = tmp_path / "storage"
    job = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", str(ROOT), "--",
         "python", "run_search.py", "--space", str(space_path), "--storage", str(storage), "--name", "two-nodes"],
        env=env, capture_output=True, text=True, timeout=170, cwd=ROOT,
    )  # fmt: skip
    log = job.stdout + job.stderr
    assert "neqtune: 2 trials (0 failed)" in log, log
    assert "max_concurrent auto = 2" in log, log
    epochs = pd.read_parquet(storage / "two-nodes" / "epochs.parquet")
    trials = pd.read_parquet(storage / "two-nodes" / "trials.parquet")
    assert len(trials) == 2 and (trials.status == "TERMINATED").all()
    assert len(epochs) == 4 and epochs.node_id.notna().all()
    assert trials.node_id.nunique() == 2, trials[["trial_id", "node_id"]]  # one trial per node: each has one CPU
    assert (epochs.groupby("trial_id").node_id.nunique() == 1).all()
    print(f"two-node cluster test: {time.monotonic() - started:.0f} s from submit to checked tables")


@pytest.mark.parametrize("name", ["aws.yaml", "onprem.yaml"])
def test_the_shipped_cluster_files_pass_rays_schema(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "cluster" / name).read_text()))
    validate_config(config)  # raises on a key Ray's autoscaler does not know or a wrong type
    assert config["provider"]["type"] == ("aws" if name == "aws.yaml" else "local")
    assert any("ray start --head" in command for command in config["head_start_ray_commands"])


def node_id_of(raylet_marker: str) -> tuple[int, str]:
    """The pid and node id of the raylet whose command line names ``raylet_marker`` (a node's temp dir)."""
    for pid in cluster_pids(raylet_marker):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        if cmdline and cmdline[0].endswith("/raylet"):
            return pid, next(arg.split("=", 1)[1] for arg in cmdline if arg.startswith("--node_id="))
    raise AssertionError(f"no raylet under {raylet_marker}")


LOST_NODE_EPOCHS = 6


def test_a_node_lost_mid_trial_restarts_its_trial_on_the_head_from_its_checkpoint(
    cluster: tuple[str, dict[str, str], Path, str], tmp_path: Path
) -> None:
    """The worker node's raylet is SIGKILLed while a trial runs there; the checkpoints are on storage both nodes share."""
    _, env, temp_dir, gcs = cluster
    _, head_id = node_id_of(str(temp_dir / "h"))
    worker_raylet, worker_id = node_id_of(str(temp_dir / "w"))
    # Two trials of the very same config (seed 0 twice): one per node (each has one CPU); the worker's is the victim.
    # The tables flush every second: the worker's first epoch shows about a second after it ran, with 5 epochs still to go there.
    space = tiny_space(LOST_NODE_EPOCHS, {"algorithm": "grid", "num_samples": 1, "params": {"training.seed": {"choice": [0, 0]}}, "max_concurrent": 2,
                                          "table_flush_s": 1.0})  # fmt: skip
    space["training"]["lr"] = 0.02  # 0.1 can diverge, and a diverged twin compares NaN with NaN
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = tmp_path / "storage"
    table = storage / "lost-node" / "epochs.parquet"
    mark = env[RUN_MARK]

    def worker_epochs() -> int:
        found = read_table(table)
        return 0 if found is None else int((found.to_pandas().node_id == worker_id).sum())

    driver = run_search(
        ["--space", "space.yaml", "--address", gcs, "--storage", str(storage), "--name", "lost-node"], cwd=tmp_path, mark=mark, env=env
    )
    def moved_trial() -> bool:
        found = read_table(table)
        if found is None:
            return False
        rows = found.to_pandas()
        on_worker = set(rows[rows.node_id == worker_id].trial_id)
        return bool(on_worker & set(rows[rows.node_id == head_id].trial_id))

    try:
        wait_until(worker_epochs, 150, "an epoch on the worker node", driver)
        os.kill(worker_raylet, signal.SIGKILL)
        lost = time.monotonic()
        deadline = lost + 240
        while not moved_trial() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        moved_s = time.monotonic() - lost  # when the driver ended first, the assertions below say why
        out = finish(driver, 240, mark)
    finally:
        if driver.poll() is None:
            driver.kill()
    epochs = pd.read_parquet(table)
    trials = pd.read_parquet(storage / "lost-node" / "trials.parquet")
    assert len(trials) == 2 and (trials.status == "TERMINATED").all(), out
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert epochs.groupby("trial_id").epoch.apply(sorted).tolist() == [list(range(1, LOST_NODE_EPOCHS + 1))] * 2, (out, epochs[["trial_id", "epoch", "node_id"]])
    victim = epochs[epochs.node_id == worker_id].trial_id.unique()
    assert len(victim) == 1, (out, epochs[["trial_id", "epoch", "node_id"]])
    moved = epochs[epochs.trial_id == victim[0]].sort_values("epoch")
    nodes = moved.node_id.tolist()
    assert nodes[0] == worker_id and nodes[-1] == head_id, (out, nodes)  # the node change, per epoch
    assert nodes == sorted(nodes, key=lambda node: node == head_id), nodes  # worker epochs, then head epochs
    restarted_at = nodes.index(head_id) + 1
    twin = epochs[epochs.trial_id != victim[0]].sort_values("epoch")
    assert set(twin.node_id) == {head_id}
    for column in ("train_loss", "train_top1", "val_top1", "test_top1", "lr", "best_val_top1", "params_updated", "layer_frozen_pct"):
        assert moved[column].map(plain).tolist() == twin[column].map(plain).tolist(), column
    print(
        f"lost node: the trial went on on the head from epoch {restarted_at}, its first epoch there {moved_s:.0f} s after the raylet "
        f"was killed (the head's one CPU first finished the twin); search done {time.monotonic() - lost:.0f} s after the kill"
    )


# --- the cluster commands of docs/cluster.md, as written ---------------------------------------------------------------------
README_MARKER = "<!-- cluster-commands: run as written by tests/test_cluster.py -->"
README_DASHBOARD = "http://127.0.0.1:8265"


def readme_cluster_commands() -> list[str]:
    """The command lines of the tested cluster block of docs/cluster.md, in order."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    block = text.split(README_MARKER, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_readmes_cluster_commands_work_as_written(tmp_path: Path) -> None:
    """Activate the virtualenv, ``ray start --head``, ``ray job submit ... -- python run_search.py``, from a shell whose
    PATH lacks the virtualenv (the system python there cannot run neqtune), with HOME in a temporary directory."""
    activate, start, submit = readme_cluster_commands()
    temp_dir = Path(tempfile.mkdtemp(prefix="nqr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    home = tmp_path / "home"
    home.mkdir()
    system_path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN)
    shell_env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "NEQ_", "VIRTUAL_ENV"))}
    shell_env.update(PATH=system_path, HOME=str(home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    try:
        # 1. the activation line, run as written; its environment is the head's and the submitting shell's
        done = subprocess.run(["bash", "-c", f"{activate}\nenv -0"], env=shell_env, cwd=ROOT, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        env = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
        assert env["PATH"].split(os.pathsep)[0] == str(ROOT / ".venv" / "bin")
        # 2. `ray start --head` as written, plus this test's own ports and temporary directory
        words = shlex.split(start, comments=True)
        assert words == ["ray", "start", "--head"], start
        ray = shutil.which("ray", path=env["PATH"])
        assert ray is not None
        _, dashboard, _ = start_node(
            lambda gcs, dash, client: [ray, *words[1:], f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                                       f"--temp-dir={temp_dir}", f"--node-ip-address={HOST}", "--num-cpus=2", "--disable-usage-stats",
                                       *node_ports()],
            env, temp_dir,
        )  # fmt: skip
        # 3. the job as written, at this head's dashboard
        assert README_DASHBOARD in submit and "--storage" not in submit and "--results" not in submit
        job = subprocess.run(
            ["bash", "-c", submit.replace(README_DASHBOARD, f"http://127.0.0.1:{dashboard}")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        log = job.stdout + job.stderr
        assert job.returncode == 0, log
        assert "neqtune: 2 trials (0 failed)" in log, log
        durable = home / "neqtune-results"
        assert f"results go to {durable} on this node instead" in log and "_ray_pkg_" in log
        assert f"view the curves: tensorboard --logdir {durable}" in log
        (experiment,) = durable.glob("digits-*")
        trials = pd.read_parquet(experiment / "trials.parquet")
        assert len(trials) == 2 and (trials.status == "TERMINATED").all()
        assert (experiment / "optuna.db").is_file() and len(list((experiment / "tensorboard").iterdir())) == 2
        assert "ModuleNotFoundError" not in log and "Token authentication is enabled" not in log
    finally:
        stop_cluster(str(temp_dir), shell_env)
        shutil.rmtree(temp_dir, ignore_errors=True)
