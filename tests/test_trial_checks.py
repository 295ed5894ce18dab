"""The one check of a trial: a trial built from a config refuses it with the line the dry run gives for its space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from neqtune.search.dry_run import dry_run
from neqtune.trainables.config import ConfigError, TrialConfig
from neqtune.trainables.trainer import BudgetedRun
from neqtune.trainables.trial_checks import CombinationError, trial_problems

DIGITS = {"name": "digits", "image_size": 32, "batch_size": 32, "velocity_images": 10}

# Trial configs valid section by section that only a check across sections refuses.
CROSS_SECTION = {
    "su without a scheme": {"data": DIGITS, "model": {"name": "mbv2-w0.35"}, "budget": {"policy": "su", "ratio": 0.1}},
    "a side the ViT's patches do not tile": {
        "data": {**DIGITS, "image_size": 30},
        "model": {"name": "vit", "patch_size": 4, "depth": 1, "width": 16, "heads": 2},
        "budget": {"policy": "random", "ratio": 0.1},
    },
    "a memory budget below the cheapest unit": {
        "data": DIGITS,
        "model": {"name": "mbv2-w0.35"},
        "budget": {"policy": "random", "unit": "input_channel", "memory": 1},
    },
}


def dry_run_problems(tmp_path: Path, trial: dict[str, Any]) -> list[str]:
    """The problem lines of a dry run of a space that runs ``trial`` as it is."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"experiment": "one", **trial, "search": {"algorithm": "optuna", "num_samples": 1}}))
    _, problems = dry_run(space)
    return [str(problem).removeprefix(f"{space}: ") for problem in problems]


@pytest.mark.parametrize("trial", CROSS_SECTION.values(), ids=list(CROSS_SECTION))
def test_a_trial_refuses_a_config_with_the_dry_runs_line(tmp_path: Path, trial: dict[str, Any]) -> None:
    lines = dry_run_problems(tmp_path, trial)
    with pytest.raises(ConfigError) as refused:
        BudgetedRun(TrialConfig.from_dict(trial))
    assert len(lines) == 1, lines
    assert lines == [str(refused.value)]
    assert [str(problem) for problem in getattr(refused.value, "problems", [refused.value])] == lines


def test_a_trial_leaves_the_data_on_disk_to_its_loading_which_refuses_it_with_the_same_line(tmp_path: Path) -> None:
    missing = {"data": {**DIGITS, "name": "image-folder", "root": str(tmp_path / "nowhere")}, "budget": {"policy": "full"}}
    config = TrialConfig.from_dict(missing)
    found = trial_problems(config)
    assert [problem.key for problem in found] == ["data.root"] and isinstance(found[0], CombinationError)
    assert found[0].depends_on == ("data",)
    assert trial_problems(config, data_read_by_caller=True) == []  # an image folder's check reads every header: not in a trial
    with pytest.raises(ConfigError) as refused:
        BudgetedRun(config)
    assert str(refused.value) == str(found[0]) == dry_run_problems(tmp_path, missing)[0]
