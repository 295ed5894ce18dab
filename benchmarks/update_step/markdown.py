"""The update-step report in Markdown: how the results were produced, then one section per suite with its targets."""

from __future__ import annotations

import pandas as pd

from benchmarks.report import format_cell, machine, number, table_lines
from benchmarks.update_step.config import BenchConfig
from benchmarks.update_step.targets import memory_checks, target_checks, transformer_checks


def markdown_header(config: BenchConfig, command: str) -> list[str]:
    """How the results were produced."""
    return [
        f"# Update-step benchmark ({config.name})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}. Input {config.image_size} px, batch {config.batch_size}, "
        f"{config.warmup} warm-up + {config.repeats} timed rounds, conditions interleaved, each round in a fresh seeded random order; "
        "`step_s` is the median step time (s), ratios are ratios of medians. "
        "`memory_mib`: saved-for-backward tensors + gradients + optimizer state (MiB).",
    ]


def markdown(table: pd.DataFrame, checks: list[dict[str, object]]) -> str:
    """The parameter-budget results as Markdown: the table, the targets."""
    columns = [
        "model",
        "path",
        "policy",
        "scheme",
        "params_updated",
        "convs_partial",
        "convs_frozen",
        "step_s",
        "vs_bound",
        "floor_vs_bound",
        "time_floor_vs_bound",
        "vs_masked",
        "vs_full",
        "memory_mib",
        "memory_vs_masked",
    ]
    shown = table[columns].copy()
    for column in ("step_s",):
        shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    for column in ("vs_bound", "floor_vs_bound", "time_floor_vs_bound", "vs_masked", "vs_full", "memory_vs_masked"):
        shown[column] = shown[column].map(lambda v: number(v, ".2f"))
    shown["memory_mib"] = shown["memory_mib"].map(lambda v: f"{v:.1f}")
    lines = [
        "",
        "## Parameter budgets",
        "",
        "Models at the parameter budgets of schemes 1 and 3 (the study's). "
        "SU masks do not fit resnet18 (the study's SU indices are for MobileNetV2), so resnet18 has none. "
        "`floor_vs_bound`: the step time, over the bound's, if the updated rows' weight gradients cost exactly "
        "their share of the weight-gradient FLOPs times what all weight gradients cost (masked - bound); "
        "a row's weight gradient takes the FLOPs of its forward pass. "
        "`time_floor_vs_bound`: the same with each conv weighed by the measured time of its whole weight gradient "
        "(each conv alone, on its real activations) instead of its FLOPs.",
        "",
        *table_lines(columns, shown.itertuples(index=False)),
    ]
    if checks:
        header = ["target", "measured", "limit", "holds", "FLOP-share floor", "time-share floor"]
        cells = [(c["target"], c["measured"], c["limit"], format_cell(bool(c["holds"])), number(c["floor"]), number(c["time_floor"])) for c in checks]
        lines += ["", "## Targets", "", *table_lines(header, cells)]
    return "\n".join(lines) + "\n"


MEMORY_INTRO = (
    "Models of the MCUNet zoo at the memory budgets of SU schemes 1, 3 and 5 (TraDy's budgets: weight + conv-input "
    "activation elements per image, `budget`). Masks: `su` and `random` on input channels; `velocity` on neurons "
    "filling the same memory budget (a neuron pays its group's input once); `velocity-weight` on neurons at the scheme's "
    "parameter budget (TraDy's comparison; its memory is not bounded)."
)
TRANSFORMER_INTRO = (
    "Transformers at TraDy's four SwinT memory budgets (`scheme` 1-4: 27,946 / 112,640 / 633,859 / 2,767,686 elements for "
    "swin_t, the same shares of its full total for another model; weight + input-activation elements per image of every "
    "Conv2d and Linear but the classifier, a Linear's inputs counted over the tokens it sees). Masks: `random` input "
    "channels and features (D-Full Random's draw), on the masked path, the engine (`bn_update: all`) and the engine with "
    "the norms beside frozen layers frozen (`engine-selected`, `bn_update: selected`)."
)
COLUMNS_NOTE = (
    "`layer_inputs_mib`: bytes the budgeted layers (Conv2d and Linear) saved for backward, measured; "
    "`predicted_layer_inputs_mib`: the cost model's kept activations x batch x 4 bytes. What remains: "
    "`other_saved_mib` (normalisation, activation functions, attention, pooling, classifier), `grads_mib`, `optimizer_mib` "
    "(SGD momentum). `floor_vs_full`: the memory, over the full update's, with the layer inputs exactly as predicted (what the rules leave)."
)


def memory_markdown(table: pd.DataFrame, checks: list[dict[str, object]], heading: str = "Memory budgets", intro: str = MEMORY_INTRO) -> list[str]:
    """A memory-budget section of the report (the zoo models' or the transformers')."""
    columns = [
        "model", "path", "policy", "unit", "scheme", "budget", "memory_used", "activation_sparsity_pct", "convs_partial",
        "step_s", "vs_full", "vs_bound", "layer_inputs_mib", "predicted_layer_inputs_mib", "prediction_error_pct",
        "other_saved_mib", "grads_mib", "optimizer_mib", "memory_mib", "memory_vs_full", "floor_vs_full",
    ]  # fmt: skip
    shown = table[columns].copy()
    for column in ("step_s",):
        shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    for column in ("vs_full", "vs_bound", "memory_vs_full", "floor_vs_full"):
        shown[column] = shown[column].map(lambda v: number(v, ".3f"))
    for column in ("layer_inputs_mib", "predicted_layer_inputs_mib", "other_saved_mib", "grads_mib", "optimizer_mib", "memory_mib"):
        shown[column] = shown[column].map(lambda v: f"{v:.2f}")
    for column in ("activation_sparsity_pct", "prediction_error_pct"):
        shown[column] = shown[column].map(lambda v: number(v, ".2f"))
    lines = [
        "",
        f"## {heading}",
        "",
        f"{intro} {COLUMNS_NOTE}",
        "",
        *table_lines(columns, shown.itertuples(index=False)),
    ]
    cells = [(c["target"], c["measured"], c["limit"], format_cell(bool(c["holds"])), number(c["floor"])) for c in checks]
    lines += ["", f"### {heading}: targets", "", *table_lines(["target", "measured", "limit", "holds", "floor"], cells)]
    return lines


def params_section(table: pd.DataFrame) -> str:
    """The parameter-budget suite's Markdown, with its targets."""
    return markdown(table, target_checks(table))


def memory_section(table: pd.DataFrame) -> str:
    """The memory-budget suite's Markdown, with its targets."""
    return "\n".join(memory_markdown(table, memory_checks(table))) + "\n"


def transformer_section(table: pd.DataFrame) -> str:
    """The transformer suite's Markdown, with its targets."""
    return "\n".join(memory_markdown(table, transformer_checks(table), "Transformers", TRANSFORMER_INTRO)) + "\n"
