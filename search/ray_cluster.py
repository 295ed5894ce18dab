"""Joining a Ray cluster or starting Ray on this machine, and the one-line error when that fails.

Owns :class:`ClusterError` (a cluster, storage or resume problem found before any trial runs),
the address probe and :func:`start_ray`; the local instance's directory and watchdog are
:mod:`neqtune.search.local_ray`'s.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from neqtune.search.local_ray import LocalRay, start_local_ray

PROBE_TIMEOUT_S = 5.0


class ClusterError(ValueError):
    """A cluster, storage or resume problem found before any trial runs: one line, exit code 2."""


def starts_local_ray(address: str | None) -> bool:
    """Whether a search given ``address`` starts Ray on this machine (no ``--address``, no ``RAY_ADDRESS``)."""
    return address is None and "RAY_ADDRESS" not in os.environ


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
    if address is not None:  # first: an unreachable address is refused even where this process already runs Ray
        probe_address(address)
    if ray.is_initialized():
        return
    # Trials report through Tune, and failures land in their error files and the
    # trials table; forwarding worker logs would only repeat Ray's INFO lines.
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False, "log_to_driver": False}
    if starts_local_ray(address):
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
