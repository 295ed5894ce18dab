"""The benchmarks' shared report pieces: Markdown tables, number cells, the files written side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from benchmarks.report import format_cell, mean_std, number, table_lines, verdict, write_markdown_and_json, write_tables


def test_a_table_has_its_header_separator_and_rows() -> None:
    assert table_lines(["a", "b"], [(1, "x"), ("2.50", "")]) == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.50 |  |"]
    assert table_lines(["name", "rows"], [], right_aligned=["rows"]) == ["| name | rows |", "|---|---:|"]
    assert table_lines(["target", "measured", ""], [("t", "1.00", "met")])[0] == "| target | measured | |"  # a column without a name


def test_numbers_and_words() -> None:
    assert [number(v, ".2f") for v in (1.234, math.nan, None)] == ["1.23", "-", "-"]
    assert number(0.481) == "0.481" and number(1.0) == "1.0"
    assert [format_cell(v) for v in (None, math.nan, True, False, 0.0, 3.2e-15, 12.3456, 365480.2, "a|b")] == [
        "-", "-", "yes", "NO", "0", "3.2e-15", "12.3", "365,480", "a\\|b",
    ]  # fmt: skip
    assert mean_std([90.0, 92.0, math.nan]) == "91.0 ± 1.4" and mean_std([88.0]) == "88.0 ± 0.0" and mean_std([math.nan]) == "-"
    assert (verdict(True), verdict(False)) == ("met", "missed")


def test_files_are_written_side_by_side(tmp_path: Path) -> None:
    table = pd.DataFrame({"a": [1, 2]})
    write_tables(tmp_path / "out", "bench", table, "# bench\n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.md", "bench.parquet"]  # no temporary file left
    assert pd.read_parquet(tmp_path / "out" / "bench.parquet").equals(table)
    figures = write_markdown_and_json(tmp_path / "new" / "check.md", "# check\n", {"x": [1, None]})
    assert figures == tmp_path / "new" / "check.json" and json.loads(figures.read_text()) == {"x": [1, None]}
    assert (tmp_path / "new" / "check.md").read_text() == "# check\n"
