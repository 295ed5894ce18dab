"""Watchdog of the local Ray instance a search started: ``python search/reaper.py RAY_DIR``.

Its standard input is a pipe whose other end only the driver holds. When
the driver ends, however it ends (a normal exit, Ctrl-C, SIGKILL), the pipe
closes; the watchdog then ends every process that carries the instance's
mark (the environment variable :data:`MARK` set to ``RAY_DIR``, which every
process of that Ray instance inherits: Ray renames its workers' and agents'
command lines, not their environments) and removes ``RAY_DIR``.

It runs as a plain script (no neqtune or Ray import, so it starts in
milliseconds) in its own session, so the Ctrl-C that a terminal sends to
the driver's process group does not reach it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

MARK = "NEQTUNE_RAY_DIR"
# SIGTERM first; Ray's agents ignore it (seen here: ray::DashboardAgent and ray::RuntimeEnvAgent ran on), hence SIGKILL.
GRACE_S = 2.0
TIMEOUT_S = 20.0


def marked_processes(ray_dir: str) -> list[int]:
    """Pids of the processes whose initial environment marks them as part of the Ray instance in ``ray_dir``."""
    needle = f"{MARK}={ray_dir}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            entries = environ.read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in entries:
            found.append(int(environ.parent.name))
    return [pid for pid in found if pid not in _protected()]


def _protected() -> set[int]:
    """This process and its ancestors: never ended, whatever their environment says."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def end_processes(ray_dir: str, grace_s: float = GRACE_S, timeout_s: float = TIMEOUT_S) -> list[int]:
    """End the marked processes: SIGTERM, and SIGKILL for those still there after ``grace_s``; the pids found.

    It goes on until no marked process is left (a dying raylet may still
    start an agent), at most ``timeout_s``.
    """
    found: list[int] = []
    started = time.monotonic()
    termed: set[int] = set()
    while time.monotonic() - started < timeout_s:
        pids = marked_processes(ray_dir)
        if not pids:
            time.sleep(0.3)  # quiet for a moment: nothing new was started meanwhile
            if not marked_processes(ray_dir):
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


def main(argv: list[str]) -> int:
    ray_dir = argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns when the driver's end of the pipe closes
    end_processes(ray_dir)
    shutil.rmtree(ray_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
