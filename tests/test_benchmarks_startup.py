"""The start-up benchmark runs end to end at toy sizes and writes a complete table (no timing assertions)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import startup


@pytest.mark.benchmark
def test_startup_quick_run_times_every_start_and_states_every_target(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert startup.main(["--quick", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    table = pd.read_parquet(out / "startup_quick.parquet")
    assert list(table.columns) == ["kind", "files", "cache", "node", "startup_s", "build_s", "repeats"]
    starts = table[table.kind == "startup"]
    expected = {(files, cache, node) for files in startup.QUICK_SIZES for cache in ("none", "decoded") for node in ("cold", "warm")}
    assert set(zip(starts.files, starts.cache, starts.node, strict=True)) == expected and len(starts) == len(expected)
    assert all(math.isfinite(v) and v > 0 for v in [*starts.startup_s, *starts.build_s])
    assert (starts.build_s <= starts.startup_s).all()
    dry = table[table.kind == "dry_run"]
    assert list(dry.files) == [20] and math.isfinite(float(dry.startup_s.iloc[0]))
    report = (out / "startup_quick.md").read_text()
    verdicts = [line for line in report.splitlines() if line.endswith("| met |") or line.endswith("| missed |")]
    assert len(verdicts) == 4, report
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["folder-120", "folder-240", "space.yaml"]  # node caches removed


def test_a_too_small_folder_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        startup.main(["--sizes", "50"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("python -m benchmarks.startup: error: --sizes must be above 100")
