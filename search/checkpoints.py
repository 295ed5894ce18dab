"""The checkpoint layout of a trial, owned here: what a checkpoint directory holds and how it is read back.

A checkpoint directory (Ray Tune's ``checkpoint_NNNNNN``) holds the run state (``state.pt``) and its CRC-32
(``state.crc32``), and every report the trial made up to it (``reports.json``, with the trial's id and sampled
config). The trainable writes them (:mod:`neqtune.search.trainable`), the driver reads the reports back, and
:func:`fill_missing_checkpoints` mends an interrupted experiment's checkpoints before it is resumed
(:func:`neqtune.search.experiment.resume_search`).
"""

from __future__ import annotations

import io
import json
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ray import tune

from neqtune.search.tables import resolve_location

STATE_FILE = "state.pt"
CHECKSUM_FILE = "state.crc32"
CONFIG_FILE = "resolved_config.yaml"
CHECKPOINT_PREFIX = "checkpoint_"
REPORTS_FILE = "reports.json"
# The key of the run state under which the trial's reports so far travel (taken out before the trainer sees the state).
REPORTS_KEY = "tune_reports"
# How many checkpoints the experiment state saved by Tune may lag behind a trial's newest one.
CHECKPOINT_LAG = 3


class UnreadableCheckpoint(ValueError):
    """A checkpoint whose state cannot be trusted (the message says why)."""


def save_state(state: dict[str, Any], directory: Path) -> None:
    """Write ``state`` into a checkpoint directory, with the CRC-32 of its bytes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    (directory / STATE_FILE).write_bytes(data)
    (directory / CHECKSUM_FILE).write_text(f"{zlib.crc32(data):08x}\n")


def load_state(directory: Path) -> dict[str, Any]:
    """The state saved by :func:`save_state` in ``directory``.

    A checkpoint without a checksum file (written before there was one) is
    trusted if it unpickles to a state.

    Raises:
        UnreadableCheckpoint: missing, truncated or altered.
    """
    path = directory / STATE_FILE
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UnreadableCheckpoint(f"{STATE_FILE}: {err.strerror or err}") from None
    checksum = directory / CHECKSUM_FILE
    if checksum.is_file() and checksum.read_text().strip() != f"{zlib.crc32(data):08x}":
        raise UnreadableCheckpoint(f"{STATE_FILE}: its CRC-32 does not match ({len(data):,} bytes: truncated or altered)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:
        raise UnreadableCheckpoint(f"{STATE_FILE}: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}") from None
    if not isinstance(state, dict):
        raise UnreadableCheckpoint(f"{STATE_FILE}: holds a {type(state).__name__}, not a run state")
    return state


def checkpoint_name(index: int) -> str:
    """``checkpoint_000005`` for ``5``: the name Ray Tune gives a trial's checkpoint directories."""
    return f"{CHECKPOINT_PREFIX}{index:06d}"


def checkpoint_index(name: str) -> int | None:
    """``5`` for ``checkpoint_000005``; None for another name."""
    digits = name.removeprefix(CHECKPOINT_PREFIX)
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def checkpoint_dirs(fs: Any, trial_path: str) -> list[tuple[int, str]]:
    """``(index, path)`` of the ``checkpoint_NNNNNN`` directories under ``trial_path`` on pyarrow filesystem ``fs``, newest first."""
    import pyarrow.fs as pafs

    found = []
    for info in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
        index = checkpoint_index(info.base_name)
        if info.type == pafs.FileType.Directory and index is not None:
            found.append((index, info.path))
    return sorted(found, reverse=True)


def older_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's checkpoints older than ``checkpoint`` still in storage, newest first."""
    parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
    newest = checkpoint_index(name)
    if newest is None or checkpoint.filesystem is None:
        return []
    return [tune.Checkpoint(path, filesystem=checkpoint.filesystem) for index, path in checkpoint_dirs(checkpoint.filesystem, parent) if index < newest]


def restore_state(checkpoint: tune.Checkpoint | None) -> tuple[dict[str, Any] | None, str | None]:
    """The state to resume from, and a note when the newest checkpoint could not be used.

    Tries ``checkpoint``, then the trial's older checkpoints, newest first;
    when none is readable the trial starts from scratch (state None).
    """
    if checkpoint is None:
        return None, None
    problems: list[str] = []
    for candidate in [checkpoint, *older_checkpoints(checkpoint)]:
        name = candidate.path.rstrip("/").rpartition("/")[2]
        try:
            with candidate.as_directory() as directory:
                state = load_state(Path(directory))
        except (UnreadableCheckpoint, OSError) as err:
            problems.append(f"{name} unreadable ({err})")
            continue
        return state, (f"{problems[0]}: resumed from {name}" if problems else None)
    older = f"; {len(problems) - 1} older checkpoint(s) unreadable too" if len(problems) > 1 else ""
    return None, f"{problems[0]}{older}: restarted from scratch"


def _plain(value: Any) -> Any:
    """A JSON value for a metric that json does not know (a NumPy or torch scalar or array)."""
    for method in ("tolist", "item"):
        if hasattr(value, method):
            return getattr(value, method)()
    return str(value)


def write_reports(directory: Path, trial_id: str, config: dict[str, Any], reports: list[dict[str, Any]]) -> None:
    """``reports.json`` of a checkpoint: the trial's id, its sampled config and its reports so far."""
    data = {"trial_id": trial_id, "config": config, "reports": reports}
    (directory / REPORTS_FILE).write_text(json.dumps(data, default=_plain, allow_nan=True))


def checkpoint_reports(fs: Any, trial_path: str) -> list[dict[str, Any]]:
    """The reports carried by the newest checkpoint under ``trial_path`` (on pyarrow filesystem ``fs``) that has readable ones.

    Each comes with ``trial_id`` and ``config`` as in Tune's ``result.json``
    lines. Empty when the trial has no such checkpoint.
    """
    for _, path in checkpoint_dirs(fs, trial_path):
        try:
            with fs.open_input_stream(f"{path}/{REPORTS_FILE}") as stream:
                data = json.loads(stream.read().decode())
            reports = data["reports"]
            extra = {"trial_id": str(data["trial_id"]), "config": dict(data["config"])}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # written before checkpoints carried reports, or cut short
        return [{**report, **extra} for report in reports if isinstance(report, dict)]
    return []


def fill_missing_checkpoints(location: str, lag: int = CHECKPOINT_LAG) -> list[str]:
    """Make the checkpoints an interrupted experiment state may still name exist again.

    With ``CheckpointConfig(num_to_keep=1)`` Tune deletes a trial's previous
    checkpoint as soon as it registers the next one, and saves the experiment
    state a moment later; a driver killed in between leaves a state that names
    a deleted checkpoint, and the trial would fail to restore. For each trial,
    the ``lag`` checkpoint directories below its newest one are recreated as
    links to the newest (its state carries its own epoch, so the trial goes on
    from the newest epoch). Returns the directories created, to remove later.
    """
    import pyarrow.fs as pafs

    fs, root = resolve_location(location)
    fs = fs or pafs.LocalFileSystem()
    created: list[str] = []
    for trial in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if trial.type != pafs.FileType.Directory or not trial.base_name.startswith("trial_"):
            continue
        indices = sorted(index for index, _ in checkpoint_dirs(fs, trial.path))
        if not indices:
            continue
        newest = f"{trial.path}/{checkpoint_name(indices[-1])}"
        files = [info for info in fs.get_file_info(pafs.FileSelector(newest, recursive=True)) if info.type == pafs.FileType.File]
        for index in range(max(0, indices[-1] - lag), indices[-1]):
            if index in indices:
                continue
            target = f"{trial.path}/{checkpoint_name(index)}"
            fs.create_dir(target)
            for info in files:
                destination = f"{target}/{info.path[len(newest) + 1 :]}"
                if isinstance(fs, pafs.LocalFileSystem):
                    os.link(info.path, destination)
                else:
                    fs.copy_file(info.path, destination)
            created.append(target)
    return created


class CheckpointClock:
    """Decides after which epochs a trial saves its state: once ``interval_s`` passed since the last save (0: always)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.last = clock()

    def due(self) -> bool:
        """Whether to save now; a save restarts the interval."""
        now = self.clock()
        if now - self.last < self.interval_s:
            return False
        self.last = now
        return True
