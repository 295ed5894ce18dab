"""The GPU check: one line and nothing written without CUDA; its report, guards and comparisons on real inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.gpu_check import cli
from benchmarks.gpu_check.engine import TOLERANCE, compare_gradients, mixed_masks, updated_elements
from benchmarks.gpu_check.report import markdown_table, render_markdown, write_report
from benchmarks.gpu_check.search import search_cpus_per_trial, trials_per_hour
from benchmarks.gpu_check.section import QUICK, CheckContext, Section, SectionOutput, SectionResult, Table, ratio, run_checks
from benchmarks.report import format_cell
from neqtune.trainables.budget.units import conv_layers
from neqtune.trainables.config import ModelConfig
from neqtune.trainables.models.registry import build_model
from neqtune.trainables.update.engine import parameter_masks
from neqtune.trainables.update.optim import AxisMask, UpdateMask


def test_without_cuda_it_prints_one_line_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "report" / "gpu_check.md"
    assert cli.main(["--out", str(out), "--sections", "engine", "search"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]
    assert not out.exists() and not out.with_suffix(".json").exists() and not (tmp_path / "report").exists()


def test_help_needs_no_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--sections" in text and "--quick" in text and "--out" in text


def test_default_report_names_and_a_folder_refused(tmp_path: Path) -> None:
    assert cli.parse_args([]).out == Path("docs/benchmarks/gpu_check.md")
    assert cli.parse_args(["--quick"]).out == Path("docs/benchmarks/gpu_check_quick.md")
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--out", str(tmp_path)])
    assert exit_info.value.code == 2


def test_throughput_arithmetic() -> None:
    assert trials_per_hour(8, 120.0) == 240.0
    assert trials_per_hour(4, 3600.0) == 4.0
    assert math.isnan(trials_per_hour(8, 0.0))
    assert ratio(3.0, 2.0) == 1.5 and math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(1.0, math.nan))
    assert [search_cpus_per_trial(cpus) for cpus in (1, 2, 4, 7, 8, 16, 64)] == [1, 1, 1, 1, 2, 2, 2]


def test_cells_and_tables() -> None:
    cells = [None, math.nan, True, False, 0.0, 3.2e-15, 12.3456, 0.8531, 365480.2, 7, "a|b"]
    assert [format_cell(v) for v in cells] == ["-", "-", "yes", "NO", "0", "3.2e-15", "12.3", "0.853", "365,480", "7", "a\\|b"]
    table = Table("steps", ["path", "ms per step"], [{"path": "full", "ms per step": 8.04}, {"path": "engine"}])
    assert markdown_table(table) == ["**steps**", "", "| path | ms per step |", "|---|---|", "| full | 8.04 |", "| engine | - |"]


def results_with_a_failure() -> list[SectionResult]:
    measured = SectionOutput([Table("step", ["path", "images/s"], [{"path": "full", "images/s": 4012.5}])], notes=["a note"])
    return [
        SectionResult("update_step", "The update step", "Times the paths.", "MEASURED", 12.25, measured),
        SectionResult(
            "search", "Trials sharing a GPU", "A real search.", "FAILED", 3.0, SectionOutput(), error="RuntimeError: no GPU for Ray\n"
        ),
    ]


def test_the_report_shows_every_section_its_status_and_errors() -> None:
    text = render_markdown({"GPU": "NVIDIA H200, 139.8 GiB", "total wall time": "15.3 s"}, results_with_a_failure())
    assert text.startswith("# GPU check\n\n- GPU: NVIDIA H200, 139.8 GiB\n- total wall time: 15.3 s\n")
    assert "| The update step | MEASURED | 12.2 |" in text and "| Trials sharing a GPU | FAILED | 3.0 |" in text
    assert "## Trials sharing a GPU: FAILED (3.0 s)" in text and "```\nRuntimeError: no GPU for Ray\n```" in text
    assert "| full | 4,012 |" in text and "- a note" in text


def test_the_json_beside_the_report_holds_the_raw_figures(tmp_path: Path) -> None:
    results = results_with_a_failure()
    results[0].output.tables[0].rows.append({"path": "bound", "images/s": math.nan})
    out = tmp_path / "new" / "gpu_check.md"
    figures_path = write_report(out, {"GPU": "test"}, results)
    assert figures_path == tmp_path / "new" / "gpu_check.json"
    figures = json.loads(figures_path.read_text())
    rows = figures["sections"][0]["output"]["tables"][0]["rows"]
    assert rows == [{"path": "full", "images/s": 4012.5}, {"path": "bound", "images/s": None}]  # raw, NaN as null
    assert figures["sections"][1]["status"] == "FAILED" and "no GPU for Ray" in figures["sections"][1]["error"]
    assert out.read_text().startswith("# GPU check") and sorted(p.name for p in out.parent.iterdir()) == ["gpu_check.json", "gpu_check.md"]


def test_a_failing_section_is_reported_and_the_others_still_run() -> None:
    ran: list[str] = []

    def raises(context: CheckContext) -> SectionOutput:
        ran.append("raises")
        raise RuntimeError("CUDA error: an illegal memory access")

    def misses(context: CheckContext) -> SectionOutput:
        ran.append("misses")
        return SectionOutput(failures=["resnet18 random/neuron: updated |Δ| 3.00e-07"])

    def measures(context: CheckContext) -> SectionOutput:
        ran.append("measures")
        return SectionOutput([Table("t", ["a"], [{"a": 1}])])

    sections = {
        "raises": Section("Raises", "-", raises),
        "misses": Section("Misses", "-", misses, has_criterion=True),
        "holds": Section("Holds", "-", lambda context: SectionOutput(), has_criterion=True),
        "measures": Section("Measures", "-", measures),
    }
    lines: list[str] = []
    results = run_checks(
        sections, ["raises", "misses", "holds", "measures"], CheckContext(QUICK, torch.device("cpu"), lines.append)
    )
    assert ran == ["raises", "misses", "measures"]
    assert [r.status for r in results] == ["FAILED", "FAILED", "PASSED", "MEASURED"]
    assert results[0].error is not None and "RuntimeError: CUDA error: an illegal memory access" in results[0].error
    assert results[1].error == "resnet18 random/neuron: updated |Δ| 3.00e-07"
    assert all(r.seconds >= 0 for r in results) and results[3].output.tables[0].rows == [{"a": 1}]
    assert "[raises] FAILED" in lines[1] and "illegal memory access" in lines[1] and lines[-1].startswith("[measures] MEASURED")


CONVS = {
    "dense": nn.Conv2d(6, 8, 3, padding=1),
    "depthwise": nn.Conv2d(6, 6, 3, padding=1, groups=6),
    "depth-multiplier-2": nn.Conv2d(6, 12, 3, padding=1, groups=6),
    "grouped": nn.Conv2d(6, 9, 3, padding=1, groups=3),
    "linear": nn.Linear(6, 9),
}


def as_elements(update: UpdateMask, weight: torch.Tensor) -> torch.Tensor:
    """The optimizer's update mask of a conv weight, spread over the weight's elements."""
    if isinstance(update, AxisMask):
        shape = [1] * weight.dim()
        shape[update.axis] = -1
        return update.mask.view(shape).expand_as(weight)
    return (update.view(-1, *[1] * (weight.dim() - 1)) if update.dim() == 1 else update).expand_as(weight)


@pytest.mark.parametrize("kind", list(CONVS))
def test_updated_elements_agree_with_the_optimizer_masks(kind: str) -> None:
    conv = CONVS[kind]
    channels = torch.tensor([True, False, False, True, True, False])
    expected = as_elements(parameter_masks({"": conv}, {"": channels}, "input_channel")[conv.weight], conv.weight)
    assert torch.equal(updated_elements(conv, channels, "input_channel"), expected)
    rows = torch.arange(conv.weight.shape[0]) % 3 == 0
    neuron = updated_elements(conv, rows, "neuron")
    assert neuron.shape == conv.weight.shape and torch.equal(neuron.flatten(1)[:, 0], rows) and bool(neuron[rows].all())


@pytest.mark.parametrize("unit", ["neuron", "input_channel"])
@pytest.mark.parametrize("model_name", ["mbv2-w0.35", "vit"])
def test_mixed_masks_take_every_path(unit: str, model_name: str) -> None:
    model = build_model(ModelConfig(name=model_name), 10)
    masks = mixed_masks(model, unit, seed=0)  # type: ignore[arg-type]
    shares = [float(m.float().mean()) for m in masks.values()]
    assert {s == 0 for s in shares} == {True, False} and 1.0 in shares
    assert any(0 < s < 0.5 for s in shares) and any(0.5 <= s < 1 for s in shares)  # the row-wise and the dense partial paths
    again = mixed_masks(model, unit, seed=0)  # type: ignore[arg-type]
    assert masks.keys() == again.keys() and all(torch.equal(masks[k], again[k]) for k in masks)


@pytest.mark.parametrize("unit", ["neuron", "input_channel"])
@pytest.mark.parametrize("model_name", ["mbv2-w0.35", "vit"])
def test_the_engine_matches_the_masked_path_in_float64_on_cpu(unit: str, model_name: str) -> None:
    torch.set_num_threads(1)  # tiny ops: two threads only wait for each other (conftest restores the count)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=model_name), 10).double()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([0, 1])
    masks = mixed_masks(model, unit, seed=3)  # type: ignore[arg-type]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    figures = compare_gradients(model, masks, unit, inputs, labels)  # type: ignore[arg-type]
    assert figures["updated_diff"] < TOLERANCE and figures["frozen_max"] == 0 and figures["other_diff"] < TOLERANCE
    assert figures["updated_scale"] > 1e-3  # real gradients were compared, not zeros
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the start model is left alone
    assert "forward" not in vars(next(iter(conv_layers(model).values()))) and "forward" not in vars(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the whole check runs there)")
def test_quick_run_on_the_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check_quick.md"
    assert cli.main(["--quick", "--out", str(out)]) == 0
    figures = json.loads(out.with_suffix(".json").read_text())
    assert [s["key"] for s in figures["sections"]] == list(cli.SECTIONS)
    assert all(s["status"] != "FAILED" for s in figures["sections"])
