"""Where an experiment's tables, trial directories and checkpoints live, and what goes wrong there.

Owns the storage root (a local path or a URI), small text files written there, the rule for
storage a multi-node cluster can share, the translation of a full or read-only disk into
:class:`~neqtune.search.tables.StorageError`, and whether a location holds an experiment to resume.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from neqtune.search.interrupts import SearchInterrupted
from neqtune.search.ray_cluster import ClusterError
from neqtune.search.tables import StorageError, is_uri, resolve_location, storage_fault


class _StorageFaultFilter(logging.Filter):
    """Drops Tune's traceback of a trial that failed on a full or read-only disk: the search stops with one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f"\n{record.exc_info[1]}"
        return storage_fault(text) is None


logging.getLogger("ray.tune.execution.tune_controller").addFilter(_StorageFaultFilter())


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
