"""A real two-node Ray cluster on this machine (loopback only), a search submitted as a Ray job.

The head and the worker node are started with the ``ray`` CLI of the project's
virtualenv, on free ports and a private temporary directory, so that other Ray
instances on the machine are neither joined nor disturbed; the test stops only
the processes of its own cluster (found by that directory), even when it fails.
Every command gets the same token authentication settings, so the test works
whether or not ``~/.ray/auth_token`` exists.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on now."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind((HOST, 0))
            socks.append(sock)
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_range(width: int) -> tuple[int, int]:
    """A run of ``width`` ports, all free now, inside the unprivileged range."""
    for _ in range(200):
        start = secrets.randbelow(20_000) + 30_000
        try:
            socks = []
            for port in range(start, start + width):
                sock = socket.socket()
                socks.append(sock)
                sock.bind((HOST, port))
            return start, start + width - 1
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range")


def cluster_pids(marker: str) -> list[int]:
    """Pids of the processes whose command line names this test's Ray directory."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def stop_cluster(marker: str, env: dict[str, str]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in cluster_pids(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while cluster_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


def node_ports() -> list[str]:
    """Per-node ports, so that two nodes on one host (and other engineers' Ray) never clash."""
    manager, objects, agent, agent_grpc, metrics, runtime_env = free_ports(6)
    low, high = free_range(20)
    return [
        f"--node-manager-port={manager}",
        f"--object-manager-port={objects}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--min-worker-port={low}",
        f"--max-worker-port={high}",
    ]


def start_node(command: Callable[[int, int, int], list[str]], env: dict[str, str], node_dir: Path, attempts: int = 3) -> list[int]:
    """``ray start`` with three fresh free ports per attempt; returns the ports of the start that worked."""
    for attempt in range(1, attempts + 1):
        ports = free_ports(3)
        done = subprocess.run(command(*ports), env=env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            return ports
        stop_cluster(str(node_dir), env)
        if attempt == attempts:
            pytest.fail(f"ray start failed {attempts} times; last output:\n{done.stdout}\n{done.stderr}")
    raise AssertionError("unreachable")


@pytest.fixture
def cluster() -> Iterator[tuple[str, dict[str, str], Path]]:
    """A head and one worker node, one CPU each: ``(dashboard URL, env for ray commands, temp dir)``."""
    temp_dir = Path(tempfile.mkdtemp(prefix="nqc", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
    )
    ray = str(VENV_BIN / "ray")
    common = ["--num-cpus=1", f"--node-ip-address={HOST}", "--disable-usage-stats"]
    try:
        gcs, dashboard, _client = start_node(
            # ports are probed free, then bound by Ray: another process may take one in between, so a failed start is retried
            lambda gcs, dashboard, client: [ray, "start", "--head", f"--port={gcs}", f"--dashboard-host={HOST}",
                                            f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
                                            f"--temp-dir={temp_dir / 'h'}", "--include-dashboard=true", *common, *node_ports()],
            env, temp_dir / "h",
        )  # fmt: skip
        start_node(
            # its own temp dir: two nodes on one host must not share (and clean up) each other's runtime-env files
            lambda *_: [ray, "start", f"--address={HOST}:{gcs}", f"--temp-dir={temp_dir / 'w'}", *common, *node_ports()],
            env, temp_dir / "w",
        )  # fmt: skip
        yield f"http://{HOST}:{dashboard}", env, temp_dir
    finally:
        stop_cluster(str(temp_dir), env)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_search_submitted_as_a_ray_job_runs_trials_on_both_nodes(cluster: tuple[str, dict[str, str], Path], tmp_path: Path) -> None:
    started = time.monotonic()
    dashboard, env, _ = cluster
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


# --- the README's cluster commands, as written ------------------------------------------------------------------------
README_MARKER = "<!-- cluster-commands: run as written by tests/test_cluster.py -->"
README_DASHBOARD = "http://127.0.0.1:8265"


def readme_cluster_commands() -> list[str]:
    """The command lines of the README's tested cluster block, in order."""
    text = (ROOT / "README.md").read_text()
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
