"""Bad input on the command line: one clear line, exit code 2, answered fast, nothing written or damaged.

Space-file cases already in ``test_space.py`` (malformed YAML, unknown keys, wrong types, non-positive
lr, ratios, empty choice lists, unknown names, SU schemes that do not fit) are not repeated here.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from neqtune.search.cli import main
from neqtune.search.ray_cluster import ClusterError, probe_address
from neqtune.search.resources import auto_concurrency, estimate_trial_memory
from neqtune.search.space import DEFAULT_SPACE, load_space
from neqtune.search.storage import check_shared_storage


def space_file(tmp_path: Path, **search: Any) -> Path:
    space = yaml.safe_load(DEFAULT_SPACE.read_text())
    space["search"].update(search)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- space files ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"algorithm": "grid", "params": {}}, "search.params: the grid is empty"),
        ({"max_failures": -1}, "search.max_failures: must be >= 0, got -1"),
        ({"max_concurrent": 0}, "search.max_concurrent: must be >= 1 (or auto), got 0"),
        ({"table_flush_s": 0}, "search.table_flush_s: must be > 0 seconds, got 0"),
        ({"max_concurrent": "many"}, "search.max_concurrent: expected an integer or one of 'auto', got 'many'"),
    ],
)
def test_bad_search_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], search: dict[str, Any], message: str) -> None:
    path = space_file(tmp_path, **search)
    assert main(["--space", str(path), "--results", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys).startswith(f"error: {path}: {message}")
    assert not (tmp_path / "out").exists()


def test_a_class_count_that_does_not_match_the_model_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--set", "model.num_classes=2", "--results", str(tmp_path / "out")]) == 2
    # neither the head nor the data set is searched: no combination is named
    assert one_error_line(capsys) == "error: spaces/digits.yaml: model.num_classes: the model head has 2 classes but data set 'digits' has 10"
    assert not (tmp_path / "out").exists()
    assert load_space(None, overrides=[("model.num_classes", 10)]).base["model"]["num_classes"] == 10


def vit_space(tmp_path: Path, image_size: int, **search_params: Any) -> Path:
    """A full update of the small ViT on digits (the model's shape in the model keys)."""
    space = {
        "experiment": "vit",
        "data": {"name": "digits", "image_size": image_size, "batch_size": 16},
        "model": {"name": "vit", "patch_size": 4, "depth": 1, "width": 16, "heads": 2},
        "training": {"epochs": 1},
        "budget": {"policy": "full"},
        "search": {"algorithm": "grid", "num_samples": 1, "params": search_params or {"training.seed": {"choice": [0]}}},
    }
    path = tmp_path / "vit.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.parametrize("dry", [True, False])
def test_an_image_side_that_is_no_multiple_of_the_vit_patch(tmp_path: Path, capsys: pytest.CaptureFixture[str], dry: bool) -> None:
    path, out = vit_space(tmp_path, 30), tmp_path / "out"
    assert main(["--space", str(path), "--results", str(out), *(["--dry-run"] if dry else [])]) == 2
    message = "data.image_size: model vit takes image sides that are multiples of its patch size 4, not 30 (use 28 or 32)"
    assert one_error_line(capsys) == f"error: {path}: {message}"
    assert not out.exists()
    # a searched patch size: only the combination that does not divide the side is refused, and named
    path = vit_space(tmp_path, 36, **{"model.patch_size": {"choice": [4, 6, 8]}})
    assert main(["--space", str(path), "--results", str(out)]) == 2
    assert one_error_line(capsys).endswith("its patch size 8, not 36 (use 32 or 40) (with model.patch_size=8)")
    assert not out.exists()
    assert main(["--space", str(vit_space(tmp_path, 32)), "--dry-run"]) == 0


def test_auto_concurrency_is_a_valid_space_value(tmp_path: Path) -> None:
    assert load_space(space_file(tmp_path, max_concurrent="auto")).search.max_concurrent == "auto"
    assert load_space(None).search.max_concurrent == 2  # the digits space sets it


# --- the command line ---------------------------------------------------------------------------------------------------
def test_resume_of_a_directory_without_an_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "results" / "not-an-experiment"
    directory.mkdir(parents=True)
    (directory / "epochs.parquet").write_bytes(b"not touched")
    (directory / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert main(["--resume", str(directory)]) == 2
    assert one_error_line(capsys).startswith(f"error: --resume {directory}: no experiment to resume there")
    assert snapshot(tmp_path) == before
    assert main(["--resume", str(tmp_path / "missing")]) == 2
    assert one_error_line(capsys).startswith(f"error: --resume {tmp_path / 'missing'}: no experiment to resume there")
    assert not (tmp_path / "missing").exists()


def test_an_unreachable_address_is_answered_within_30_s(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    assert main(["--address", address, "--results", str(tmp_path / "out")]) == 2
    assert time.monotonic() - started < 30
    assert one_error_line(capsys) == f"error: --address {address}: no Ray cluster reachable there (Connection refused)"
    assert not (tmp_path / "out").exists()


@pytest.mark.search
def test_an_unreachable_address_is_refused_where_the_process_already_runs_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A process that already runs Ray (a notebook, an earlier search in it) still gets the address checked."""
    import ray

    from neqtune.search.ray_cluster import start_ray

    start_ray(None)
    try:
        address = f"127.0.0.1:{free_port()}"
        assert main(["--address", address, "--results", str(tmp_path / "out")]) == 2
        assert one_error_line(capsys) == f"error: --address {address}: no Ray cluster reachable there (Connection refused)"
        assert not (tmp_path / "out").exists()
    finally:
        ray.shutdown()


def test_an_address_that_never_answers_is_given_up_after_the_probe_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # a full backlog drops further connection attempts, like a firewall
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", listener.getsockname()[1]))
            time.sleep(0.2)
            started = time.monotonic()
            with pytest.raises(ClusterError) as caught:
                probe_address(address, timeout_s=0.5)
            assert time.monotonic() - started < 5
        finally:
            for filler in fillers:
                filler.close()
    assert str(caught.value) == f"--address {address}: no Ray cluster reachable there (timed out)"


def test_a_malformed_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--address", "head-node", "--results", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys) == "error: --address head-node: expected 'auto' or HOST:PORT of a Ray head (GCS port, 6379 by default)"
    assert not (tmp_path / "out").exists()


def test_a_storage_uri_pyarrow_cannot_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--storage", "ftp2://bucket/runs", "--results", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys).startswith("error: --storage ftp2://bucket/runs: not a storage URI pyarrow can open")
    assert not (tmp_path / "out").exists()


def test_bad_flag_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--max-concurrent", "lots"])
    assert caught.value.code == 2
    assert "expected 'auto' or a number of trials, got 'lots'" in capsys.readouterr().err


# --- the storage rule and the default concurrency -------------------------------------------------------------------------
def test_multi_node_storage_rule() -> None:
    one_host = ["10.0.0.1", "10.0.0.1"]
    check_shared_storage("/data/results", node_ips=one_host, driver_ip="10.0.0.1", shared=False)  # every node on this host
    check_shared_storage("s3://bucket/results", node_ips=["10.0.0.1", "10.0.0.2"], driver_ip="10.0.0.1", shared=False)
    check_shared_storage("/mnt/nfs/results", node_ips=["10.0.0.1", "10.0.0.2"], driver_ip="10.0.0.1", shared=True)
    with pytest.raises(ClusterError) as caught:
        check_shared_storage("/data/results", node_ips=["10.0.0.1", "10.0.0.3", "10.0.0.2"], driver_ip="10.0.0.1", shared=False)
    assert str(caught.value).startswith("--storage /data/results: a local path is not shared with the cluster's nodes on 10.0.0.2, 10.0.0.3; ")
    assert "--shared-storage" in str(caught.value) and "\n" not in str(caught.value)


def test_auto_concurrency_follows_cpus_and_memory() -> None:
    gib = 2**30
    assert auto_concurrency(cpus=16, cpus_per_trial=1, memory_bytes=64 * gib, trial_memory_bytes=2 * gib, num_trials=100) == 16
    assert auto_concurrency(cpus=16, cpus_per_trial=1, memory_bytes=10 * gib, trial_memory_bytes=2 * gib, num_trials=100) == 5
    assert auto_concurrency(cpus=16, cpus_per_trial=4, memory_bytes=64 * gib, trial_memory_bytes=2 * gib, num_trials=100) == 4
    assert auto_concurrency(cpus=16, cpus_per_trial=1, memory_bytes=64 * gib, trial_memory_bytes=2 * gib, num_trials=3) == 3
    assert auto_concurrency(cpus=2, cpus_per_trial=1, memory_bytes=0.5 * gib, trial_memory_bytes=2 * gib, num_trials=8) == 1


def test_trial_memory_estimate_grows_with_the_model_and_the_batch() -> None:
    small = load_space(None, overrides=[("data.image_size", 16)])
    big_images = load_space(None, overrides=[("data.image_size", 128), ("data.batch_size", 64)])
    resnet = load_space(
        None, overrides=[("model.name", "resnet18"), ("budget.scheme", None), ("budget.ratio", 0.2)], search_overrides={"params": {}}
    )
    assert 1.3 * 2**30 < estimate_trial_memory(small) < 1.5 * 2**30
    assert estimate_trial_memory(big_images) - estimate_trial_memory(small) == 800 * (64 * 128**2 - 32 * 16**2)  # bytes per batch pixel
    assert estimate_trial_memory(resnet) > estimate_trial_memory(small) + 200 * 2**20
