"""The Ray Tune function trainable: a thin adapter around :func:`trainables.train`.

Tune hands in the sampled values as dotted keys (``{"training.lr": 0.03}``);
they are laid over the space's base config, the trainer runs, and every
epoch becomes a ``tune.report``. Once ``checkpoint_interval_s`` seconds
passed since the last save, the report carries a checkpoint of the full run
state, so a restarted trial continues exactly from there; the epochs it
repeats report the same numbers again.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
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
CONFIG_FILE = "resolved_config.yaml"


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

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)

    clock = CheckpointClock(checkpoint_interval_s)

    def report(metrics: Metrics, state: StateFn) -> None:
        if not clock.due():
            tune.report({**metrics, **placement})
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(state(), Path(directory) / STATE_FILE)
            tune.report({**metrics, **placement}, checkpoint=tune.Checkpoint.from_directory(directory))

    if repeats > 1:
        train_repeats(trial_config, repeats, report, resume=resume)
    else:
        train(trial_config, report, resume=resume)
