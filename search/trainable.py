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

The trial first imports the space's plug-ins from the source that travelled
with it (:mod:`neqtune.search.plugins`), then resolves its config. A config
that is invalid (a :class:`~neqtune.trainables.config.ConfigError` before the
first epoch: a name no registry knows on this node, a file missing here, fp16
without a GPU) or a plug-in that fails to import here would fail the same way
on every retry: the trial reports its one-line reason under
:data:`INVALID_CONFIG` as its only result and ends, which the driver records
as a failed trial and does not retry.

A checkpoint holds the state and its CRC-32. A restarted trial whose newest
checkpoint is unreadable (truncated, or not what was written) goes back to
an older checkpoint of the trial if one is kept, else starts from scratch,
and its first report says so (``resume_note``), which the driver prints.

The first report of a trial process also carries the config the trial
resolved (:data:`RESOLVED_CONFIG`), and every report its planned epochs
(:data:`PLANNED_EPOCHS`): the driver's tables, summary and Optuna study take
them from there, and resolve the sampled values themselves only for a trial
that never reported (its config refused) or whose reports predate these keys.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import torch
import yaml
from ray import tune

from neqtune.search.checkpoints import (
    CONFIG_FILE,
    REPORTS_KEY,
    CheckpointClock,
    restore_state,
    save_state,
    write_reports,
)
from neqtune.search.plugins import Plugin, PluginError, load_plugins
from neqtune.trainables.config import ConfigError, TrialConfig, with_overrides
from neqtune.trainables.repeats import train_repeats
from neqtune.trainables.trainer import Metrics, StateFn, train

INVALID_CONFIG = "invalid_config"
"""The key of the one result a trial with an invalid config reports: its reason, one line."""
RESOLVED_CONFIG = "resolved_config"
"""The key of the trial's whole resolved config (nested), in the first report of each trial process: the driver takes
it from there instead of resolving the sampled values again."""
PLANNED_EPOCHS = "planned_epochs"
"""The key of the trial's warm-up plus decay epochs, in every report: what tells a trial stopped early from a finished one."""


def resolve_trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> TrialConfig:
    """The trial's config: ``base`` with Tune's dotted-key samples applied, validated."""
    return TrialConfig.from_dict(with_overrides(base, sampled))


def budgeted_trainable(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    plugins: Sequence[Plugin] = (),
    threads: int = 1,
    repeats: int = 1,
    checkpoint_interval_s: float = 0.0,
) -> None:
    """Ray Tune function trainable for one budgeted fine-tuning trial.

    Args:
        config: Tune's sampled values, by dotted key.
        base: the nested trial config from the space, before sampling.
        plugins: the space's plug-ins, imported before the config is resolved (shipped ones from their source).
        threads: torch CPU threads (the trial's CPU share).
        repeats: seeds per configuration; above 1 the seeds run in lockstep
            and every report carries their mean (:mod:`neqtune.trainables.repeats`).
        checkpoint_interval_s: seconds of work between two saved states (0:
            after every epoch).
    """
    torch.set_num_threads(max(1, threads))
    placement = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "pid": os.getpid()}
    try:
        load_plugins(plugins, shipped=True)
        trial_config = resolve_trial_config(base, config)
    except (ConfigError, PluginError) as err:
        tune.report({INVALID_CONFIG: _one_line(err), **placement})  # where: a node may lack what the driver has
        return
    trial_dir = Path(tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / CONFIG_FILE).write_text(yaml.safe_dump(trial_config.to_dict(), sort_keys=False))

    resume, note = restore_state(tune.get_checkpoint())
    history: list[dict[str, Any]] = list(resume.pop(REPORTS_KEY, [])) if resume is not None else []
    trial_id = tune.get_context().get_trial_id()
    if note is not None:
        print(f"neqtune: {note}", file=sys.stderr, flush=True)  # the worker's log; the driver prints it from the report
        placement["resume_note"] = note

    clock = CheckpointClock(checkpoint_interval_s)
    placement[PLANNED_EPOCHS] = trial_config.training.total_epochs
    first: dict[str, Any] = {RESOLVED_CONFIG: trial_config.to_dict()}  # sent once; not kept with the checkpoints' reports

    def report(metrics: Metrics, state: StateFn) -> None:
        sent = {**metrics, **placement}
        history.append(sent)
        if not clock.due():
            tune.report({**sent, **first})
        else:
            with tempfile.TemporaryDirectory() as directory:
                save_state({**state(), REPORTS_KEY: history}, Path(directory))
                write_reports(Path(directory), trial_id, dict(config), history)
                tune.report({**sent, **first}, checkpoint=tune.Checkpoint.from_directory(directory))
        placement.pop("resume_note", None)  # said once
        first.clear()

    try:
        if repeats > 1:
            train_repeats(trial_config, repeats, report, resume=resume)
        else:
            train(trial_config, report, resume=resume)
    except ConfigError as err:
        if history:
            raise  # it trained before: not a question of the config alone
        tune.report({INVALID_CONFIG: _one_line(err), **placement})


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
