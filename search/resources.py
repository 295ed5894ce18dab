"""What a search's trials get: GPUs per trial and trials at once, resolved on the running cluster.

Owns the coarse estimate of one trial's memory, the ``auto`` rules for ``search.gpus_per_trial``
and ``search.max_concurrent``, and their checks against the cluster's nodes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from neqtune.search.dry_run import choices
from neqtune.search.ray_cluster import ClusterError
from neqtune.search.space import Space

# One trial's resident memory, measured here (ru_maxrss of one mbv2-w0.35 digits epoch in a
# process that imported torch and ray: 1.23-1.29 GiB at 16-32 px; resnet18: 1.35 GiB).
TRIAL_BASE_MEMORY_BYTES = 1_400 * 2**20
# Per model parameter: weights, gradients, optimizer state, the best-epoch copy and the
# checkpoint being written (float32 each).
BYTES_PER_PARAMETER = 6 * 4
# Per input pixel of a training batch: activations kept for the backward pass (an upper
# estimate for the registered conv nets, float32).
ACTIVATION_BYTES_PER_PIXEL = 200 * 4


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
