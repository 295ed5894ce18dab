"""Runners of the update-step conditions: a network with its engine and optimizer, and the interleaved timed rounds."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.update_step.conditions import Condition
from benchmarks.update_step.config import BenchConfig
from neqtune.trainables.budget.units import Masks
from neqtune.trainables.config import TrainingConfig
from neqtune.trainables.update.engine import SparseUpdateEngine, parameter_masks
from neqtune.trainables.update.optim import MaskedAdam, MaskedSGD, build_optimizer


@dataclass
class Runner:
    """A network, its engine and optimizer, ready to take steps on one batch."""

    condition: Condition
    model: nn.Module
    engine: SparseUpdateEngine
    optimizer: MaskedSGD | MaskedAdam
    masks: Masks
    inputs: torch.Tensor
    labels: torch.Tensor
    times: list[float] = field(default_factory=list)

    def step(self) -> None:
        """One training step: forward, loss, backward, optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.inputs), self.labels).backward()
        self.optimizer.step()

    def timed_step(self) -> float:
        """:meth:`step`, returning its wall time in seconds."""
        started = time.perf_counter()
        self.step()
        return time.perf_counter() - started


def build_runner(condition: Condition, start: nn.Module, masks: Masks, inputs: torch.Tensor, labels: torch.Tensor) -> Runner:
    """A copy of ``start`` with the condition's engine, masks and a masked SGD."""
    model = copy.deepcopy(start)
    model.train()
    engine = SparseUpdateEngine(
        model,
        bn_update=condition.bn_update,  # type: ignore[arg-type]
        sparse=condition.path != "masked",
        unit=condition.unit,
        keep_selected_inputs=condition.memory_budget,
    )
    # the study's path keeps whole-tensor optimizer steps; the engine's optimizer steps updated rows only
    training = TrainingConfig(
        optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=4e-5, update_engine="masked" if condition.path == "masked" else "sparse"
    )
    optimizer = build_optimizer(model, training)
    engine.set_masks(masks)
    optimizer.set_update_masks(parameter_masks(model, masks, condition.unit))
    return Runner(condition, model, engine, optimizer, masks, inputs, labels)


def time_rounds(runners: Sequence[Runner], config: BenchConfig, generator: torch.Generator, log: Callable[[str], None]) -> None:
    """Warm-up then timed rounds of one step per runner; each runner's times gather in ``runner.times``."""
    for round_index in range(config.warmup + config.repeats):
        # a fresh seeded order every round: no condition always runs after the same one
        # (the caches and the allocator it leaves behind) or at the same point of the round
        order = torch.randperm(len(runners), generator=generator).tolist()
        for runner in (runners[i] for i in order):
            elapsed = runner.timed_step()
            if round_index >= config.warmup:
                runner.times.append(elapsed)
        log(f"  round {round_index + 1}/{config.warmup + config.repeats} done")
