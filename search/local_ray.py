"""The local Ray instance a search starts, and nothing of it left running after the driver.

``ray.init()`` without an address starts Ray's processes on this machine
(GCS, raylet, dashboard and runtime-env agents, workers). When the driver
was SIGKILLed, the raylet's agents were seen to outlive it for good. So a
local search:

- gives its Ray instance a temporary directory of its own
  (``/tmp/neqtune-ray-XXXXXXXX``) and marks every process of the instance
  with the environment variable ``NEQTUNE_RAY_DIR`` naming that directory
  (set only while ``ray.init`` starts them; children inherit it);
- starts a watchdog (:mod:`neqtune.search.reaper`) that ends every marked process
  and removes the directory as soon as the driver is gone, however it ended;
- before starting, ends what an earlier driver's instance left when its
  watchdog died with it: a directory of ours whose driver process is gone.

Only processes marked with a directory this module created are ever ended,
never processes found by name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from neqtune.search.reaper import MARK, end_processes

DIR_PREFIX = "neqtune-ray-"
OWNER_FILE = "neqtune-driver.json"
# Ray puts socket files a few levels below its temporary directory, and a socket path has at most 107 bytes.
MAX_ROOT_CHARS = 40


@dataclass
class LocalRay:
    """A local Ray instance's directory and its watchdog (whose stdin pipe the driver holds until it ends)."""

    ray_dir: Path
    watchdog: subprocess.Popen[bytes]


def temp_root() -> Path:
    """Where the instances' directories go: the system's temporary directory, if short enough for Ray's sockets."""
    root = tempfile.gettempdir()
    return Path(root if len(root) <= MAX_ROOT_CHARS else "/tmp")


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from ``/proc``), None if there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def sweep_dead_instances(root: Path | None = None) -> list[int]:
    """End the processes of earlier local instances whose driver is gone, and remove their directories.

    A directory counts only if it holds :data:`OWNER_FILE` (written by
    :func:`start_local_ray`); its driver is alive if a process with the
    recorded pid and start time exists. Returns the pids ended.
    """
    ended: list[int] = []
    for owner in sorted((root or temp_root()).glob(f"{DIR_PREFIX}*/{OWNER_FILE}")):
        try:
            driver = json.loads(owner.read_text())
        except (OSError, ValueError):
            continue
        if process_start(int(driver.get("pid", -1))) == driver.get("start"):
            continue  # a search still running
        ended += end_processes(str(owner.parent))
        shutil.rmtree(owner.parent, ignore_errors=True)
    return ended


def start_local_ray(**init_kwargs: object) -> LocalRay:
    """``ray.init(**init_kwargs)`` on this machine in a directory of its own, watched (see the module docstring)."""
    import ray

    sweep_dead_instances()
    ray_dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=temp_root()))
    (ray_dir / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": process_start(os.getpid())}))
    env = {key: value for key, value in os.environ.items() if key != MARK}
    watchdog = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("reaper.py")), str(ray_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    previous = os.environ.get(MARK)
    os.environ[MARK] = str(ray_dir)
    try:
        ray.init(_temp_dir=str(ray_dir), **init_kwargs)  # type: ignore[arg-type]
    finally:  # later children of the driver (not Ray's) must not carry the mark
        if previous is None:
            os.environ.pop(MARK, None)
        else:
            os.environ[MARK] = previous
    return LocalRay(ray_dir=ray_dir, watchdog=watchdog)
