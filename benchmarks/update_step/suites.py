"""The three suites' measurements, one model at a time: build its conditions, time their runners, measure each step's
memory; one row per condition."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Sequence

import torch
from torch import nn

from benchmarks.update_step.conditions import (
    NUM_CLASSES,
    SCHEMES,
    TRANSFORMERS,
    Condition,
    all_masks,
    memory_conditions,
    model_conditions,
    transformer_conditions,
)
from benchmarks.update_step.config import BenchConfig
from benchmarks.update_step.mask_summary import conv_counts, layer_wgrad_seconds, mask_summary
from benchmarks.update_step.memory import MIB, StepMemory, step_memory
from benchmarks.update_step.runners import Runner, build_runner, time_rounds
from neqtune.trainables.budget.costs import mask_memory, network_memory
from neqtune.trainables.budget.resolve import ResolvedBudget, build_budget
from neqtune.trainables.budget.schemes import get_scheme
from neqtune.trainables.budget.units import Masks, conv_neuron_params, layer_flops, total_params
from neqtune.trainables.config import BudgetConfig, ModelConfig, from_mapping
from neqtune.trainables.models.registry import build_model


def seeded_start(model: ModelConfig, config: BenchConfig) -> tuple[nn.Module, torch.Generator, torch.Tensor, torch.Tensor]:
    """The model at its seeded random initialisation, the seeded generator the rounds draw from, and one seeded batch."""
    torch.manual_seed(config.seed)
    start = build_model(model, NUM_CLASSES)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = torch.randn(config.batch_size, 3, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (config.batch_size,), generator=generator)
    return start, generator, inputs, labels


def benchmark_model(model_name: str, config: BenchConfig, log: Callable[[str], None]) -> list[dict[str, object]]:
    """Time and measure every condition of one model; one row per condition."""
    start, generator, inputs, labels = seeded_start(ModelConfig(name=model_name), config)
    conditions = model_conditions(model_name, start, inputs, labels, config.seed)
    runners = [build_runner(c, start, m, inputs, labels) for c, m in conditions]
    log(f"{model_name}: {len(runners)} conditions, {config.warmup} warm-up + {config.repeats} timed rounds")
    time_rounds(runners, config, generator, log)
    total = total_params(conv_neuron_params(start))
    flops = layer_flops(start, inputs[:1])
    wgrad_seconds = layer_wgrad_seconds(copy.deepcopy(start), inputs)
    rows: list[dict[str, object]] = []
    for runner in runners:
        c = runner.condition
        memory = step_memory(runner)
        budget = get_scheme(SCHEMES[model_name][c.scheme]).budget_params(total) if c.scheme != "-" else total if c.path == "full" else 0
        rows.append(
            {
                "model": c.model,
                "path": c.path,
                "policy": c.policy,
                "scheme": c.scheme,
                "bn_update": c.bn_update,
                "budget_params": budget,
                "total_conv_params": total,
                **mask_summary(start, runner.masks, flops, wgrad_seconds),
                **step_times(runner),
                "unit": c.unit,
                **memory_split(memory),
            }
        )
    return rows


def step_times(runner: Runner) -> dict[str, object]:
    """A condition's step time columns: the median and the fastest of its rounds, and how many."""
    return {"step_s": statistics.median(runner.times), "step_min_s": min(runner.times), "rounds": len(runner.times)}


def memory_split(memory: StepMemory) -> dict[str, object]:
    """A condition's memory columns (MiB): the tensors autograd saved, the gradients, the optimizer state, their sum."""
    return {"saved_mib": memory.saved / MIB, "grads_mib": memory.grads / MIB, "optimizer_mib": memory.optimizer / MIB, "memory_mib": memory.total / MIB}


def benchmark_memory_model(model_name: str, config: BenchConfig, log: Callable[[str], None]) -> list[dict[str, object]]:
    """Time and measure the memory conditions of one model; one row per condition."""
    start, generator, inputs, labels = seeded_start(ModelConfig(name=model_name), config)
    plain = build_budget(from_mapping(BudgetConfig, {"policy": "full"}, "budget"), start, model_name=model_name, image_size=config.image_size)
    everything = (Condition(model_name, "full"), all_masks(start, True), plain)
    nothing = (Condition(model_name, "bound"), all_masks(start, False), plain)
    conditions = [everything, nothing, *memory_conditions(model_name, start, inputs, labels, config.seed, config.image_size)]
    log(f"{model_name} (memory budgets): {len(conditions)} conditions, {config.warmup} warm-up + {config.repeats} timed rounds")
    return measure_memory_conditions(conditions, start, inputs, labels, config, generator, log)


def measure_memory_conditions(
    conditions: Sequence[tuple[Condition, Masks, ResolvedBudget]],
    start: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    config: BenchConfig,
    generator: torch.Generator,
    log: Callable[[str], None],
) -> list[dict[str, object]]:
    """Time the conditions in interleaved rounds, then measure each one's memory; one row per condition."""
    runners = [(build_runner(c, start, m, inputs, labels), r) for c, m, r in conditions]
    time_rounds([runner for runner, _ in runners], config, generator, log)
    rows: list[dict[str, object]] = []
    for runner, resolved in runners:
        c = runner.condition
        use = mask_memory(runner.masks, resolved.costs, c.unit)
        memory = step_memory(runner)
        predicted = use.activation_elements * config.batch_size * inputs.element_size()
        rows.append(
            {
                "model": c.model,
                "path": c.path,
                "policy": c.policy,
                "scheme": c.scheme,
                "bn_update": c.bn_update,
                "unit": c.unit,
                "budget_kind": resolved.kind if c.scheme != "-" else "-",
                "budget": resolved.amount if c.scheme != "-" else network_memory(resolved.costs),
                "memory_used": use.elements,
                "weight_elements": use.weight_elements,
                "activation_elements": use.activation_elements,
                "activation_sparsity_pct": use.activation_sparsity_pct,
                "wgrad_flops_saved_pct": use.wgrad_flops_saved_pct,
                **conv_counts(runner.masks),
                **step_times(runner),
                "layer_inputs_mib": memory.layer_inputs / MIB,
                "predicted_layer_inputs_mib": predicted / MIB,
                "other_saved_mib": memory.other_saved / MIB,
                **memory_split(memory),
            }
        )
    return rows


def benchmark_transformer_model(label: str, config: BenchConfig, log: Callable[[str], None]) -> list[dict[str, object]]:
    """The transformer conditions of one model (:func:`~benchmarks.update_step.conditions.transformer_conditions`),
    timed and measured; one row per condition."""
    start, generator, inputs, labels = seeded_start(TRANSFORMERS[label], config)
    conditions = transformer_conditions(label, start, config.seed, config.image_size)
    log(f"{label} (transformer, {config.image_size} px): {len(conditions)} conditions, {config.warmup} warm-up + {config.repeats} timed rounds")
    return measure_memory_conditions(conditions, start, inputs, labels, config, generator, log)
