"""TraDy's SwinT spaces dry-run clean: their budgets in elements need nn.Linear as a budgeted layer kind (issue 21).

Not committed on the `vit` branch: with Conv2d-only costs swin_t's whole network is its patch embedding (53,760
elements at 128 px), below three of the four budgets. With the Linear cost model the total is TraDy's 31,889,952.
"""

from __future__ import annotations

import pytest
from test_trady_swint_spaces import BUDGETS, SPACES, offline  # noqa: F401  (the fixture)

from neqtune.search.cli import main
from neqtune.search.space import load_space


@pytest.mark.parametrize("data", ["c10", "vww"])
def test_the_budgeted_spaces_dry_run_clean_on_fixture_data(data: str, offline: None, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    path = SPACES / f"{data}_swin_t.yaml"
    assert main(["--space", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: valid; {load_space(path).grid_size()} trials (grid)") and load_space(path).grid_size() == 36
    for budget, share in zip(BUDGETS, ("0.09", "0.35", "1.99", "8.68"), strict=True):
        assert f"unit input_channel, memory {budget} at 128 px: memory budget {budget:,} elements per image ({share}% of 31,889,952;" in out

