"""Where results go by default, and the one place they must not go: a Ray job's package cache.

``ray job submit --working-dir . -- python run_search.py ...`` runs the command
in Ray's copy of the uploaded directory,
``<ray temp dir>/.../runtime_resources/working_dir_files/_ray_pkg_<hash>/``.
Ray may delete that copy, and every edit of the tree uploads a new one, so a
relative ``results/`` there scatters experiments over directories nobody
looks in. neqtune's rule (docs/cluster.md):

- without ``--results``, results go to ``$NEQ_RESULTS``, else ``./results``;
  inside a Ray job's package, to ``$NEQ_RESULTS``, else ``~/neqtune-results``
  on the node that runs the driver (the head, for a job), and the command
  says so;
- a ``--results``, local ``--storage`` or ``--resume`` path that lies inside
  the package is refused (one line, exit code 2).

Only the standard library is imported here: the check runs before torch and Ray.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

RESULTS_ENV = "NEQ_RESULTS"
JOB_RESULTS_DEFAULT = Path("~/neqtune-results")
RAY_PACKAGE_PREFIX = "_ray_pkg_"  # Ray's name of an unpacked working_dir / py_modules package
RAY_PACKAGE_PARENT = "working_dir_files"


def ray_package_dir(path: Path) -> Path | None:
    """The Ray working-directory package that ``path`` lies in (made absolute), or None."""
    absolute = path if path.is_absolute() else Path.cwd() / path
    for parent in (absolute, *absolute.parents):
        if parent.name.startswith(RAY_PACKAGE_PREFIX) and parent.parent.name == RAY_PACKAGE_PARENT:
            return parent
    return None


def default_results_dir(env: Mapping[str, str] | None = None) -> tuple[Path, str | None]:
    """``--results`` when it is not given, and a line to print when it is not ``./results``.

    ``$NEQ_RESULTS`` if set; else ``./results``, unless that lies inside a
    Ray job's package, where it is ``~/neqtune-results`` (absolute).
    """
    env = os.environ if env is None else env
    if env.get(RESULTS_ENV):
        return Path(env[RESULTS_ENV]).expanduser().absolute(), None
    package = ray_package_dir(Path("results"))
    if package is None:
        return Path("results"), None
    durable = JOB_RESULTS_DEFAULT.expanduser().absolute()
    note = (
        f"neqtune: this runs inside a Ray job's working directory ({package}), Ray's package cache, which Ray may delete: "
        f"results go to {durable} on this node instead (set --results, --storage or ${RESULTS_ENV} to choose)"
    )
    return durable, note


def outside_ray_package(flag: str, value: str | Path) -> str | None:
    """None if ``value`` (a local path or a URI) may hold results; else the one-line reason it may not."""
    if "://" in str(value):
        return None
    package = ray_package_dir(Path(value).expanduser())
    if package is None:
        return None
    return (
        f"{flag} {value}: lies inside the Ray job's working directory {package}, Ray's package cache (Ray may delete it, "
        "and each upload makes a new one); give an absolute path outside it, a URI (--storage s3://bucket/path), or leave "
        f"--results out (${RESULTS_ENV}, else ~/neqtune-results)"
    )
