"""Building and running the Ray Tune experiment of a space."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
import yaml
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from neqtune.search.checkpoints import checkpoint_dirs, checkpoint_name
from neqtune.search.dry_run import choices
from neqtune.search.local_ray import LocalRay, start_local_ray
from neqtune.search.pareto import PARETO_TABLE, pareto_front
from neqtune.search.recorder import ResultRecorder, read_results
from neqtune.search.search_config import ParamSpec, SearchConfig
from neqtune.search.space import Space, build_space
from neqtune.search.study import StudyRecorder
from neqtune.search.tables import (
    StorageError,
    config_column_types,
    is_uri,
    join_location,
    location_name,
    resolve_location,
    rows_to_table,
    storage_fault,
    write_atomic,
)
from neqtune.search.trainable import INVALID_CONFIG, budgeted_trainable
from neqtune.trainables.config import TrialConfig

# Our recorder writes the tables and TensorBoard files and prints progress;
# Ray's own CSV and TensorBoardX loggers would only duplicate them (a JSON log
# is added back below) and its status tables would flood the terminal.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Keeping one checkpoint per trial forces an experiment snapshot per epoch; at
# our epoch lengths that is cheap, so Ray's warning about it is noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# A trial whose config is invalid reports its reason as its only result, without metrics, and ends
# (Ray would retry a raised error max_failures times); Tune's check that every result carries the
# searcher's metrics would turn that report into an error of the whole run. Every epoch's report
# carries all the metrics (neqtune.trainables.metrics), so the check has nothing else to catch.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")


# One trial's resident memory, measured here (ru_maxrss of one mbv2-w0.35 digits epoch in a
# process that imported torch and ray: 1.23-1.29 GiB at 16-32 px; resnet18: 1.35 GiB).
TRIAL_BASE_MEMORY_BYTES = 1_400 * 2**20
# Per model parameter: weights, gradients, optimizer state, the best-epoch copy and the
# checkpoint being written (float32 each).
BYTES_PER_PARAMETER = 6 * 4
# Per input pixel of a training batch: activations kept for the backward pass (an upper
# estimate for the registered conv nets, float32).
ACTIVATION_BYTES_PER_PIXEL = 200 * 4
PROBE_TIMEOUT_S = 5.0
SPACE_FILE = "space.yaml"
# How many checkpoints the experiment state saved by Tune may lag behind a trial's newest one.
CHECKPOINT_LAG = 3


class ClusterError(ValueError):
    """A cluster, storage or resume problem found before any trial runs: one line, exit code 2."""


class SearchInterrupted(Exception):
    """The search stopped on Ctrl-C; ``location`` is what ``--resume`` takes (None if no trial had started).

    ``forced``: a second Ctrl-C cut the orderly stop short.
    """

    def __init__(self, location: str | None, *, forced: bool) -> None:
        super().__init__(location)
        self.location = location
        self.forced = forced


TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"


class StopOnInterrupt:
    """Ctrl-C during a search: the first stops it in order, a second forces the stop.

    While Tune runs the trials, the first SIGINT asks Tune to stop (through
    the SIGUSR1 handler Tune installs while it runs): the trials are
    stopped, the experiment state is saved, the tables are flushed, and
    :func:`finish_search` raises :class:`SearchInterrupted`. Outside of
    that, and for the second SIGINT, it raises ``KeyboardInterrupt`` at
    once. Tune's own messages, which would point at ``Tuner.restore``, are
    silenced from the first Ctrl-C on.

    Use as a context manager around :func:`run_search` or
    :func:`resume_search` in the main thread.
    """

    def __init__(self, echo: Any = print) -> None:
        self.echo = echo
        self.requested = False
        self.location: str | None = None
        self.in_fit = False
        self._previous: Any = None
        self._tune_setting: str | None = None

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            # Tune would put its own SIGINT handler in place of this one (and point at Tuner.restore).
            self._tune_setting = os.environ.get(TUNE_SIGINT)
            os.environ[TUNE_SIGINT] = "1"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            if self._tune_setting is None:
                os.environ.pop(TUNE_SIGINT, None)
            else:
                os.environ[TUNE_SIGINT] = self._tune_setting

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested or not self.in_fit:
            self.requested = True
            raise KeyboardInterrupt
        self.requested = True
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        self.echo("neqtune: Ctrl-C: stopping the trials and saving the search (Ctrl-C again forces it)")
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler: end the run after the current step


@dataclass(frozen=True)
class SearchOutcome:
    """What a finished search produced.

    Attributes:
        experiment_dir: where its tables and trial directories are.
        best: the best trial's row of the trials table (by the search
            metric), or None if no trial finished.
        num_trials: trials run.
        errors: trials that failed.
        wall_time_s: seconds from start to end, Ray start included.
        pareto: for several objectives, the trials no other trial
            dominates (also in ``pareto.parquet``); None otherwise.
        objectives: the metrics the search optimised.
        searched: the dotted keys the search varied.
        location: where the tables and trial directories are (a path or a
            URI; ``experiment_dir`` holds the TensorBoard files).
    """

    experiment_dir: Path
    best: dict[str, Any] | None
    num_trials: int
    errors: int
    wall_time_s: float
    pareto: list[dict[str, Any]] | None = None
    objectives: tuple[str, ...] = ()
    searched: tuple[str, ...] = ()
    location: str = ""


def tune_domain(spec: ParamSpec, *, grid: bool) -> Any:
    """The Ray Tune search-space object for one searched key."""
    from ray import tune

    if grid:
        return tune.grid_search(list(spec.choice or []))
    if spec.choice is not None:
        return tune.choice(list(spec.choice))
    if spec.uniform is not None:
        return tune.uniform(*spec.uniform)
    if spec.loguniform is not None:
        return tune.loguniform(*spec.loguniform)
    assert spec.randint is not None
    return tune.randint(spec.randint[0], spec.randint[1])


def build_sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler named in the space.

    TPE handles several objectives itself (multi-objective TPE); NSGA-II
    evolves generations of ``population_size`` trials; random ignores the objectives.
    """
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.startup_trials)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=search.population_size)
    return optuna.samplers.RandomSampler(seed=search.seed)


class RefusingOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, told of trials that refused their config (:data:`~neqtune.search.trainable.INVALID_CONFIG`).

    Such a trial's one result carries no metric: it is not an intermediate
    value (Ray's searcher would look the metric up), and it ends the Optuna
    trial as failed, not as pruned.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if INVALID_CONFIG not in result:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        refused = INVALID_CONFIG in (result or {})
        super().on_trial_complete(trial_id, None if refused else result, error=error or refused)  # no values: FAIL (one objective or several)


def build_searcher(search: SearchConfig) -> Any:
    """Optuna over the space's objectives (one metric, or lists of metrics and modes); None for a grid."""
    if search.algorithm == "grid":
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric: str | list[str] = search.metrics if search.multi_objective else search.metrics[0]
    mode: str | list[str] = list(search.modes) if search.multi_objective else search.modes[0]
    return RefusingOptunaSearch(sampler=build_sampler(search), metric=metric, mode=mode)


def build_scheduler(space: Space) -> Any:
    """Ray Tune's ASHA scheduler over epochs (``training_iteration``) for ``scheduler: asha``; None for FIFO."""
    search = space.search
    if search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    asha = search.asha
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=asha.metric,
        mode=asha.mode,
        max_t=space.asha_max_epochs(),
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )


class TrialEpochBudget(Stopper):  # type: ignore[misc]
    """A Tune stopper that ends the search once its trials ran ``limit`` epochs in total.

    Every reported epoch counts, the ones a restarted trial repeats too (they
    were spent). When the budget is reached, running trials stop (they are
    recorded as ``STOPPED``, having run fewer epochs than planned) and no new
    trial starts. ``spent`` starts from the epochs an interrupted run already
    reported when a search is resumed.
    """

    def __init__(self, limit: int, spent: int = 0) -> None:
        self.limit = limit
        self.spent = spent
        self._last_epoch: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        # Tune hands a finished trial's last result in once more; an epoch counts once per report.
        epoch = result.get("epoch")
        if isinstance(epoch, int) and self._last_epoch.get(trial_id) != epoch:
            self._last_epoch[trial_id] = epoch
            self.spent += 1
        return False

    def stop_all(self) -> bool:
        return self.spent >= self.limit


def reported_epochs(location: str) -> int:
    """Epoch reports in the trials' ``result.json`` logs under ``location`` (an experiment directory or URI)."""
    return sum(1 for result in read_results(location) if "epoch" in result)


def build_stopper(space: Space) -> TrialEpochBudget | None:
    """The search's trial-epoch budget as a Tune stopper, or None without one."""
    limit = space.search.max_trial_epochs
    return None if limit is None else TrialEpochBudget(limit)


def final_rows(recorder: ResultRecorder, experiment: str, metrics: list[str]) -> list[dict[str, Any]]:
    """The trials table's rows of ``experiment``, with any objective it lacks taken from the trial's last epoch."""
    rows = [row for row in recorder.trials.table().to_pylist() if row["experiment"] == experiment]
    missing = [m for m in metrics if rows and m not in rows[0]]
    if missing:
        last: dict[str, dict[str, Any]] = {}
        for row in recorder.epochs.table(columns=["experiment", "trial_id", "epoch", *missing]).to_pylist():
            if row["experiment"] == experiment and row["epoch"] >= last.get(row["trial_id"], {}).get("epoch", -1):
                last[row["trial_id"]] = row
        for row in rows:
            row.update({m: last.get(row["trial_id"], {}).get(m) for m in missing})
    return rows


def _has_metrics(row: dict[str, Any], metrics: list[str]) -> bool:
    return all(isinstance(row.get(m), (int, float)) and not math.isnan(row[m]) for m in metrics)


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check that a ``HOST:PORT`` cluster address accepts connections, within ``timeout_s``.

    ``ray.init`` retries an unreachable address for minutes; a socket connect
    answers at once. ``auto`` and ``ray://`` addresses are left to Ray.

    Raises:
        ClusterError: a malformed address or nothing listening there.
    """
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected 'auto' or HOST:PORT of a Ray head (GCS port, 6379 by default)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise ClusterError(f"--address {address}: no Ray cluster reachable there ({err.strerror or err})") from None


class _StorageFaultFilter(logging.Filter):
    """Drops Tune's traceback of a trial that failed on a full or read-only disk: the search stops with one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f"\n{record.exc_info[1]}"
        return storage_fault(text) is None


logging.getLogger("ray.tune.execution.tune_controller").addFilter(_StorageFaultFilter())

# The local Ray instance this driver started (its watchdog's pipe must stay open as long as the driver runs).
_LOCAL_RAY: LocalRay | None = None

# Ray's logger that announces the token authentication of a new local cluster.
RAY_TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


class TokenNoticeFilter(logging.Filter):
    """Drops Ray's notice that it turned token authentication on for a new local cluster.

    When neqtune starts Ray on this machine, Ray enables token authentication
    by default (the token lives in ``~/.ray/auth_token``) and warns about it on
    every run. That cluster is neqtune's own, so the notice says nothing the
    user must act on; every other message of that logger passes, and joining
    a cluster (``--address``, ``RAY_ADDRESS``) filters nothing.
    """

    NOTICE = "Token authentication is enabled for this Ray cluster"

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOTICE)


def start_ray(address: str | None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start Ray on this machine.

    A local instance gets a directory of its own and a watchdog that ends
    its processes when the driver ends (:mod:`neqtune.search.local_ray`).

    Raises:
        ClusterError: the cluster cannot be reached.
    """
    import ray

    global _LOCAL_RAY
    if ray.is_initialized():
        return
    if address is not None:
        probe_address(address)
    # Trials report through Tune, and failures land in their error files and the
    # trials table; forwarding worker logs would only repeat Ray's INFO lines.
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False, "log_to_driver": False}
    if _local_ray(address):
        kwargs["num_cpus"] = os.cpu_count() or 1
        token_setup = logging.getLogger(RAY_TOKEN_SETUP_LOGGER)
        notice = TokenNoticeFilter()
        token_setup.addFilter(notice)  # the local Ray is neqtune's own: its token notice asks nothing of the user
        try:
            _LOCAL_RAY = start_local_ray(**kwargs)
        finally:
            token_setup.removeFilter(notice)
        return
    kwargs.pop("include_dashboard")
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise ClusterError(f"--address {address or os.environ.get('RAY_ADDRESS')}: {str(err).strip().splitlines()[0]}") from None


def check_shared_storage(storage: str, *, node_ips: list[str], driver_ip: str, shared: bool) -> None:
    """The rule for where a multi-node search may keep its results and checkpoints.

    Trials write checkpoints where the driver and every other node can read
    them back (a trial may restart on another node). That holds for a URI
    (``s3://``, ``gs://``), for a local path when every node runs on the
    driver's host, and for a path on a shared file system (NFS), which the
    user vouches for with ``--shared-storage``.

    Raises:
        ClusterError: a local path on a cluster with nodes on other hosts.
    """
    if is_uri(storage) or shared:
        return
    others = sorted({ip for ip in node_ips if ip != driver_ip})
    if others:
        raise ClusterError(
            f"--storage {storage}: a local path is not shared with the cluster's nodes on {', '.join(others)}; "
            "give a URI (s3://bucket/path, gs://bucket/path) or, for a shared file system mounted on every node, add --shared-storage"
        )


def check_cluster_storage(storage: str, shared: bool) -> None:
    """Apply :func:`check_shared_storage` to the running cluster's alive nodes."""
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    driver_ip = next((str(node["NodeManagerAddress"]) for node in alive if node.get("NodeID") == here), ray.util.get_node_ip_address())
    check_shared_storage(storage, node_ips=[str(node["NodeManagerAddress"]) for node in alive], driver_ip=driver_ip, shared=shared)


def estimate_trial_memory(space: Space) -> int:
    """A coarse upper estimate of one trial's resident memory, in bytes.

    ``TRIAL_BASE_MEMORY_BYTES`` (a worker process with torch and Ray) plus
    ``BYTES_PER_PARAMETER`` per parameter of the largest searched model plus
    ``ACTIVATION_BYTES_PER_PIXEL`` per pixel of a training batch.
    """
    data = space.base.get("data", {})
    params = largest_model_params(space)
    pixels = int(data.get("batch_size", 32)) * int(data.get("image_size", 32)) ** 2
    return TRIAL_BASE_MEMORY_BYTES + BYTES_PER_PARAMETER * params + ACTIVATION_BYTES_PER_PIXEL * pixels


def auto_concurrency(
    *, cpus: float, cpus_per_trial: float, memory_bytes: float, trial_memory_bytes: int, num_trials: int, gpus: float = 0.0, gpus_per_trial: float = 0.0
) -> int:
    """Trials to run at once: as many as the CPUs, the GPU slots and the memory allow, at least 1, at most ``num_trials``."""
    by_cpu = int(cpus // cpus_per_trial)
    by_memory = int(memory_bytes // trial_memory_bytes)
    by_gpu = int(round(gpus / gpus_per_trial, 6)) if gpus_per_trial > 0 else by_cpu  # 1 / 0.25 slots: rounding, not flooring 3.9999
    return max(1, min(by_cpu, by_memory, by_gpu, num_trials))


SMALL_MODEL_PARAMS = 5_000_000
"""Models up to this many parameters share a GPU under ``gpus_per_trial: auto`` (:data:`TRIALS_PER_GPU` of them)."""
TRIALS_PER_GPU = 4


def auto_gpus_per_trial(*, cluster_gpus: float, model_params: int) -> float:
    """``gpus_per_trial: auto``: 0 without GPUs; else 1 / :data:`TRIALS_PER_GPU` for small models, a whole GPU for the rest.

    The study's networks (MobileNetV2-w0.35 to MCUNet, 0.4-3.5 M
    parameters, 128-160 px, batch 32-64) leave most of a modern GPU idle in
    one trial: at batch 32 and 128 px an mbv2-w0.35 step is about 1.8 G
    multiply-adds forward and backward (19 M conv multiply-adds per image x 32
    x 3), well under a millisecond of an H200's compute, so a trial is bound by
    kernel launches and its input, and four trials on one GPU overlap what one
    leaves idle. ResNet-18/50 (11.7 M / 25.6 M parameters) get a GPU
    each. ``python -m benchmarks.gpu_check`` measures 1 against 4 trials on
    one GPU (trials per hour) where a GPU is at hand.
    """
    if cluster_gpus <= 0:
        return 0.0
    return 1.0 / TRIALS_PER_GPU if model_params <= SMALL_MODEL_PARAMS else 1.0


def largest_model_params(space: Space) -> int:
    """Parameters of the largest model the space searches (built at 10 classes, random init)."""
    from neqtune.trainables.config import ModelConfig
    from neqtune.trainables.models.registry import build_model

    models = set(space.search.params["model.name"].choice or []) if "model.name" in space.search.params else set()
    models.add(space.base.get("model", {}).get("name", ModelConfig().name))
    return max(sum(p.numel() for p in build_model(ModelConfig(name=name), num_classes=10).parameters()) for name in models)


def node_gpus() -> list[float]:
    """The GPUs of every alive node of the running Ray cluster."""
    import ray

    return [float(node.get("Resources", {}).get("GPU", 0.0)) for node in ray.nodes() if node.get("Alive")]


def resolve_gpus(space: Space, *, echo: Any = print) -> float:
    """``search.gpus_per_trial`` on the running cluster: ``auto`` resolved and printed, a number checked against its nodes.

    Raises:
        ClusterError: naming ``search.gpus_per_trial`` (more GPUs per trial
            than any node has) or ``training.precision`` (fp16 trials that
            would get no GPU), before anything is written.
    """
    search = space.search
    per_node = node_gpus()
    most = max(per_node, default=0.0)
    if search.gpus_per_trial == "auto":
        gpus = auto_gpus_per_trial(cluster_gpus=sum(per_node), model_params=largest_model_params(space))
        share = f"{round(1 / gpus)} trials per GPU" if 0 < gpus < 1 else f"{gpus:g} GPU per trial"
        echo(f"neqtune: gpus_per_trial auto = {gpus:g} ({share}; {sum(per_node):g} GPUs in the cluster, {len(per_node)} nodes)")
    else:
        gpus = float(search.gpus_per_trial)
        if gpus > most:
            raise ClusterError(f"{space.source}: search.gpus_per_trial: {gpus:g} GPUs per trial, but no node of the cluster has that many (most: {most:g})")
    if gpus == 0 and "fp16" in choices(space, "training.precision"):
        raise ClusterError(f"{space.source}: training.precision: fp16 needs a CUDA device, but the trials get no GPU (gpus_per_trial {gpus:g}); use fp32 or bf16")
    return gpus


def available_memory() -> int:
    """Bytes of memory this machine can still give (``MemAvailable`` on Linux, free pages elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def resolve_concurrency(space: Space, *, local: bool, gpus_per_trial: float = 0.0, echo: Any = print) -> int:
    """``search.max_concurrent``, or for ``auto`` :func:`auto_concurrency` on the running Ray cluster.

    CPUs and GPUs are the cluster's; memory is this machine's available
    memory for a local Ray, else the cluster's ``memory`` resource.
    """
    search = space.search
    if search.max_concurrent != "auto":
        return search.max_concurrent
    import ray

    resources = ray.cluster_resources()
    memory = float(available_memory()) if local else float(resources.get("memory", 0.0))
    trial_memory = estimate_trial_memory(space)
    chosen = auto_concurrency(
        cpus=float(resources.get("CPU", 1.0)),
        cpus_per_trial=search.cpus_per_trial,
        memory_bytes=memory,
        trial_memory_bytes=trial_memory,
        num_trials=space.num_trials(),
        gpus=float(resources.get("GPU", 0.0)),
        gpus_per_trial=gpus_per_trial,
    )
    gpu_part = f"GPUs {resources.get('GPU', 0):g} / {gpus_per_trial:g} per trial; " if gpus_per_trial > 0 else ""
    echo(
        f"neqtune: max_concurrent auto = {chosen} (CPUs {resources.get('CPU', 0):g} / {search.cpus_per_trial:g} per trial; {gpu_part}"
        f"memory {memory / 2**30:.1f} GiB / {trial_memory / 2**30:.2f} GiB estimated per trial)"
    )
    return chosen


def experiment_name(space: Space, name: str | None) -> str:
    """``name`` if given, else the space's experiment name with a timestamp."""
    return name or f"{space.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def storage_root(storage: str | None, results_dir: Path) -> str:
    """Where experiment directories go: ``storage`` (a URI, or a local path made absolute), else ``results_dir``.

    Raises:
        ClusterError: a URI whose scheme pyarrow cannot open.
    """
    try:
        fs, path = resolve_location(storage if storage is not None else results_dir)
    except ValueError as err:
        raise ClusterError(f"--storage {err}") from None
    if fs is None:
        return path
    base, sep, query = str(storage).partition("?")
    return f"{base.rstrip('/')}{sep}{query}"


def write_text(location: str, text: str) -> None:
    """Write a small text file to a local path or a URI."""
    fs, path = resolve_location(location)
    if fs is None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        return
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def build_trainable(space: Space, gpus_per_trial: float) -> Any:
    """The Tune trainable of ``space``: the budgeted trainable with its base config and resources (``gpus_per_trial`` resolved)."""
    from ray import tune

    search = space.search
    return tune.with_resources(
        tune.with_parameters(
            budgeted_trainable,
            base=space.base,
            plugins=space.plugins,
            threads=max(1, int(search.cpus_per_trial)),
            repeats=search.repeats,
            checkpoint_interval_s=search.checkpoint_interval_s,
        ),
        {"cpu": search.cpus_per_trial, "gpu": gpus_per_trial},
    )


def _local_ray(address: str | None) -> bool:
    return address is None and "RAY_ADDRESS" not in os.environ


def run_search(
    space: Space,
    *,
    results_dir: Path,
    name: str | None = None,
    address: str | None = None,
    echo: Any = print,
    storage: str | None = None,
    shared_storage: bool = False,
    stop: StopOnInterrupt | None = None,
) -> SearchOutcome:
    """Run the search of ``space`` with Ray Tune and record its results.

    Args:
        space: a validated space (:func:`search.load_space`).
        results_dir: parent of the experiment directory (TensorBoard files
            always go there; tables and checkpoints too unless ``storage``).
        name: experiment directory name (default: space name + timestamp).
        address: a Ray cluster to join (``auto`` or ``host:port``).
        echo: where progress lines go.
        storage: where tables, trial directories and checkpoints go: a local
            path or a URI (``s3://...``, ``gs://...``); default ``results_dir``.
        shared_storage: the local ``storage`` path is on a file system every
            node mounts (see :func:`check_shared_storage`).
        stop: the Ctrl-C handling the command line installed (see :class:`StopOnInterrupt`).

    Raises:
        ClusterError: unreachable cluster, unusable storage (before any trial runs).
        StorageError: the results or the storage location filled up or turned read-only.
        SearchInterrupted: Ctrl-C.
    """
    experiment = experiment_name(space, name)
    root = storage_root(storage, results_dir)
    location = join_location(root, experiment)
    with storage_errors(location):
        return _run_search(space, results_dir, experiment, root, location, address=address, echo=echo, shared_storage=shared_storage, stop=stop)


def _run_search(
    space: Space,
    results_dir: Path,
    experiment: str,
    root: str,
    location: str,
    *,
    address: str | None,
    echo: Any,
    shared_storage: bool,
    stop: StopOnInterrupt | None,
) -> SearchOutcome:
    from ray import tune

    started = time.monotonic()
    experiment_dir = results_dir.resolve() / experiment if is_uri(root) else Path(location)
    search = space.search
    echo(
        f"neqtune: experiment {experiment}: {space.num_trials()} trials ({search.algorithm}), "
        f"{search.max_concurrent} at a time, {search.cpus_per_trial:g} CPU each; results in {location}"
    )
    start_ray(address)
    check_cluster_storage(root, shared_storage)
    gpus_per_trial = resolve_gpus(space, echo=echo)
    max_concurrent = resolve_concurrency(space, local=_local_ray(address), gpus_per_trial=gpus_per_trial, echo=echo)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    write_text(join_location(location, SPACE_FILE), yaml.safe_dump(space.to_dict(), sort_keys=False))

    grid = search.algorithm == "grid"
    param_space = {key: tune_domain(spec, grid=grid) for key, spec in search.params.items()}
    recorder = ResultRecorder(experiment_dir, experiment, space.base, searched=list(search.params), flush_every_s=search.table_flush_s, echo=echo, tables_dir=location)
    tuner = tune.Tuner(
        build_trainable(space, gpus_per_trial),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(search),  # the searcher and the scheduler carry their own metrics
            scheduler=build_scheduler(space),
            reuse_actors=search.reuse_actors,
            num_samples=search.num_samples,
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=root,
            callbacks=tune_callbacks(recorder, study_recorder(space, experiment_dir, experiment)),
            stop=build_stopper(space),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            verbose=0,
        ),
    )
    return finish_search(tuner, recorder, space, experiment_dir=experiment_dir, started=started, stop=stop)


@contextlib.contextmanager
def storage_errors(location: str) -> Iterator[None]:
    """Turn any error a full or read-only disk caused (Tune's own writes included) into a :class:`StorageError`
    that knows the experiment's ``location``."""
    try:
        yield
    except StorageError as err:
        err.location = err.location or location
        raise
    except (ClusterError, SearchInterrupted):
        raise
    except Exception as err:
        reason = storage_fault(err)
        if reason is None:
            raise
        raise StorageError(getattr(err, "filename", None) or location, reason, location=location) from err


def resumable(location: str) -> bool:
    """Whether ``location`` holds an experiment ``--resume`` can continue."""
    from ray import tune

    try:
        return bool(tune.Tuner.can_restore(location))
    except Exception:
        return False


def study_recorder(space: Space, experiment_dir: Path, experiment: str) -> StudyRecorder:
    """The callback that keeps the experiment's trials in ``optuna.db`` (see :mod:`neqtune.search.study`)."""
    search = space.search
    return StudyRecorder(experiment_dir, experiment, params=search.params, metrics=search.metrics, modes=search.modes, base=space.base)


def tune_callbacks(recorder: ResultRecorder, study: StudyRecorder) -> list[Any]:
    """The driver's Tune callbacks: our recorder, the study in ``optuna.db``, Ray's ``result.json`` log (a resume backfills from it)."""
    from ray.tune.logger import JsonLoggerCallback

    return [recorder, study, JsonLoggerCallback()]


def resume_search(
    location: str,
    *,
    results_dir: Path | None = None,
    address: str | None = None,
    echo: Any = print,
    shared_storage: bool = False,
    stop: StopOnInterrupt | None = None,
) -> SearchOutcome:
    """Continue a search whose driver died or was stopped: ``Tuner.restore`` of ``results/<experiment>`` (or a URI).

    Finished trials stay finished, unfinished ones continue from their last
    checkpoint, the Optuna searcher keeps its state (saved with the
    experiment), and the tables are reopened and backfilled so that every
    trial-epoch ends in them exactly once.

    Args:
        location: the experiment directory (local path or URI).
        results_dir: where TensorBoard files go for a URI ``location``
            (default: ``./results``).
        stop: the Ctrl-C handling the command line installed (see :class:`StopOnInterrupt`).

    Raises:
        ClusterError: ``location`` holds no experiment; unreachable cluster; unusable storage.
        StorageError: the storage location filled up or turned read-only.
        SearchInterrupted: Ctrl-C.
    """
    from ray import tune

    started = time.monotonic()
    try:
        fs, path = resolve_location(location)
    except ValueError as err:
        raise ClusterError(f"--resume {err}") from None
    location = storage_root(location, Path(path)) if fs is not None else path
    space_file = join_location(location, SPACE_FILE)
    import pyarrow.fs as pafs

    filesystem, space_path = (fs, path.rstrip("/") + f"/{SPACE_FILE}") if fs is not None else (pafs.LocalFileSystem(), space_file)
    if not tune.Tuner.can_restore(location) or filesystem.get_file_info(space_path).type != pafs.FileType.File:
        raise ClusterError(f"--resume {location}: no experiment to resume there (expected {SPACE_FILE}, tuner.pkl and experiment_state-*.json)")
    with filesystem.open_input_stream(space_path) as stream:
        text = stream.read().decode()
    try:
        space = build_space(yaml.safe_load(text), space_file)
    except ValueError as err:
        raise ClusterError(f"--resume {str(err).splitlines()[0]}") from None
    experiment = location_name(location)
    experiment_dir = Path(location) if fs is None else (results_dir or Path("results")).resolve() / experiment
    echo(f"neqtune: resuming experiment {experiment} from {location}")
    with storage_errors(location):
        start_ray(address)
        check_cluster_storage(location, shared_storage)
        recorder = ResultRecorder(experiment_dir, experiment, space.base, searched=list(space.search.params), flush_every_s=space.search.table_flush_s, echo=echo, tables_dir=location)
        added = recorder.backfill(location)
        echo(f"neqtune: {len(recorder.epochs.previous_keys())} trial-epochs in the tables, {added} recovered from the trials' result logs")
        filled = fill_missing_checkpoints(location)
        tuner = tune.Tuner.restore(location, trainable=build_trainable(space, resolve_gpus(space, echo=echo)), resume_unfinished=True, resume_errored=False)
        # The recorder saved with the experiment belongs to the dead driver; supply the callbacks again.
        internal = tuner._local_tuner  # Tuner has no public setter for the restored run config
        assert internal is not None, "resuming through Ray Client is not supported"
        study = study_recorder(space, experiment_dir, experiment)
        study.backfill(location)  # the last results of trials that ended just before the driver died
        internal.get_run_config().callbacks = tune_callbacks(recorder, study)
        budget = internal.get_run_config().stop
        if isinstance(budget, TrialEpochBudget):  # the budget counts what the dead driver's trials spent
            budget.spent = reported_epochs(location)
        try:
            return finish_search(tuner, recorder, space, experiment_dir=experiment_dir, started=started, stop=stop)
        finally:
            storage = resolve_location(location)[0] or pafs.LocalFileSystem()
            for directory in filled:  # the stand-ins served their purpose (Tune has newer checkpoints now)
                if storage.get_file_info(directory).type == pafs.FileType.Directory:
                    storage.delete_dir(directory)


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


def finish_search(
    tuner: Any, recorder: ResultRecorder, space: Space, *, experiment_dir: Path, started: float, stop: StopOnInterrupt | None = None
) -> SearchOutcome:
    """Run ``tuner`` to the end and summarise the experiment from its tables.

    Raises:
        StorageError: a write failed on a full or read-only disk (the recorder's, or a trial's checkpoint).
        SearchInterrupted: Ctrl-C stopped the trials (``stop``).
    """
    search = space.search
    experiment = recorder.experiment
    if stop is not None:
        stop.location, stop.in_fit = recorder.tables_dir, True
    try:
        results = tuner.fit()
    except Exception as err:
        if recorder.storage_error is not None:
            raise recorder.storage_error from err
        raise
    finally:
        if stop is not None:
            stop.in_fit = False
    if recorder.storage_error is not None:  # raised inside Tune's clean-up, which went on
        raise recorder.storage_error
    if stop is not None and stop.requested:
        raise SearchInterrupted(recorder.tables_dir, forced=False)
    rows = final_rows(recorder, experiment, search.metrics)
    finished = [row for row in rows if row["status"] in ("TERMINATED", "STOPPED") and _has_metrics(row, search.metrics)]
    pareto: list[dict[str, Any]] | None = None
    if search.multi_objective:
        pareto = pareto_front(finished, search.metrics, search.modes)
        write_atomic(rows_to_table(pareto, config_column_types(TrialConfig)), f"{recorder.tables_dir}/{PARETO_TABLE}")
    sign = 1 if search.modes[0] == "max" else -1
    best = max(finished, key=lambda row: sign * row[search.metrics[0]]) if finished else None
    return SearchOutcome(
        experiment_dir=experiment_dir,
        best=best,
        num_trials=len(results),
        errors=results.num_errors + recorder.invalid_trials,
        wall_time_s=time.monotonic() - started,
        pareto=pareto,
        objectives=tuple(search.metrics),
        searched=tuple(search.params),
        location=recorder.tables_dir,
    )
