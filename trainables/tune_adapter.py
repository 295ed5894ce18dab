"""The Ray Tune function trainable: a thin adapter around :func:`trainables.train`.

Tune hands in the sampled values as dotted keys (``{"training.lr": 0.03}``);
they are laid over the space's base config, the trainer runs, and every
epoch becomes a ``tune.report``. Once ``checkpoint_interval_s`` seconds
passed since the last save, the report carries a checkpoint of the full run
state, so a restarted trial continues exactly from there; the epochs it
repeats report the same numbers again.

A checkpoint also carries every report the trial made up to it
(``reports.json``, with the trial's id and sampled config): the driver
records an epoch only when its report arrives, after the worker stored the
checkpoint, so a driver killed in between would otherwise lose the epochs
that the resumed trial does not run again (see
:func:`checkpoint_reports`).

A checkpoint holds the state and its CRC-32. A restarted trial whose newest
checkpoint is unreadable (truncated, or not what was written) goes back to
an older checkpoint of the trial if one is kept, else starts from scratch,
and its first report says so (``resume_note``), which the driver prints.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
import yaml
from ray import tune

from trainables.config import TrialConfig, with_overrides
from trainables.repeats import train_repeats
from trainables.trainer import Metrics, StateFn, train

STATE_FILE = "state.pt"
CHECKSUM_FILE = "state.crc32"
CONFIG_FILE = "resolved_config.yaml"
CHECKPOINT_PREFIX = "checkpoint_"
REPORTS_FILE = "reports.json"
# The key of the run state under which the trial's reports so far travel (taken out before the trainer sees the state).
REPORTS_KEY = "tune_reports"


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


def resolve_trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> TrialConfig:
    """The trial's config: ``base`` with Tune's dotted-key samples applied, validated."""
    return TrialConfig.from_dict(with_overrides(base, sampled))


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


def budgeted_trainable(
    config: dict[str, Any], *, base: dict[str, Any], threads: int = 1, repeats: int = 1, checkpoint_interval_s: float = 0.0
) -> None:
    """Ray Tune function trainable for one budgeted fine-tuning trial.

    Args:
        config: Tune's sampled values, by dotted key.
        base: the nested trial config from the space, before sampling.
        threads: torch CPU threads (the trial's CPU share).
        repeats: seeds per configuration; above 1 the seeds run in lockstep
            and every report carries their mean (:mod:`trainables.repeats`).
        checkpoint_interval_s: seconds of work between two saved states (0:
            after every epoch).
    """
    torch.set_num_threads(max(1, threads))
    trial_config = resolve_trial_config(base, config)
    trial_dir = Path(tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / CONFIG_FILE).write_text(yaml.safe_dump(trial_config.to_dict(), sort_keys=False))
    placement = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "pid": os.getpid()}

    resume, note = restore_state(tune.get_checkpoint())
    history: list[dict[str, Any]] = list(resume.pop(REPORTS_KEY, [])) if resume is not None else []
    trial_id = tune.get_context().get_trial_id()
    if note is not None:
        print(f"neqtune: {note}", file=sys.stderr, flush=True)  # the worker's log; the driver prints it from the report
        placement["resume_note"] = note

    clock = CheckpointClock(checkpoint_interval_s)

    def report(metrics: Metrics, state: StateFn) -> None:
        sent = {**metrics, **placement}
        history.append(sent)
        if not clock.due():
            tune.report(sent)
        else:
            with tempfile.TemporaryDirectory() as directory:
                save_state({**state(), REPORTS_KEY: history}, Path(directory))
                write_reports(Path(directory), trial_id, dict(config), history)
                tune.report(sent, checkpoint=tune.Checkpoint.from_directory(directory))
        placement.pop("resume_note", None)  # said once

    if repeats > 1:
        train_repeats(trial_config, repeats, report, resume=resume)
    else:
        train(trial_config, report, resume=resume)
