"""The command line answers help and argument errors without torch or Ray, and every entry point runs.

``run_search.py``, ``python -m search`` and ``python -m neqtune.search.cli`` are the same command; a Python without
neqtune's dependencies (the system ``python`` of a Ray head started outside the virtualenv) is told so in one line.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ray", "optuna", "pyarrow", "neqtune.trainables", "neqtune.datasets", "neqtune.search.space", "neqtune.search.experiment")


def imported_after(argv: list[str]) -> tuple[int, list[str], str]:
    """Run ``neqtune.search.cli.main(argv)`` in a fresh interpreter: its exit code, the heavy modules it imported, its stderr."""
    code = (
        "import sys\n"
        "from neqtune.search.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as stop:\n"
        "    rc = stop.code\n"
        f"print(rc, ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    rc, _, modules = done.stdout.strip().splitlines()[-1].partition(" ")
    return int(rc), [m for m in modules.split(",") if m], done.stderr


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--help"], 0, ""),
        (["--max-concurrent", "lots"], 2, "expected 'auto' or a number of trials, got 'lots'"),
        (["--num-samples", "x"], 2, "invalid int value: 'x'"),
        (["--set", "training.lr"], 2, "expected KEY=VALUE, got 'training.lr'"),
        (["--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
    ],
)
def test_help_and_argument_errors_import_neither_torch_nor_ray(argv: list[str], code: int, message: str) -> None:
    rc, heavy, stderr = imported_after(argv)
    assert rc == code, stderr
    assert heavy == [], f"{argv} imported {heavy}"
    assert message in stderr


@pytest.mark.parametrize("module", ["neqtune", "neqtune.search", "neqtune.search.cli"])
def test_module_entry_points_are_the_command(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module} [-h] [--space SPACE]")
    assert "--dry-run" in done.stdout
    bad = subprocess.run([sys.executable, "-m", module, "--max-failures", "two"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "argument --max-failures: invalid int value: 'two'" in bad.stderr


def test_the_console_script_is_the_command() -> None:
    script = Path(sys.executable).with_name("neqtune")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: neqtune [-h] [--space SPACE]")


def test_python_m_neqtune_runs_a_dry_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "neqtune", "--dry-run", "--set", "data.image_size=16"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("spaces/digits.yaml: valid; 12 trials (optuna)")
    assert "model mbv2-w0.35 (torchvision" in done.stdout


def test_a_python_without_the_dependencies_is_named_in_one_line(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)  # the standard library only, like a system python without neqtune's packages
    python = bare / "bin" / "python"
    done = subprocess.run(
        [str(python), str(ROOT / "run_search.py"), "--space", "spaces/digits.yaml"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {python} cannot import yaml, optuna, ray, torch")
    assert "virtualenv" in lines[0] and "Traceback" not in done.stderr


# --- where results go inside a Ray job ---------------------------------------------------------------------------------
def ray_job_dir(tmp_path: Path) -> Path:
    """A directory laid out like Ray's copy of a job's --working-dir."""
    package = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    package.mkdir(parents=True)
    return package


def test_results_inside_a_ray_jobs_package_go_to_a_durable_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neqtune.search.locations import default_results_dir, ray_package_dir

    package = ray_job_dir(tmp_path)
    assert ray_package_dir(package / "results" / "exp") == package and ray_package_dir(tmp_path / "results") is None
    monkeypatch.delenv("NEQ_RESULTS", raising=False)
    assert default_results_dir() == (Path("results"), None)  # outside a job: ./results, as always
    monkeypatch.chdir(package)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    results, note = default_results_dir()
    assert results == tmp_path / "home" / "neqtune-results"
    assert note is not None and str(package) in note and f"results go to {results}" in note and "\n" not in note
    monkeypatch.setenv("NEQ_RESULTS", str(tmp_path / "shared"))
    assert default_results_dir() == (tmp_path / "shared", None)


@pytest.mark.parametrize("flag", ["--results", "--storage", "--resume"])
def test_a_path_inside_a_ray_jobs_package_is_refused(flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = ray_job_dir(tmp_path)
    monkeypatch.chdir(package)
    done = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), flag, "results/exp" if flag == "--resume" else "results"],
        capture_output=True, text=True, cwd=package, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} results")
    assert f"lies inside the Ray job's working directory {package}, Ray's package cache" in lines[0]
    assert not (package / "results").exists()
    absolute = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), "--storage", "s3://bucket/x", "--help"], capture_output=True, text=True, cwd=package
    )
    assert absolute.returncode == 0  # a URI is never refused
