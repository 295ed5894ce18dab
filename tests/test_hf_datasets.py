"""HuggingFace ``datasets`` in the same environment as neqtune: neither package shadows the other.

A throwaway virtualenv gets a plain (non-editable) install of neqtune and
then HuggingFace's ``datasets`` wheel from the package registry (both
``--no-deps``; torch, Ray and the rest come from the project's virtualenv
through a ``.pth`` line), and runs, from a directory outside the
repository, a dry run and a one-trial search. The editable install of the
project's own virtualenv is checked from another directory too, with the
HuggingFace package ahead of it on ``sys.path``. HuggingFace's package is
found by name, never imported (its own dependencies are not installed):
what broke was neqtune importing it in place of its own.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
import yaml
from search_procs import tiny_space

ROOT = Path(__file__).resolve().parent.parent
# Where the name ``datasets`` leads (found, not imported: HuggingFace's needs its own dependencies, which this test does
# not install) and where neqtune's data sets come from (imported, with their registry).
WHICH = (
    "import importlib.util, neqtune.datasets; print(importlib.util.find_spec('datasets').origin); print(neqtune.datasets.__file__); "
    "print(neqtune.datasets.dataset_names())"
)


def run(command: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def hf_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HuggingFace's ``datasets`` wheel, from the package registry (pip's cache after the first time)."""
    where = tmp_path_factory.mktemp("wheels")
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "datasets", "-d", str(where)], where)
    wheels = sorted(where.glob("datasets-*.whl"))
    assert wheels, "no HuggingFace datasets wheel came from the registry"
    return wheels[-1]


@pytest.mark.search
def test_a_plain_install_beside_huggingface_datasets_runs_a_dry_run_and_a_search(hf_wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).strip())
    (site / "project_venv.pth").write_text(sysconfig.get_path("purelib") + "\n")  # torch, Ray, Optuna, ... (not its editable neqtune)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
    run([*pip, "--no-build-isolation", str(ROOT)], tmp_path)  # neqtune, as a wheel (not editable)
    run([*pip, str(hf_wheel)], tmp_path)  # then HuggingFace's datasets: it used to overwrite neqtune's
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    hf_file, ours_file, flags = run([str(python), "-c", WHICH], elsewhere).splitlines()
    assert hf_file == str(site / "datasets" / "__init__.py") and ours_file == str(site / "neqtune" / "datasets" / "__init__.py")
    assert (site / "datasets" / "arrow_dataset.py").is_file() and "'digits'" in flags  # HuggingFace's, whole; ours, whole
    space = tiny_space(1, {"algorithm": "grid", "num_samples": 1, "params": {"training.seed": {"choice": [0]}}})
    space["experiment"] = "beside-hf"
    (elsewhere / "space.yaml").write_text(yaml.safe_dump(space))
    out = run([str(python), "-m", "neqtune", "--space", "space.yaml", "--dry-run"], elsewhere)
    assert "digits" in out and "Traceback" not in out
    run([str(python), "-m", "neqtune", "--space", "space.yaml", "--results", "results", "--name", "beside-hf"], elsewhere, timeout=600)
    epochs = pd.read_parquet(elsewhere / "results" / "beside-hf" / "epochs.parquet")
    assert epochs.epoch.tolist() == [1] and epochs.val_top1.notna().all()


def test_the_editable_install_loses_nothing_to_huggingface_datasets_from_another_directory(hf_wheel: Path, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(hf), str(hf_wheel)], tmp_path)
    env = {"PYTHONPATH": str(hf), "PATH": "/usr/bin:/bin"}  # HuggingFace's package first on sys.path
    code = (
        "from neqtune.trainables.config import TrialConfig; "
        "c = TrialConfig.from_dict({'data': {'name': 'digits'}, 'model': {'name': 'mbv2-w0.35'}}); print(c.data.name); " + WHICH
    )
    name, hf_file, ours_file, _ = run([sys.executable, "-c", code], tmp_path, env=env).splitlines()
    assert name == "digits" and hf_file == str(hf / "datasets" / "__init__.py") and ours_file == str(ROOT / "datasets" / "__init__.py")
