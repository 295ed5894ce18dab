"""Watchdog of the local Ray instance a search started: ``python search/reaper.py RAY_DIR``.

Its standard input is a pipe whose other end only the driver holds. When
the driver ends, however it ends (a normal exit, Ctrl-C, SIGKILL), the pipe
closes; the watchdog then ends every process of the instance and removes
``RAY_DIR``.

A process belongs to the instance (:func:`instance_processes`) if

- its environment carries the mark (the variable :data:`MARK` set to
  ``RAY_DIR``, which the driver sets while Ray starts its processes), or
- its standard output or error goes to a file under ``RAY_DIR`` (Ray sends
  every process's to its log directory there), or
- it descends from such a process, as the watchdog saw while the driver ran.

One rule is not enough: Ray's agents rename themselves with
``setproctitle``, which overwrites the start of the memory that
``/proc/PID/environ`` shows, so the mark may be gone from it (seen here, now
and then, for ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``, whose
output is a pipe while they start); and the raylet, their parent, dies with
the driver, so when the driver is gone only the watchdog's own record
still ties them to the instance. While the driver runs, the watchdog looks
every :data:`WATCH_S` seconds.

It runs as a plain script (no neqtune or Ray import, so it starts in
milliseconds) in its own session, so the Ctrl-C that a terminal sends to
the driver's process group does not reach it.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time
from pathlib import Path

MARK = "NEQTUNE_RAY_DIR"
# SIGTERM first; Ray's agents ignore it (seen here: ray::DashboardAgent and ray::RuntimeEnvAgent ran on), hence SIGKILL.
GRACE_S = 2.0
TIMEOUT_S = 20.0
# How often the watchdog records the instance's processes while the driver runs.
WATCH_S = 1.0

# A process as /proc tells it: (parent pid, start time in clock ticks since boot); the start time tells a reused pid apart.
Known = dict[int, str]


def _stat(pid_dir: str) -> tuple[int, str] | None:
    """(parent pid, start time) of a running process; None for one gone or a zombie (ended, waiting for its parent)."""
    try:
        fields = Path(pid_dir, "stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else (int(fields[1]), fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _writes_under(pid_dir: str, inside: str) -> bool:
    """Whether the process has its stdout or stderr on a file whose path starts with ``inside``."""
    for fd in (1, 2):
        try:
            if os.readlink(f"{pid_dir}/fd/{fd}").startswith(inside):
                return True
        except OSError:  # closed, gone, or not ours to read
            continue
    return False


def instance_processes(ray_dir: str, known: Known | None = None) -> Known:
    """The processes of the Ray instance in ``ray_dir`` (see the module docstring), with their start times.

    ``known``: processes recorded earlier as the instance's; those still
    running (same pid, same start time) count, and so do their descendants.
    """
    needle = f"{MARK}={ray_dir}".encode()
    inside = ray_dir.rstrip("/") + "/"
    protected = _protected()
    parents: dict[int, int] = {}
    starts: Known = {}
    seeds: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid, stat = int(entry.name), _stat(entry.path)
        if stat is None or pid in protected:
            continue
        parents[pid], starts[pid] = stat
        if (known or {}).get(pid) == stat[1]:
            seeds.add(pid)
            continue
        try:
            marked = needle in Path(entry.path, "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marked or _writes_under(entry.path, inside):
            seeds.add(pid)
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(seeds), list(seeds)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid: starts[pid] for pid in sorted(found)}


def marked_processes(ray_dir: str, known: Known | None = None) -> list[int]:
    """Pids of the processes of the Ray instance in ``ray_dir`` (:func:`instance_processes`)."""
    return list(instance_processes(ray_dir, known))


def _protected() -> set[int]:
    """This process and its ancestors: never ended, whatever their environment says."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        stat = _stat(f"/proc/{pid}")
        if stat is None:
            break
        pid = stat[0]
    return pids


def end_processes(ray_dir: str, grace_s: float = GRACE_S, timeout_s: float = TIMEOUT_S, known: Known | None = None) -> list[int]:
    """End the instance's processes: SIGTERM, and SIGKILL for those still there after ``grace_s``; the pids found.

    It goes on until none is left (a dying raylet may still start an agent),
    at most ``timeout_s``. ``known``: as for :func:`instance_processes`.
    """
    found: list[int] = []
    started = time.monotonic()
    termed: set[int] = set()
    known = dict(known or {})
    while time.monotonic() - started < timeout_s:
        current = instance_processes(ray_dir, known)
        known.update(current)
        pids = list(current)
        if not pids:
            time.sleep(0.3)  # quiet for a moment: nothing new was started meanwhile
            if not instance_processes(ray_dir, known):
                break
            continue
        found += [pid for pid in pids if pid not in found]
        late = time.monotonic() - started >= grace_s
        for pid in pids:
            if late or pid not in termed:
                try:
                    os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
                except ProcessLookupError:
                    pass
                termed.add(pid)
        time.sleep(0.1)
    return found


def watch(ray_dir: str, stream: int, every_s: float = WATCH_S) -> Known:
    """Until ``stream`` (the driver's pipe) closes, record the instance's processes every ``every_s``; the record."""
    known: Known = {}
    while True:
        ready, _, _ = select.select([stream], [], [], every_s)
        if ready and not os.read(stream, 65536):
            return known
        try:
            known = instance_processes(ray_dir, known)
        except OSError:  # /proc unreadable for a moment: the next look will do
            continue


def main(argv: list[str]) -> int:
    ray_dir = argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    known = watch(ray_dir, sys.stdin.fileno())
    end_processes(ray_dir, known=known)
    shutil.rmtree(ray_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
