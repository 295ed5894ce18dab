"""GPUs in the search: fractional and automatic gpus_per_trial, GPU slots in max_concurrent auto, bad values refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from search_procs import tiny_space

from neqtune.search.experiment import run_search
from neqtune.search.ray_cluster import ClusterError
from neqtune.search.resources import TRIALS_PER_GPU, auto_concurrency, auto_gpus_per_trial, resolve_gpus
from neqtune.search.space import build_space


def test_auto_shares_a_gpu_between_small_models_and_gives_large_ones_their_own() -> None:
    assert auto_gpus_per_trial(cluster_gpus=0, model_params=400_000) == 0.0  # a CPU cluster: the trials train on CPU
    assert auto_gpus_per_trial(cluster_gpus=8, model_params=400_000) == 1 / TRIALS_PER_GPU == 0.25  # mbv2-w0.35
    assert auto_gpus_per_trial(cluster_gpus=1, model_params=3_500_000) == 0.25  # mbv2
    assert auto_gpus_per_trial(cluster_gpus=1, model_params=11_700_000) == 1.0  # resnet18


def test_max_concurrent_auto_counts_gpu_slots() -> None:
    common = {"cpus": 64.0, "cpus_per_trial": 1.0, "memory_bytes": 2.0**40, "trial_memory_bytes": 2**30, "num_trials": 100}
    assert auto_concurrency(**common) == 64  # type: ignore[arg-type]
    assert auto_concurrency(**common, gpus=2.0, gpus_per_trial=0.25) == 8  # type: ignore[arg-type]
    assert auto_concurrency(**common, gpus=3.0, gpus_per_trial=1 / 3) == 9  # type: ignore[arg-type]  # no 8.999 floor
    assert auto_concurrency(**{**common, "cpus": 4.0}, gpus=8.0, gpus_per_trial=0.25) == 4  # type: ignore[arg-type]  # CPUs bound


@pytest.fixture
def ray_with_one_gpu() -> object:
    """A local Ray instance that advertises one GPU (Ray schedules by the resource; the trials find no CUDA and train on CPU)."""
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.search
def test_four_small_trials_share_one_gpu_in_a_real_search(ray_with_one_gpu: object, tmp_path: Path) -> None:
    """gpus_per_trial auto on a one-GPU cluster: 0.25 each, so Tune runs four at once (as the CPUs allow: 0.5 each)."""
    raw = tiny_space(1, {"num_samples": 4, "max_concurrent": "auto", "cpus_per_trial": 0.5, "gpus_per_trial": "auto"})
    raw["search"]["params"] = {"training.lr": {"loguniform": [0.01, 0.1]}}
    space = build_space(raw, "gpus.yaml")
    lines: list[str] = []
    outcome = run_search(space, results_dir=tmp_path, name="gpus", echo=lines.append)
    assert "neqtune: gpus_per_trial auto = 0.25 (4 trials per GPU; 1 GPUs in the cluster, 1 nodes)" in lines
    assert any(line.startswith("neqtune: max_concurrent auto = 4 (CPUs 2 / 0.5 per trial; GPUs 1 / 0.25 per trial;") for line in lines), lines
    assert outcome.num_trials == 4 and outcome.errors == 0
    from ray.tune import ExperimentAnalysis

    resources = {str(t.placement_group_factory.required_resources.get("GPU")) for t in ExperimentAnalysis(str(tmp_path / "gpus")).trials}
    assert resources == {"0.25"}


@pytest.mark.search
def test_more_gpus_per_trial_than_a_node_has_is_refused_before_anything_is_written(ray_with_one_gpu: object, tmp_path: Path) -> None:
    space = build_space(tiny_space(1, {"gpus_per_trial": 2}), "gpus.yaml")
    with pytest.raises(ClusterError, match=r"gpus\.yaml: search\.gpus_per_trial: 2 GPUs per trial, but no node of the cluster has that many \(most: 1\)"):
        run_search(space, results_dir=tmp_path, name="gpus", echo=lambda line: None)
    assert not (tmp_path / "gpus").exists()


@pytest.mark.search
def test_fp16_trials_without_a_gpu_are_refused(tmp_path: Path) -> None:
    import ray

    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        raw = tiny_space(1, {"gpus_per_trial": "auto"})
        raw["training"]["precision"] = "fp16"
        with pytest.raises(ClusterError, match=r"training\.precision: fp16 needs a CUDA device, but the trials get no GPU"):
            resolve_gpus(build_space(raw, "gpus.yaml"), echo=lambda line: None)
    finally:
        ray.shutdown()
