"""Helpers of the fault tests: run ``run_search.py`` as a real process and watch every process it starts.

Each run carries an environment variable of its own (:data:`RUN_MARK`); every
process it starts inherits it (Ray's processes included, whatever they call
themselves), so a test can list them, check that none is left, and clean up
exactly those, never processes of other Ray instances on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from benchmarks.local_s3 import S3_ENV as S3_ENV  # the tests' S3 server lives with the benchmark that uses it too
from benchmarks.local_s3 import s3_server as s3_server

ROOT = Path(__file__).resolve().parent.parent
RUN_MARK = "NEQTUNE_TEST_RUN"
T = TypeVar("T")


def tiny_space(epochs: int, search: dict[str, Any]) -> dict[str, Any]:
    """A digits space whose trials take about a second an epoch here."""
    return {
        "experiment": "faults",
        "data": {"name": "digits", "image_size": 16, "batch_size": 32},
        "model": {"name": "mbv2-w0.35"},
        "training": {"epochs": epochs, "lr": 0.1, "momentum": 0.9},
        "budget": {"policy": "velocity", "initialization": "random", "scheme": "mbv2-w0.35_scheme_3"},
        "search": {"max_concurrent": 2, "cpus_per_trial": 1, "max_failures": 2, "checkpoint_interval_s": 0, **search},
    }


def new_mark() -> str:
    return secrets.token_hex(8)


def run_search(
    args: Sequence[str], *, cwd: Path, mark: str, env: dict[str, str] | None = None, new_session: bool = True
) -> subprocess.Popen[str]:
    """``run_search.py ARGS`` as a process of its own (its own process group: what a terminal's Ctrl-C reaches)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run_search.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {}), RUN_MARK: mark},
        start_new_session=new_session,
    )


def marked(mark: str) -> list[int]:
    """Pids of the processes that carry ``mark`` (a run's driver and everything it started)."""
    needle = f"{RUN_MARK}={mark}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, proc: subprocess.Popen[str] | None = None) -> T:
    """Poll ``condition`` until it returns something true; fail (with the run's output) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the search ended before {what}:\n{out}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_gone(mark: str, timeout_s: float) -> list[int]:
    """Wait until no process carries ``mark``; the pids still there at the deadline (empty: none left)."""
    deadline = time.monotonic() + timeout_s
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    return marked(mark)


def end_marked(mark: str) -> None:
    """SIGKILL every process that carries ``mark`` (a test's clean-up, also when it failed)."""
    for _ in range(3):
        pids = marked(mark)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def finish(proc: subprocess.Popen[str], timeout_s: float, mark: str, expect: int = 0) -> str:
    """The output of a run that must end with exit code ``expect`` within ``timeout_s``."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        end_marked(mark)
        out, _ = proc.communicate()
        pytest.fail(f"the search did not end in {timeout_s:.0f} s:\n{out}")
    assert proc.returncode == expect, out
    return out


def results_lines(experiment: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(experiment.glob("trial_*/result.json")):
        for line in path.read_text().splitlines():
            try:
                yield {**json.loads(line), "_dir": path.parent.name}
            except json.JSONDecodeError:
                continue


def plain(value: Any) -> Any:
    """A cell as a plain Python value (list columns come back as NumPy arrays)."""
    return value.tolist() if hasattr(value, "tolist") else value

