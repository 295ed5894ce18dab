"""A Ray Tune callback, on the driver, that records every trial-epoch.

It writes, under the experiment directory:

- ``epochs.parquet``: one flat row per trial-epoch: experiment, trial id,
  every resolved config value as its own column, then the metrics;
- ``trials.parquet``: one row per trial with its final state and best epoch;
- ``tensorboard/<run name>/``: event files with each trial's curves, its
  per-layer shares, and, once it ends, its config and final metrics for
  TensorBoard's HParams dashboard;

and prints concise progress: a line when a trial starts or ends, and a
status line at most every ``status_every_s`` seconds.

When a search is resumed after its driver died, a new recorder opens the
tables as they were last written and :meth:`ResultRecorder.backfill` adds
the trial-epochs that were reported but not yet written, from the trials'
``result.json`` files; epochs that resumed trials report again replace
their rows. Every trial-epoch ends in the table exactly once.

A write that fails because the disk is full or read-only (the recorder's
own, or a trial's checkpoint) raises :class:`~neqtune.search.tables.StorageError`,
which ends the search: what was written stays whole, and ``--resume``
continues once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray.tune import Callback
from ray.tune.experiment import Trial
from torch.utils.tensorboard import SummaryWriter

from neqtune.pareto import finite
from neqtune.search.checkpoints import checkpoint_reports
from neqtune.search.hparams import hparams_summaries, run_name
from neqtune.search.tables import (
    EPOCHS_TABLE,
    SCHEMA_VERSION,
    TRIALS_TABLE,
    ParquetTable,
    StorageError,
    config_column_types,
    join_location,
    resolve_location,
    storage_fault,
)
from neqtune.search.trainable import INVALID_CONFIG, PLANNED_EPOCHS, RESOLVED_CONFIG, resolve_trial_config
from neqtune.trainables.config import ConfigError, TrialConfig, flatten, with_overrides
from neqtune.trainables.metrics import ADAPTER_COLUMNS, fixed_dtypes, metric_names
from neqtune.trainables.repeats import SEED_KEYS as REPEAT_SEED_KEYS
from neqtune.trainables.repeats import STD_KEYS as REPEAT_STD_KEYS


def metric_columns() -> tuple[str, ...]:
    """What the trainer and the adapter report, in table order (see docs/results.md, "Result tables"); with the
    metrics the plug-ins declared."""
    return (*metric_names(), *ADAPTER_COLUMNS)


# Per-layer lists become one scalar per conv, grouped under a prefix: (group, value from the list's entry).
LAYER_SCALARS: dict[str, tuple[str, Callable[[float], float]]] = {
    "layer_frozen_pct": ("updated_pct_by_layer", lambda frozen: 100.0 - frozen),
    "layer_flops_saved": ("flops_saved_by_layer", float),
}
# The trial's summary-row values written as ``final/<name>`` scalars when it ends: the HParams metrics.
FINAL_METRICS = ("best_val_top1", "test_top1_at_best_val", "best_epoch", "epochs_run", "train_time_s")
# Reported only by trials with seed repeats (``search.repeats`` > 1): spread and per-seed values.
REPEAT_COLUMNS = (
    "repeats", "seeds",
    *(f"{key}_std" for key in REPEAT_STD_KEYS),
    *(f"{key}_seeds" for key in REPEAT_SEED_KEYS),
)  # fmt: skip
# The trials table's repeat columns: the spread and per-seed values of the trial's final scores.
REPEAT_SUMMARY_COLUMNS = (
    "repeats", "seeds",
    "best_val_top1_std", "test_top1_at_best_val_std", "best_val_top1_seeds", "test_top1_at_best_val_seeds", "best_epoch_seeds",
)  # fmt: skip
# Columns that may be null in every row of a flush (a trial without an error): their type is fixed, so
# that the first part file does not give them Arrow's null type.
TEXT_COLUMN_TYPES = {"node_id": pa.string(), "hostname": pa.string(), "error": pa.string(), "path": pa.string(), "layer_names": pa.list_(pa.string())}
# What a resumed recorder reads back from the epochs table: each trial's last epoch and epoch times.
RESUME_COLUMNS = (
    "experiment", "trial_id", "epoch", "epoch_time_s", "best_val_top1", "best_epoch", "test_top1_at_best_val",
    "budget_params", "total_conv_params", "node_id", "hostname", *REPEAT_SUMMARY_COLUMNS,
)  # fmt: skip


class ResultRecorder(Callback):
    """Collects results into Parquet tables and TensorBoard; prints progress.

    Args:
        experiment_dir: ``results/<experiment>``.
        experiment: the experiment name (a column of every row).
        base: the space's nested trial config (to resolve each trial's config).
        searched: the dotted keys the search varies (shown in progress lines).
        flush_every_s: longest time between two table writes.
        status_every_s: longest time between two status lines.
        echo: where progress lines go.
        tables_dir: where the Parquet tables go, a local path or a URI
            (default: ``experiment_dir``; TensorBoard files always go
            under ``experiment_dir``).
    """

    def __init__(
        self,
        experiment_dir: Path,
        experiment: str,
        base: dict[str, Any],
        *,
        searched: list[str],
        flush_every_s: float = 10.0,
        status_every_s: float = 30.0,
        echo: Callable[[str], None] = print,
        tables_dir: str | None = None,
    ) -> None:
        self.experiment_dir = experiment_dir
        self.tables_dir = (tables_dir or str(experiment_dir)).rstrip("/")
        self.experiment = experiment
        self.base = base
        self.searched = searched
        self.flush_every_s = flush_every_s
        self.status_every_s = status_every_s
        self.echo = echo
        types = {
            **config_column_types(TrialConfig),
            **{name: pa.type_for_alias(t) for name, t in fixed_dtypes().items()},
            **TEXT_COLUMN_TYPES,
        }
        self.epochs = ParquetTable(join_location(self.tables_dir, EPOCHS_TABLE), key=("experiment", "trial_id", "epoch"), types=types)
        self.trials = ParquetTable(join_location(self.tables_dir, TRIALS_TABLE), key=("experiment", "trial_id"), types=types)
        self.storage_error: StorageError | None = None
        self.invalid_trials = 0  # trials that refused their config (failed, not retried), this driver's
        self._config_columns: dict[str, dict[str, Any]] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._layer_names: dict[str, list[str]] = {}
        self._epoch_times: dict[str, dict[int, float]] = {}
        self._done: set[str] = set()
        self._writers: dict[str, SummaryWriter] = {}
        self._start_times: dict[str, float] = {}
        self._column_types = types
        self._started = time.monotonic()
        self._last_flush = self._last_status = self._started

    # --- resume ------------------------------------------------------------
    def backfill(self, trials_location: str) -> int:
        """Add the trial-epochs of an interrupted run that the tables lack.

        Reads every ``trial_*/result.json`` under ``trials_location`` (the
        Tune experiment directory, a local path or a URI), adds each epoch
        whose row was never written, and remembers each trial's last result
        (from the logs, or from the table where it holds a later epoch) so
        its summary row is complete. Returns the rows added.
        """
        written = self.epochs.previous_keys()
        added = 0
        for result in read_results(trials_location):
            trial_id, epoch = result.get("trial_id"), result.get("epoch")
            if not isinstance(trial_id, str) or not isinstance(epoch, int):
                continue
            if trial_id not in self._config_columns:
                if isinstance(result.get(RESOLVED_CONFIG), dict):
                    self._config_columns[trial_id] = flatten(result[RESOLVED_CONFIG])
                elif isinstance(result.get("config"), dict):  # a log written before trials sent their resolved config
                    self._config_columns[trial_id] = flatten(resolve_trial_config(self.base, result["config"]).to_dict())
            result = {key: value for key, value in result.items() if key != RESOLVED_CONFIG}
            last = self._last.get(trial_id)
            if last is None or int(last["epoch"]) <= epoch:
                self._last[trial_id] = result
            self._layer_names.setdefault(trial_id, list(result.get("layer_names", [])))
            self._epoch_times.setdefault(trial_id, {})[epoch] = float(result.get("epoch_time_s", 0.0))
            if (self.experiment, trial_id, epoch) not in written and trial_id in self._config_columns:
                self.epochs.add(self._epoch_row(trial_id, result))
                added += 1
        # A killed driver may have written an epoch's row before Ray's JSON log reached the disk with
        # it: the table then knows a later epoch of the trial than the logs do.
        for row in self.epochs.table(columns=RESUME_COLUMNS).to_pylist():
            trial_id, epoch = row.get("trial_id"), row.get("epoch")
            if row.get("experiment") != self.experiment or not isinstance(trial_id, str) or not isinstance(epoch, int):
                continue
            self._epoch_times.setdefault(trial_id, {}).setdefault(epoch, float(row.get("epoch_time_s") or 0.0))
            last = self._last.get(trial_id)
            if last is None or int(last["epoch"]) < epoch:
                self._last[trial_id] = row
        return added

    # --- helpers -----------------------------------------------------------
    def _config_of(self, trial: Trial) -> dict[str, Any]:
        if trial.trial_id not in self._config_columns:
            try:
                resolved = resolve_trial_config(self.base, dict(trial.config)).to_dict()
            except ConfigError:  # a trial that refused its config: its values as written
                resolved = with_overrides(self.base, dict(trial.config))
            self._config_columns[trial.trial_id] = flatten(resolved)
        return self._config_columns[trial.trial_id]

    def _epoch_row(self, trial_id: str, result: dict[str, Any]) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "experiment": self.experiment,
            "trial_id": trial_id,
            **self._config_columns[trial_id],
            **{key: result.get(key) for key in metric_columns()},
            **{key: result[key] for key in REPEAT_COLUMNS if key in result},
        }

    def _describe(self, trial: Trial) -> str:
        """The searched values as sampled (the trial has not resolved its config yet when it starts)."""
        sampled = dict(trial.config)
        return " ".join(f"{key}={_short(sampled.get(key))}" for key in self.searched)

    def _run_name(self, trial_id: str) -> str:
        """The trial's TensorBoard run: policy, budget, first mask, seed, searched values, trial id."""
        return run_name(trial_id, self._config_columns.get(trial_id, {}), self.searched)

    def _writer(self, trial_id: str) -> SummaryWriter:
        if trial_id not in self._writers:
            quiet_event_writer_storage_errors()
            self._writers[trial_id] = SummaryWriter(log_dir=str(self.experiment_dir / "tensorboard" / self._run_name(trial_id)))
        return self._writers[trial_id]

    def _write_tensorboard(self, trial_id: str, result: dict[str, Any]) -> None:
        with self._storage_guard(self.experiment_dir / "tensorboard"):
            self._write_scalars(trial_id, result)

    def _write_scalars(self, trial_id: str, result: dict[str, Any]) -> None:
        writer = self._writer(trial_id)
        step = int(result["epoch"])
        for key in metric_columns():
            value = result.get(key)
            if key in LAYER_SCALARS and isinstance(value, list):
                group, transform = LAYER_SCALARS[key]
                for layer, layer_value in zip(result.get("layer_names", []), value, strict=False):
                    writer.add_scalar(f"{group}/{layer}", transform(layer_value), step)
            elif key not in ("epoch", "pid") and finite(value):
                writer.add_scalar(key, value, step)
        writer.flush()

    def _write_hparams(self, trial: Trial, row: dict[str, Any]) -> None:
        """The trial's config and final metrics, for the HParams dashboard, in its own run directory."""
        with self._storage_guard(self.experiment_dir / "tensorboard"):
            self._write_final(trial, row)

    def _write_final(self, trial: Trial, row: dict[str, Any]) -> None:
        writer = self._writer(trial.trial_id)
        step = int(row["epochs_run"])
        for name in FINAL_METRICS:
            if finite(row.get(name)):
                writer.add_scalar(f"final/{name}", row[name], step)
        summaries = hparams_summaries(
            self._config_of(trial),
            metric_tags=[f"final/{name}" for name in FINAL_METRICS],
            types=self._column_types,
            session=f"{self.experiment}/{self._run_name(trial.trial_id)}",
            start_time_s=self._start_times.get(trial.trial_id, time.time()),
            end_time_s=time.time(),
            succeeded=row["status"] in ("TERMINATED", "STOPPED"),
            searched=self.searched,
        )
        file_writer = writer.file_writer  # add_hparams would write into a sub-run; the trial's own run is clearer
        assert file_writer is not None
        for summary in summaries:
            file_writer.add_summary(summary, step)
        writer.flush()

    def flush(self) -> None:
        """Write both tables now."""
        self._flush()

    def _flush(self) -> None:
        with self._storage_guard(self.tables_dir):
            self.epochs.flush()
            self.trials.flush()
        self._last_flush = time.monotonic()

    @contextlib.contextmanager
    def _storage_guard(self, path: str | Path) -> Iterator[None]:
        """Turn a write that failed on a full or read-only disk into a :class:`StorageError` naming ``path``."""
        try:
            yield
        except OSError as err:
            reason = storage_fault(err)
            if reason is None:
                raise
            self.storage_error = StorageError(str(path), reason)
            raise self.storage_error from err

    def _check_trial_fault(self, trial: Trial) -> None:
        """A trial that failed because it could not write its checkpoint (full or read-only storage) ends the search."""
        reason = storage_fault(_trial_exception(trial))
        if reason is not None:
            self.storage_error = StorageError(self.tables_dir, f"{reason} (trial {trial.trial_id} could not save its checkpoint)")
            raise self.storage_error

    def _status(self, trials: list[Trial]) -> None:
        done = len(self.trials)  # the trial being completed may not be marked so yet
        running = sum(t.status == Trial.RUNNING and t.trial_id not in self._done for t in trials)
        best = max(
            ((r["best_val_top1"], tid) for tid, r in self._last.items() if finite(r.get("best_val_top1"))),
            default=None,
        )
        best_text = f", best val top-1 {best[0]:.1f}% (trial {best[1]})" if best else ""
        elapsed = time.monotonic() - self._started
        self.echo(f"[{elapsed / 60:5.1f} min] {done} trials done, {running} running{best_text}")
        self._last_status = time.monotonic()

    def _summary_row(self, trial: Trial, status: str, error: str | None) -> dict[str, Any]:
        last = self._last.get(trial.trial_id, {})
        return {
            "schema_version": SCHEMA_VERSION,
            "experiment": self.experiment,
            "trial_id": trial.trial_id,
            "status": status,
            **self._config_of(trial),
            "epochs_run": last.get("epoch", 0),
            "best_val_top1": last.get("best_val_top1", math.nan),
            "best_epoch": last.get("best_epoch", 0),
            "test_top1_at_best_val": last.get("test_top1_at_best_val", math.nan),
            "budget_params": last.get("budget_params"),
            "total_conv_params": last.get("total_conv_params"),
            "train_time_s": sum(self._epoch_times.get(trial.trial_id, {}).values()),
            "start_time_s": self._start_times.get(trial.trial_id),
            "end_time_s": time.time(),
            "wall_time_s": time.time() - self._start_times.get(trial.trial_id, time.time()),
            **{key: last[key] for key in REPEAT_SUMMARY_COLUMNS if key in last},
            "node_id": last.get("node_id"),
            "hostname": last.get("hostname"),
            "layer_names": self._layer_names.get(trial.trial_id, []),
            "error": error,
            "path": trial.path,
        }

    # --- Tune callback hooks -----------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._start_times.setdefault(trial.trial_id, time.time())
        self.echo(f"trial {trial.trial_id} started: {self._describe(trial)}")

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any) -> None:
        if isinstance(result.get(INVALID_CONFIG), str):
            self._record_invalid(trial, result)
            return
        if "epoch" not in result:
            return
        if isinstance(result.get("resume_note"), str):  # its newest checkpoint was unreadable (neqtune.search.trainable)
            self.echo(f"trial {trial.trial_id}: {result['resume_note']}")
        if isinstance(result.get(RESOLVED_CONFIG), dict):  # the trial's own config, as it resolved it: read once, never re-parsed
            self._config_columns.setdefault(trial.trial_id, flatten(result[RESOLVED_CONFIG]))
            result = {key: value for key, value in result.items() if key != RESOLVED_CONFIG}
        self._last[trial.trial_id] = result
        self._layer_names.setdefault(trial.trial_id, list(result.get("layer_names", [])))
        self._epoch_times.setdefault(trial.trial_id, {})[int(result["epoch"])] = float(result.get("epoch_time_s", 0.0))
        self._config_of(trial)
        self.epochs.add(self._epoch_row(trial.trial_id, result))
        self._write_tensorboard(trial.trial_id, result)
        now = time.monotonic()
        if now - self._last_flush >= self.flush_every_s:
            self._flush()
        if now - self._last_status >= self.status_every_s:
            self._status(trials)

    def _completed_status(self, trial: Trial) -> str:
        """``STOPPED`` for a trial that ended before its last epoch (early stopping), else ``TERMINATED``."""
        last = self._last.get(trial.trial_id, {})
        planned = last.get(PLANNED_EPOCHS)
        if not isinstance(planned, int):  # no report, or one from before trials sent it
            config = self._config_of(trial)
            planned = int(config.get("training.epochs", 0)) + int(config.get("training.warmup_epochs", 0))
        run = int(last.get("epoch", 0))
        return "STOPPED" if run < planned else "TERMINATED"

    def _record_invalid(self, trial: Trial, result: dict[str, Any]) -> None:
        """A trial that refused its config (:data:`~neqtune.search.trainable.INVALID_CONFIG`): failed, with its reason, not retried."""
        if trial.trial_id in self._done:
            return
        self.invalid_trials += 1
        reason = str(result[INVALID_CONFIG])
        self._last[trial.trial_id] = {key: result[key] for key in ("node_id", "hostname") if key in result}
        row = self._summary_row(trial, "ERROR", reason)
        self.trials.add(row)
        self._write_hparams(trial, row)
        self._done.add(trial.trial_id)
        self.echo(f"trial {trial.trial_id} FAILED: {reason} (invalid config, not retried)")
        self._flush()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if trial.trial_id in self._done:  # recorded already: a trial that refused its config
            return
        row = self._summary_row(trial, self._completed_status(trial), None)
        self.trials.add(row)
        self._write_hparams(trial, row)
        self._done.add(trial.trial_id)
        stopped = " (stopped early)" if row["status"] == "STOPPED" else ""
        self.echo(
            f"trial {trial.trial_id} done in {row['epochs_run']} epochs{stopped}: best val top-1 {row['best_val_top1']:.1f}% "
            f"at epoch {row['best_epoch']}, test top-1 there {row['test_top1_at_best_val']:.1f}%"
        )
        self._flush()
        self._status(trials)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._check_trial_fault(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._check_trial_fault(trial)
        error = trial.get_error()
        message = str(error).strip().splitlines()[-1] if error else "unknown error"
        row = self._summary_row(trial, "ERROR", message)
        self.trials.add(row)
        self._write_hparams(trial, row)
        self._done.add(trial.trial_id)
        self.echo(f"trial {trial.trial_id} FAILED: {message} (log: {trial.path})")
        self._flush()

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        if self.storage_error is not None:  # the search is ending because nothing more can be written
            return
        # A trial that finished just before an interrupted driver could write its row
        # is TERMINATED in the restored experiment state and never completes again;
        # trials that a search budget ended (search.max_trial_epochs) end here too.
        written = self.trials.previous_keys()
        for trial in trials:
            if trial.status == Trial.TERMINATED and trial.trial_id not in self._done and (self.experiment, trial.trial_id) not in written:
                self.trials.add(self._summary_row(trial, self._completed_status(trial), None))
        self._flush()
        for writer in self._writers.values():
            writer.close()


def _trial_exception(trial: Trial) -> BaseException | str | None:
    """The exception a trial failed with (Tune pickles it on the driver's disk), else its error text."""
    import cloudpickle

    try:
        pickled = Path(trial.pickled_error_file) if trial.run_metadata.pickled_error_filename else None
        if pickled is not None and pickled.is_file():
            with pickled.open("rb") as stream:
                error: BaseException = cloudpickle.load(stream)
            return error
    except Exception:  # no local trial directory (a trial never scheduled), or an error class that does not unpickle here
        pass
    return trial.get_error()


STORAGE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def quiet_event_writer_storage_errors() -> None:
    """Drop the traceback of TensorBoard's event-writer thread when the disk is full or read-only.

    TensorBoard writes event files from a thread of its own, which dies on
    such an error with a traceback on stderr. The recorder's next table write
    meets the same error and stops the search with its one line (see
    :class:`neqtune.search.tables.StorageError`), so the thread's traceback is noise.
    Every other exception, of that thread or another, keeps the hook that was
    in place. Installed once per process.
    """
    previous = threading.excepthook
    if getattr(previous, "neqtune", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        error, thread = args.exc_value, args.thread
        from_tensorboard = thread is not None and type(thread).__module__.startswith("tensorboard.")
        if from_tensorboard and isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return
        previous(args)

    hook.neqtune = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def saved_trials(fs: Any, root: str) -> set[str]:
    """The ids of the trials that the newest ``experiment_state-*.json`` under ``root`` names (what ``Tuner.restore`` continues)."""
    import pyarrow.fs as pafs

    states = sorted(
        info.path
        for info in fs.get_file_info(pafs.FileSelector(root))
        if info.type == pafs.FileType.File and info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json")
    )
    if not states:
        return set()
    try:
        with fs.open_input_stream(states[-1]) as stream:
            data = json.loads(stream.read().decode())
        return {str(json.loads(trial)["trial_id"]) for trial, _ in data.get("trial_data", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def read_results(location: str) -> Iterator[dict[str, Any]]:
    """What the trials under ``location`` reported: their ``trial_*/result.json`` lines, then the reports their newest checkpoint carries that the log lacks."""
    import pyarrow.fs as pafs

    fs, root = resolve_location(location)
    if fs is None:
        fs, root = pafs.LocalFileSystem(), root
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return
    saved: set[str] | None = None
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("trial_"):
            continue
        logged: set[Any] = set()
        path = f"{info.path}/result.json"
        if fs.get_file_info(path).type == pafs.FileType.File:
            with fs.open_input_stream(path) as stream:
                text = stream.read().decode()
            for line in text.splitlines():
                try:
                    result = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line being written when the driver died
                logged.add(result.get("epoch"))
                yield result
        # Epochs whose checkpoint was stored but whose report the killed driver never logged; only of trials that
        # Tune's saved state names (a trial the driver had just started is not continued, hence not recorded).
        if saved is None:
            saved = saved_trials(fs, root)
        for result in checkpoint_reports(fs, info.path):
            if result.get("epoch") not in logged and result["trial_id"] in saved:
                yield result
