"""A real Ray cluster of two nodes on this machine (loopback only), for the tests that need one.

The head and the worker node are started with the ``ray`` CLI of the project's
virtualenv, on free ports and a temporary directory each, so that other Ray
instances on the machine are neither joined nor disturbed; :func:`stop_cluster`
stops only the processes of its own cluster (found by that directory, and by an
environment variable every process of the cluster inherits: Ray's agents
rename their command lines), even when a test fails. Every command gets the
same token authentication settings, so the tests work whether or not
``~/.ray/auth_token`` exists.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from search_procs import RUN_MARK, end_marked, marked, new_mark

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
    def pids() -> list[int]:
        return sorted(set(cluster_pids(marker)) | set(marked(env[RUN_MARK]) if RUN_MARK in env else []))

    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while pids() and time.monotonic() < deadline:
            time.sleep(0.2)
    if RUN_MARK in env:
        end_marked(env[RUN_MARK])


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


@contextlib.contextmanager
def two_node_cluster(
    *, head_env: Mapping[str, str] | None = None, worker_env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, dict[str, str], Path, str]]:
    """A head and one worker node, one CPU each: ``(dashboard URL, env for ray commands, temp dir, GCS address)``.

    ``head_env`` and ``worker_env`` are added to the environment of one node
    each (its raylet, and so its workers).
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="nqc", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        # The GCS declares a node dead after 3 missed health checks 1 s apart (Ray's default takes about 30 s).
        RAY_health_check_initial_delay_ms="1000",
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    env[RUN_MARK] = new_mark()
    ray = str(VENV_BIN / "ray")
    common = ["--num-cpus=1", f"--node-ip-address={HOST}", "--disable-usage-stats"]
    try:
        gcs, dashboard, _client = start_node(
            # ports are probed free, then bound by Ray: another process may take one in between, so a failed start is retried
            lambda gcs, dashboard, client: [ray, "start", "--head", f"--port={gcs}", f"--dashboard-host={HOST}",
                                            f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
                                            f"--temp-dir={temp_dir / 'h'}", "--include-dashboard=true", *common, *node_ports()],
            {**env, **(head_env or {})}, temp_dir / "h",
        )  # fmt: skip
        start_node(
            # its own temp dir: two nodes on one host must not share (and clean up) each other's runtime-env files
            lambda *_: [ray, "start", f"--address={HOST}:{gcs}", f"--temp-dir={temp_dir / 'w'}", *common, *node_ports()],
            {**env, **(worker_env or {})}, temp_dir / "w",
        )  # fmt: skip
        yield f"http://{HOST}:{dashboard}", env, temp_dir, f"{HOST}:{gcs}"
    finally:
        stop_cluster(str(temp_dir), env)
        shutil.rmtree(temp_dir, ignore_errors=True)
