"""Per-step time and memory of the update paths, measured side by side in one run.

For each model the benchmark builds one network per *condition* from the same
start weights and the same batch, then times single training steps
(zero_grad, forward, cross-entropy, backward, SGD step with momentum 0.9 and
weight decay) in rounds over the conditions, each round in a fresh seeded
random order, so that noise from other processes on the machine and the
state one step leaves for the next hit every condition alike. Reported: the median
step time of the timed rounds (warm-up rounds excluded) and its ratios to the
bound, the mask-after-backward path and the full update.

Conditions (``path`` column):

- ``full``: every neuron updated (the baseline).
- ``bound``: every conv weight gradient switched off; BatchNorm and the
  classifier train, so input gradients still flow through every layer. No
  budgeted policy under the study's rules can be cheaper.
- ``masked``: the study's path: full backward, then the frozen rows of the
  gradients and steps are zeroed (``training.update_engine: masked``).
- ``engine``: the sparse-update engine (``training.update_engine: sparse``,
  the default), ``bn_update: all``.
- ``engine-selected``: the engine with ``bn_update: selected`` (SU masks only).

Masks: ``velocity`` masks come from a :class:`~trainables.VelocityTracker`
over 16 fixed random images, observed before and after each of two
full-update SGD steps on the random batch (the velocities of a real, if
short, run from the random initialisation); ``random`` masks are drawn by the
policy from a seeded generator; ``su`` masks are the scheme's static mask
(not for resnet18, whose convs the study's SU indices do not fit).

Memory budgets (``suite`` ``memory``): the MCUNet-zoo models at the memory
budgets of SU schemes 1, 3 and 5 (TraDy's), with ``su`` and ``random`` masks on
input channels and ``velocity`` on neurons (filling the memory budget, and
``velocity-weight`` at the scheme's parameter budget), each on the masked path
and the engine with ``bn_update`` all and selected. The bytes the convs save
for backward are compared with the cost model's kept activations x batch x
4 bytes, and what remains is split (other saved tensors, gradients, optimizer
state).

Transformers (``suite`` ``transformers``): torchvision's ``swin_t`` and a
ViT-S/16 (neqtune's ``vit`` in that shape) at TraDy's four SwinT memory
budgets (another model gets the same shares of its own full total), random
input channels and features, on the masked path and the engine with
``bn_update`` all and selected; the bytes the Linear and conv layers save for
backward against the cost model's count, which counts a Linear's inputs over
the tokens it really sees.

Memory (``memory_mib``): what a step holds beyond the weights: the bytes of
the tensors autograd saves for backward (counted with
``torch.autograd.graph.saved_tensors_hooks``, each storage once, parameters
excluded), plus the parameter gradients, plus the optimizer state after the
step. This is the part of the peak that differs between the paths; the
weights themselves and transient kernel workspaces are not counted.

Usage::

    python -m benchmarks.update_step                  # 128 px, batch 32, every suite
    python -m benchmarks.update_step --quick          # tiny sizes, one round
    python -m benchmarks.update_step --models mbv2-w0.35 --repeats 5 --out /tmp/bench
    python -m benchmarks.update_step --suite memory   # memory budgets only -> update_step_memory.*
    python -m benchmarks.update_step --suite transformers --repeats 5 --warmup 1   # -> update_step_transformers.*
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from neqtune.trainables.budget.costs import Pricing, mask_memory, network_memory
from neqtune.trainables.budget.resolve import ResolvedBudget, build_budget, scheme_su_mask
from neqtune.trainables.budget.schemes import get_scheme, su_update_mask
from neqtune.trainables.budget.units import (
    LinearCalls,
    Masks,
    Unit,
    budgeted_layers,
    conv_layers,
    conv_neuron_params,
    hooked_layers,
    layer_flops,
    total_params,
    unit_length,
)
from neqtune.trainables.config import BudgetConfig, ModelConfig, TrainingConfig, from_mapping
from neqtune.trainables.cpu import prepare_cpu
from neqtune.trainables.models.registry import build_model, model_names
from neqtune.trainables.policies.fill import select_neurons, select_units
from neqtune.trainables.policies.velocity import VelocityTracker
from neqtune.trainables.update import engine as engine_module
from neqtune.trainables.update.engine import SparseUpdateEngine, parameter_masks
from neqtune.trainables.update.optim import MaskedAdam, MaskedSGD, build_optimizer

SCHEMES: dict[str, dict[str, str]] = {
    "mbv2-w0.35": {"1": "mbv2-w0.35_scheme_1", "3": "mbv2-w0.35_scheme_3"},
    "mbv2": {"1": "mbv2_scheme_1", "3": "mbv2_scheme_3"},
    "resnet18": {"1": "scheme_1", "3": "scheme_3"},
}
"""The budget schemes 1 and 3 of each benchmarked model."""

POLICIES = ("velocity", "random", "su")
NUM_CLASSES = 10
MIB = 2**20

MEMORY_SCHEMES: dict[str, str] = {"mbv2-w0.35-zoo": "mbv2-w0.35", "mcunet-in1": "mcunet-in1", "proxyless-w0.3": "proxyless-w0.3"}
"""Models of the memory-budget conditions, with the prefix of their SU schemes (budgets of schemes 1, 3 and 5)."""
MEMORY_POLICIES: dict[str, tuple[str, Unit]] = {
    "su": ("su", "input_channel"),
    "random": ("random", "input_channel"),
    "velocity": ("velocity", "neuron"),
    "velocity-weight": ("velocity", "neuron"),
}
"""Masks of the memory conditions: policy and unit. ``velocity`` fills the memory budget (neurons pay their group's
input once); ``velocity-weight`` is TraDy's comparison: the study's parameter budget equal to the weight part of the
SU scheme, whatever memory its neurons' inputs take."""

TRANSFORMERS: dict[str, ModelConfig] = {
    "swin_t": ModelConfig(name="swin_t"),
    "vit-s16": ModelConfig(name="vit", patch_size=16, depth=12, width=384, heads=6, mlp_ratio=4.0),
    "vit": ModelConfig(name="vit"),
}
"""Models of the transformer suite: torchvision's SwinT (TraDy's), a ViT-S/16 (neqtune's ``vit`` in ViT-S/16's shape,
22 M parameters, 65 tokens at 128 px) and neqtune's small default ``vit`` (for quick runs)."""
SWINT_TOTAL = 31_889_952
"""TraDy's full SwinT total at 128 px: weight + input-activation elements of every Conv2d and Linear but the classifier."""
SWINT_BUDGETS = (27_946, 112_640, 633_859, 2_767_686)
"""TraDy's SwinT memory budgets (elements); another model gets the same shares of its own full total."""


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and where to write it."""

    models: tuple[str, ...] = ("mbv2-w0.35", "mbv2", "resnet18")
    memory_models: tuple[str, ...] = tuple(MEMORY_SCHEMES)
    transformer_models: tuple[str, ...] = ("swin_t", "vit-s16")
    image_size: int = 128
    batch_size: int = 32
    repeats: int = 11
    warmup: int = 2
    threads: int = 2
    seed: int = 0
    out_dir: Path = Path("docs/benchmarks")
    name: str = "update_step"


@dataclass(frozen=True)
class Condition:
    """One column of the comparison: an update path under one mask."""

    model: str
    path: str
    policy: str = "-"
    scheme: str = "-"
    bn_update: str = "all"
    unit: Unit = "neuron"
    memory_budget: bool = False  # the memory-budget suite: grouped convs keep only their selected inputs

    @property
    def label(self) -> str:
        """Short name for progress lines."""
        return f"{self.model}/{self.path}/{self.policy}/{self.scheme}/{self.bn_update}"


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


# --- masks ------------------------------------------------------------------


def all_masks(model: nn.Module, value: bool, unit: Unit = "neuron") -> Masks:
    """Every unit of every budgeted layer updated (True) or frozen (False)."""
    return {name: torch.full((unit_length(layer, unit),), value, dtype=torch.bool) for name, layer in budgeted_layers(model).items()}


def velocity_masks(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, budget: int, pricing: Pricing | None = None) -> Masks:
    """Velocity masks from a short real run: two full SGD steps from ``model``'s weights.

    The tracker observes 16 fixed images before and after each step; the
    velocities after the second step rank the neurons (priced by ``pricing``,
    the study's parameter counts if None). ``model`` is not changed.
    """
    twin = copy.deepcopy(model)
    velocity_images = inputs[:16]
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    velocities = None
    with VelocityTracker(twin) as tracker:
        tracker.observe([velocity_images])
        for _ in range(2):
            twin.train()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(twin(inputs), labels).backward()
            optimizer.step()
            velocities = tracker.observe([velocity_images])
    assert velocities is not None
    pricing = pricing or Pricing.of(conv_neuron_params(model))
    return select_units("velocity", scores=velocities, pricing=pricing, budget=budget)


def policy_masks(policy: str, model: nn.Module, scheme_name: str, inputs: torch.Tensor, labels: torch.Tensor, seed: int) -> Masks | None:
    """The masks of ``policy`` at the budget of ``scheme_name``; None where SU does not fit the model."""
    scheme = get_scheme(scheme_name)
    neuron_params = conv_neuron_params(model)
    budget = scheme.budget_params(total_params(neuron_params))
    if policy == "velocity":
        return velocity_masks(model, inputs, labels, budget)
    if policy == "random":
        generator = torch.Generator().manual_seed(seed)
        return select_neurons("random", scores=None, neuron_params=neuron_params, budget=budget, generator=generator)
    if scheme.su is None:
        return None
    return su_update_mask(model, manual_weight_idx=scheme.su.manual_weight_idx, weight_update_ratio=scheme.su.weight_update_ratio)


def model_conditions(model_name: str, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, seed: int) -> list[tuple[Condition, Masks]]:
    """Every condition benchmarked for one model, with its masks."""
    conditions = [
        (Condition(model_name, "full"), all_masks(model, True)),
        (Condition(model_name, "bound"), all_masks(model, False)),
    ]
    for label, scheme_name in SCHEMES[model_name].items():
        for policy in POLICIES:
            masks = policy_masks(policy, model, scheme_name, inputs, labels, seed)
            if masks is None:
                continue
            paths = [("masked", "all"), ("engine", "all")]
            if policy == "su":
                paths.append(("engine-selected", "selected"))
            for path, bn_update in paths:
                conditions.append((Condition(model_name, path, policy, label, bn_update), masks))
    return conditions


# --- runners ----------------------------------------------------------------


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


@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step holds beyond the weights.

    Attributes:
        layer_inputs: tensors the budgeted layers (Conv2d, Linear) save for backward: their inputs, or the selected
            channels or features of them.
        other_saved: every other saved tensor (normalisation, activation functions, attention, pooling, the classifier).
        grads: parameter gradients.
        optimizer: optimizer state after the step.
    """

    layer_inputs: int
    other_saved: int
    grads: int
    optimizer: int

    @property
    def saved(self) -> int:
        return self.layer_inputs + self.other_saved

    @property
    def total(self) -> int:
        return self.saved + self.grads + self.optimizer


_ENGINE_LINEAR_FUNCTIONS = ("_FrozenLinear", "_RowSparseLinear", "_ColumnSparseLinear")
"""The engine's autograd Functions of a Linear layer (names in :mod:`neqtune.trainables.update.engine`)."""


class _Marked:
    """Stands in for one of the engine's Linear Functions: its ``apply`` runs inside a mark, so what it saves is counted
    as a budgeted layer's (a Function's tensors are packed after its ``forward`` returned, before ``apply`` does)."""

    def __init__(self, function: Any, inside: list[str]) -> None:
        self.function, self.inside = function, inside

    def apply(self, *args: Any) -> Any:
        self.inside.append(self.function.__name__)
        try:
            return self.function.apply(*args)
        finally:
            self.inside.pop()


@contextlib.contextmanager
def _marked_engine_linears(inside: list[str]) -> Iterator[None]:
    originals = {name: getattr(engine_module, name) for name in _ENGINE_LINEAR_FUNCTIONS}
    for name, function in originals.items():
        setattr(engine_module, name, _Marked(function, inside))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(engine_module, name, function)


def step_memory(runner: Runner) -> StepMemory:
    """Measure one step: saved-for-backward bytes (each storage once, parameters excluded) split by who saved them.

    A conv is seen by module hooks. A Linear is seen by :class:`LinearCalls`
    (its weight may be used inside a function, as torchvision's Swin
    attention does), and, where the engine routes it to one of its own
    autograd Functions, by a mark around that Function's ``apply``.
    """
    parameter_storages = {p.untyped_storage().data_ptr() for p in runner.model.parameters()}
    saved: dict[int, tuple[int, bool]] = {}  # storage -> (bytes, saved by a budgeted layer)
    inside: list[str] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in parameter_storages:
            by_layer = bool(inside) or saved.get(pointer, (0, False))[1]
            saved[pointer] = (storage.nbytes(), by_layer)
        return tensor

    def enter(module: nn.Module, args: object) -> None:
        inside.append(type(module).__name__)

    def leave(module: nn.Module, args: object, output: object) -> None:
        inside.pop()

    def linear_call(name: str, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, linear: Callable[..., torch.Tensor]) -> torch.Tensor:
        inside.append(name)
        try:
            return linear(inputs, weight, bias)
        finally:
            inside.pop()

    layers = budgeted_layers(runner.model)
    convs = hooked_layers(layers).values()
    handles = [h for conv in convs for h in (conv.register_forward_pre_hook(enter), conv.register_forward_hook(leave))]
    runner.optimizer.zero_grad(set_to_none=True)
    try:
        with _marked_engine_linears(inside), LinearCalls(layers, linear_call), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = F.cross_entropy(runner.model(runner.inputs), runner.labels)
    finally:
        for handle in handles:
            handle.remove()
    loss.backward()
    grads = sum(p.grad.nbytes for p in runner.model.parameters() if p.grad is not None)
    runner.optimizer.step()
    state = sum(v.nbytes for s in runner.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    layer_inputs = sum(size for size, by_layer in saved.values() if by_layer)
    return StepMemory(layer_inputs, sum(size for size, by_layer in saved.values() if not by_layer), grads, state)


def layer_wgrad_seconds(model: nn.Module, inputs: torch.Tensor, repeats: int = 5) -> dict[str, float]:
    """Median time of every conv's whole weight gradient alone, at the activations of ``inputs``.

    One forward pass without autograd; a hook on each conv times the
    library's weight gradient of that conv (``convolution_backward`` with only
    the weight gradient asked for) on the conv's real input and a random
    output gradient, ``repeats`` times after one warm-up call.
    """
    times: dict[str, float] = {}

    def timer(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(conv: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            assert isinstance(conv, nn.Conv2d)
            grad = torch.randn_like(output)
            samples = []
            for _ in range(repeats + 1):
                started = time.perf_counter()
                torch.ops.aten.convolution_backward(
                    grad, args[0], conv.weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups, [False, True, False]
                )
                samples.append(time.perf_counter() - started)
            times[name] = statistics.median(samples[1:])

        return hook

    handles = [conv.register_forward_hook(timer(name)) for name, conv in conv_layers(model).items()]
    try:
        with torch.no_grad():
            model.eval()(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return times


def _updated_share(masks: Masks, cost: dict[str, float]) -> float:
    """sum(cost x updated / channels) / sum(cost) over the convs: the masks' share of a per-conv cost."""
    return sum(cost[n] * int(m.sum()) / m.numel() for n, m in masks.items()) / sum(cost.values())


def mask_summary(model: nn.Module, masks: Masks, flops: dict[str, int], wgrad_seconds: dict[str, float] | None = None) -> dict[str, float]:
    """Parameters and convs the masks update, and their share of the weight-gradient work.

    Two shares, each spread evenly over a conv's output channels:
    ``wgrad_flop_share`` weighs the convs by FLOPs (a weight gradient takes
    as many as the forward pass; ``flops`` from :func:`layer_flops`),
    ``wgrad_time_share`` by the measured time of their whole weight gradient
    (``wgrad_seconds`` from :func:`layer_wgrad_seconds`; NaN without it),
    which counts what FLOPs miss: a depthwise conv's weight gradient moves
    far more memory than its FLOPs suggest.
    """
    params = conv_neuron_params(model)
    return {
        "wgrad_flop_share": _updated_share(masks, {n: float(f) for n, f in flops.items()}),
        "wgrad_time_share": _updated_share(masks, wgrad_seconds) if wgrad_seconds else math.nan,
        "params_updated": int(sum(int(params[n][m].sum()) for n, m in masks.items())),
        **conv_counts(masks),
    }


def conv_counts(masks: Masks) -> dict[str, int]:
    """How many convs the masks update fully, partly, or not at all (any unit)."""
    counts = [int(m.sum()) for m in masks.values()]
    return {
        "convs_full": sum(c == m.numel() for c, m in zip(counts, masks.values(), strict=True)),
        "convs_partial": sum(0 < c < m.numel() for c, m in zip(counts, masks.values(), strict=True)),
        "convs_frozen": sum(c == 0 for c in counts),
    }


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


def benchmark_model(model_name: str, config: BenchConfig, log: Callable[[str], None]) -> list[dict[str, object]]:
    """Time and measure every condition of one model; one row per condition."""
    torch.manual_seed(config.seed)
    start = build_model(ModelConfig(name=model_name), NUM_CLASSES)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = torch.randn(config.batch_size, 3, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (config.batch_size,), generator=generator)
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
                "step_s": statistics.median(runner.times),
                "step_min_s": min(runner.times),
                "rounds": len(runner.times),
                "unit": c.unit,
                "saved_mib": memory.saved / MIB,
                "grads_mib": memory.grads / MIB,
                "optimizer_mib": memory.optimizer / MIB,
                "memory_mib": memory.total / MIB,
            }
        )
    return rows


# --- memory budgets -----------------------------------------------------------


def memory_conditions(
    model_name: str, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, seed: int, image_size: int
) -> list[tuple[Condition, Masks, ResolvedBudget]]:
    """The memory-budget conditions of one model: masks of every policy at the budgets of schemes 1, 3 and 5."""
    conditions: list[tuple[Condition, Masks, ResolvedBudget]] = []
    for number in ("1", "3", "5"):
        scheme_name = f"{MEMORY_SCHEMES[model_name]}_scheme_{number}"
        on_channels = build_budget(
            from_mapping(BudgetConfig, {"policy": "su", "unit": "input_channel", "scheme": scheme_name}), model, model_name=model_name, image_size=image_size
        )
        for label, (policy, unit) in MEMORY_POLICIES.items():
            # the scheme sets a memory budget on input channels, a parameter budget on neurons (velocity-weight);
            # velocity fills the input channels' memory budget with neurons
            values: dict[str, object] = {"policy": policy, "unit": unit, "scheme": scheme_name}
            if label == "velocity":
                values["memory"] = on_channels.amount
            budget = from_mapping(BudgetConfig, values, "budget")
            resolved = build_budget(budget, model, model_name=model_name, image_size=image_size)
            if policy == "su":
                masks = scheme_su_mask(model, budget, resolved)
            elif policy == "velocity":
                masks = velocity_masks(model, inputs, labels, resolved.amount, resolved.pricing)
            else:
                generator = torch.Generator().manual_seed(seed)
                masks = select_units("random", scores=None, pricing=resolved.pricing, budget=resolved.amount, generator=generator)
            for path, bn_update in (("masked", "all"), ("engine", "all"), ("engine-selected", "selected")):
                condition = Condition(model_name, path, label, number, bn_update, unit, memory_budget=resolved.kind == "memory")
                conditions.append((condition, masks, resolved))
    return conditions


def benchmark_memory_model(model_name: str, config: BenchConfig, log: Callable[[str], None]) -> list[dict[str, object]]:
    """Time and measure the memory conditions of one model; one row per condition."""
    torch.manual_seed(config.seed)
    start = build_model(ModelConfig(name=model_name), NUM_CLASSES)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = torch.randn(config.batch_size, 3, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (config.batch_size,), generator=generator)
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
                "step_s": statistics.median(runner.times),
                "step_min_s": min(runner.times),
                "rounds": len(runner.times),
                "layer_inputs_mib": memory.layer_inputs / MIB,
                "predicted_layer_inputs_mib": predicted / MIB,
                "other_saved_mib": memory.other_saved / MIB,
                "saved_mib": memory.saved / MIB,
                "grads_mib": memory.grads / MIB,
                "optimizer_mib": memory.optimizer / MIB,
                "memory_mib": memory.total / MIB,
            }
        )
    return rows


# --- transformers -------------------------------------------------------------


def transformer_budgets(total: int) -> list[int]:
    """TraDy's SwinT budgets as the same shares of a model's full total (exactly TraDy's for SwinT's 31,889,952)."""
    return [round(budget * total / SWINT_TOTAL) for budget in SWINT_BUDGETS]


def benchmark_transformer_model(label: str, config: BenchConfig, log: Callable[[str], None]) -> list[dict[str, object]]:
    """The transformer conditions of one model: full, bound, and random input features at the four budgets (masked,
    engine, engine with norms frozen beside frozen layers); one row per condition."""
    model_config = TRANSFORMERS[label]
    torch.manual_seed(config.seed)
    start = build_model(model_config, NUM_CLASSES)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = torch.randn(config.batch_size, 3, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (config.batch_size,), generator=generator)
    name, size = model_config.name, config.image_size
    plain = build_budget(from_mapping(BudgetConfig, {"policy": "full"}, "budget"), start, model_name=name, image_size=size)
    conditions = [(Condition(label, "full"), all_masks(start, True), plain), (Condition(label, "bound"), all_masks(start, False), plain)]
    for number, amount in enumerate(transformer_budgets(network_memory(plain.costs)), start=1):
        budget = from_mapping(BudgetConfig, {"policy": "random", "unit": "input_channel", "memory": amount}, "budget")
        resolved = build_budget(budget, start, model_name=name, image_size=size)
        masks = select_units("random", scores=None, pricing=resolved.pricing, budget=resolved.amount, generator=torch.Generator().manual_seed(config.seed))
        for path, bn_update in (("masked", "all"), ("engine", "all"), ("engine-selected", "selected")):
            conditions.append((Condition(label, path, "random", str(number), bn_update, "input_channel", memory_budget=True), masks, resolved))
    log(f"{label} (transformer, {size} px): {len(conditions)} conditions, {config.warmup} warm-up + {config.repeats} timed rounds")
    return measure_memory_conditions(conditions, start, inputs, labels, config, generator, log)


def transformer_checks(table: pd.DataFrame) -> list[dict[str, object]]:
    """The transformer targets: the prediction exact; at the smallest budget with norms frozen, memory and step against full."""
    checks: list[dict[str, object]] = []
    for model, rows in table.groupby("model", sort=False):
        engine = rows[rows.path.str.startswith("engine")]
        worst = float(engine.prediction_error_pct.abs().max())
        checks.append({"target": f"{model}: Linear and conv inputs kept vs predicted, worst of {len(engine)} engine conditions, |error| %",
                       "measured": round(worst, 6), "limit": 0.0, "holds": worst < 1e-9, "floor": math.nan, "time_floor": math.nan})  # fmt: skip
        smallest = engine[(engine.scheme == "1") & (engine.path == "engine-selected")].iloc[0]
        checks.append({"target": f"{model} budget 1, bn_update selected: memory / full", "measured": round(float(smallest.memory_vs_full), 3),
                       "limit": 0.10, "holds": bool(smallest.memory_vs_full <= 0.10), "floor": round(float(smallest.floor_vs_full), 3), "time_floor": math.nan})  # fmt: skip
        checks.append({"target": f"{model} budget 1, bn_update selected: step / full", "measured": round(float(smallest.vs_full), 3),
                       "limit": 0.85, "holds": bool(smallest.vs_full <= 0.85), "floor": math.nan, "time_floor": math.nan})  # fmt: skip
    return checks


def add_memory_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Step time and memory against the full update and the bound; the prediction error of the kept conv inputs."""
    table = table.copy()
    per_model = table.set_index("model")
    for path, suffix in (("full", "full"), ("bound", "bound")):
        reference = per_model[per_model.path == path]
        table[f"vs_{suffix}"] = table.step_s.to_numpy() / reference.step_s.reindex(table.model).to_numpy()
        table[f"memory_vs_{suffix}"] = table.memory_mib.to_numpy() / reference.memory_mib.reindex(table.model).to_numpy()
    full_saved = per_model[per_model.path == "full"].saved_mib.reindex(table.model).to_numpy()
    table["saved_vs_full"] = table.saved_mib.to_numpy() / full_saved
    engine = table.path.str.startswith("engine") | table.path.isin(["full", "bound"])
    error = (table.layer_inputs_mib - table.predicted_layer_inputs_mib) / table.predicted_layer_inputs_mib.where(table.predicted_layer_inputs_mib > 0)
    table["prediction_error_pct"] = (100 * error).where(engine)
    # what the rules leave when the conv inputs are exactly the cost model's: norm/activation tensors, gradients, state
    table["floor_vs_full"] = (table.memory_mib - table.layer_inputs_mib + table.predicted_layer_inputs_mib).to_numpy() / (
        per_model[per_model.path == "full"].memory_mib.reindex(table.model).to_numpy()
    )
    return table


def memory_checks(table: pd.DataFrame) -> list[dict[str, object]]:
    """The memory-budget targets, each with the measured value and whether it holds."""
    checks: list[dict[str, object]] = []

    def check(target: str, value: float, limit: float, floor: float = math.nan) -> None:
        checks.append({"target": target, "measured": round(float(value), 3), "limit": limit, "holds": bool(value <= limit), "floor": round(float(floor), 3), "time_floor": math.nan})

    engine = table[table.path.str.startswith("engine") & (table.scheme != "-")]
    # velocity-weight has a parameter budget: the engine then keeps a depthwise conv's whole input where most of its
    # channels train (the faster weight gradient), more than the cost model counts, so it is left out of this check
    bounded = engine[engine.budget_kind == "memory"]
    if len(bounded):
        worst = bounded.loc[bounded.prediction_error_pct.abs().idxmax()]
        check(
            f"conv inputs saved vs predicted, worst of {len(bounded)} memory-budget engine conditions "
            f"({worst.model} {worst.policy} scheme {worst.scheme} {worst.path}), |error| %",
            abs(worst.prediction_error_pct),
            2.0,
        )
    for row in engine[(engine.policy == "su") & (engine.scheme == "1") & (engine.path == "engine-selected")].itertuples():
        check(f"{row.model} su (input channels) scheme 1, bn_update selected: memory / full", row.memory_vs_full, 0.10, row.floor_vs_full)
    for row in engine[engine.path == "engine"].itertuples():
        check(f"{row.model} {row.policy} ({row.unit}) scheme {row.scheme}: step / full", row.vs_full, 0.85)
    return checks


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
        shown[column] = shown[column].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    for column in ("layer_inputs_mib", "predicted_layer_inputs_mib", "other_saved_mib", "grads_mib", "optimizer_mib", "memory_mib"):
        shown[column] = shown[column].map(lambda v: f"{v:.2f}")
    for column in ("activation_sparsity_pct", "prediction_error_pct"):
        shown[column] = shown[column].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")
    lines = [
        "",
        f"## {heading}",
        "",
        f"{intro} {COLUMNS_NOTE}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    lines += ["", f"### {heading}: targets", "", "| target | measured | limit | holds | floor |", "|---|---|---|---|---|"]
    lines += [f"| {c['target']} | {c['measured']} | {c['limit']} | {'yes' if c['holds'] else 'NO'} | {_cell(c['floor'])} |" for c in checks]
    return lines


# --- table ------------------------------------------------------------------


def add_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Ratios of median step times (and memory) to the bound, the masked path and the full update."""
    table = table.copy()
    key = ["model", "policy", "scheme"]
    per_model = table.set_index("model")
    full = per_model[per_model.path == "full"].step_s
    bound = per_model[per_model.path == "bound"].step_s
    masked = table[table.path == "masked"].set_index(key)
    index = pd.MultiIndex.from_frame(table[key])
    table["vs_bound"] = table.step_s.to_numpy() / bound.reindex(table.model).to_numpy()
    table["vs_full"] = table.step_s.to_numpy() / full.reindex(table.model).to_numpy()
    table["vs_masked"] = table.step_s.to_numpy() / masked.step_s.reindex(index).to_numpy()
    table["memory_vs_masked"] = table.memory_mib.to_numpy() / masked.memory_mib.reindex(index).to_numpy()
    # If the updated rows' weight gradients cost exactly their share of what all weight
    # gradients cost (masked - bound), a step could take no less than this: by FLOPs, and by
    # the measured time of each conv's weight gradient.
    weight_grads = masked.step_s.reindex(index).to_numpy() - bound.reindex(table.model).to_numpy()
    bound_s = bound.reindex(table.model).to_numpy()
    table["floor_vs_bound"] = 1.0 + weight_grads * table.wgrad_flop_share.to_numpy() / bound_s
    table["time_floor_vs_bound"] = 1.0 + weight_grads * table.wgrad_time_share.to_numpy() / bound_s
    table["vs_floor"] = table.vs_bound / table.floor_vs_bound
    return table


def target_checks(table: pd.DataFrame) -> list[dict[str, object]]:
    """The issue's targets, each with the measured ratio and whether it holds."""
    checks: list[dict[str, object]] = []

    def check(target: str, value: float, limit: float, strict: bool = False, floors: tuple[float, float] = (math.nan, math.nan)) -> None:
        holds = value < limit if strict else value <= limit
        flop_floor, time_floor = (round(float(f), 3) for f in floors)
        checks.append(
            {"target": target, "measured": round(float(value), 3), "limit": limit, "holds": bool(holds), "floor": flop_floor, "time_floor": time_floor}
        )

    masked_limit = {"mbv2": 0.85, "resnet18": 0.75}
    engine = table[table.path == "engine"]
    for row in engine[(engine.scheme == "1") & engine.policy.isin(["velocity", "random"])].itertuples():
        floors = (row.floor_vs_bound, row.time_floor_vs_bound)
        check(f"{row.model} {row.policy} scheme 1: engine / bound", row.vs_bound, 1.10, floors=floors)
        if row.model in masked_limit:
            to_masked = row.vs_masked / row.vs_bound
            masked_floors = (floors[0] * to_masked, floors[1] * to_masked)
            check(f"{row.model} {row.policy} scheme 1: engine / masked", row.vs_masked, masked_limit[row.model], floors=masked_floors)
    for row in table[(table.path == "engine-selected") & (table.scheme == "1")].itertuples():
        if row.model == "mbv2":
            check(f"{row.model} su scheme 1, bn_update selected: engine / full", row.vs_full, 0.6)
    for row in table[table.path.str.startswith("engine")].itertuples():
        strict = row.policy == "su"
        check(f"{row.model} {row.policy} scheme {row.scheme} {row.path}: memory / masked", row.memory_vs_masked, 1.0, strict=strict)
    return checks


def machine() -> str:
    """CPU model, cores and torch threads, for the table's caption."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"


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
        shown[column] = shown[column].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")
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
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    if checks:
        lines += ["", "## Targets", "", "| target | measured | limit | holds | FLOP-share floor | time-share floor |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {c['target']} | {c['measured']} | {c['limit']} | {'yes' if c['holds'] else 'NO'} | {_cell(c['floor'])} | {_cell(c['time_floor'])} |"
            for c in checks
        ]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    return "-" if math.isnan(float(str(value))) else str(value)


def write_tables(out_dir: Path, name: str, table: pd.DataFrame, text: str) -> None:
    """``<name>.parquet`` (the table) and ``<name>.md`` (``text``) in ``out_dir``, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(out_dir / f"{name}.parquet", lambda p: table.to_parquet(p, index=False))
    write_atomically(out_dir / f"{name}.md", lambda p: p.write_text(text))


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, then rename: never half-written."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


Measure = Callable[[str, BenchConfig, Callable[[str], None]], list[dict[str, object]]]


def params_section(table: pd.DataFrame) -> str:
    """The parameter-budget suite's Markdown, with its targets."""
    return markdown(table, target_checks(table))


def memory_section(table: pd.DataFrame) -> str:
    """The memory-budget suite's Markdown, with its targets."""
    return "\n".join(memory_markdown(table, memory_checks(table))) + "\n"


def transformer_section(table: pd.DataFrame) -> str:
    """The transformer suite's Markdown, with its targets."""
    return "\n".join(memory_markdown(table, transformer_checks(table), "Transformers", TRANSFORMER_INTRO)) + "\n"


def _suites(config: BenchConfig) -> list[tuple[str, tuple[str, ...], Measure, Callable[[pd.DataFrame], pd.DataFrame], Callable[[pd.DataFrame], str]]]:
    """Each suite the config asks for: its name, models, how a model is measured, the ratios added, its Markdown."""
    suites = [
        ("params", config.models, benchmark_model, add_ratios, params_section),
        ("memory", config.memory_models, benchmark_memory_model, add_memory_ratios, memory_section),
        ("transformers", config.transformer_models, benchmark_transformer_model, add_memory_ratios, transformer_section),
    ]
    return [suite for suite in suites if suite[1]]


def run(config: BenchConfig, command: str, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run the benchmark, write ``<name>.parquet`` and ``<name>.md`` into ``config.out_dir``."""
    torch.set_num_threads(config.threads)
    prepare_cpu()  # as the trainer does: denormals flushed, freed memory kept for reuse
    tables: list[pd.DataFrame] = []
    text = ["\n".join(markdown_header(config, command)) + "\n"]
    for suite, names, measure, ratios, render in _suites(config):
        suite_table = ratios(pd.DataFrame([row for name in names for row in measure(name, config, log)])).assign(suite=suite)
        tables.append(suite_table)
        text.append(render(suite_table))
    table = pd.concat(tables, ignore_index=True)
    table["image_size"] = config.image_size
    table["batch_size"] = config.batch_size
    table["machine"] = machine()
    write_tables(config.out_dir, config.name, table, "".join(text))
    return table


def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    """Command-line options; argparse exits with code 2 on a bad one."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.update_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one timed round (a smoke run)")
    parser.add_argument(
        "--suite",
        choices=("all", "params", "memory", "transformers"),
        default="all",
        help="parameter budgets, memory budgets, transformers at memory budgets, or all (default); "
        "memory alone writes update_step_memory.*, transformers alone update_step_transformers.*",
    )
    parser.add_argument("--models", nargs="+", choices=sorted(SCHEMES), help="models at parameter budgets (default: all three)")
    parser.add_argument("--memory-models", nargs="+", choices=sorted(MEMORY_SCHEMES), help="models at memory budgets (default: all three)")
    parser.add_argument(
        "--transformer-models", nargs="+", choices=sorted(TRANSFORMERS), help="transformers at memory budgets (default: swin_t vit-s16)"
    )
    parser.add_argument("--image-size", type=int, help="input side in pixels (default 128; quick: 32)")
    parser.add_argument("--batch-size", type=int, help="images per step (default 32; quick: 4)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 11; quick: 1)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 2; quick: 1)")
    parser.add_argument("--threads", type=int, help="torch threads (default 2; quick: 1)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="output folder (default docs/benchmarks)")
    args = parser.parse_args(argv)
    quick = {"image_size": 32, "batch_size": 4, "repeats": 1, "warmup": 1, "threads": 1}
    default = quick if args.quick else {"image_size": 128, "batch_size": 32, "repeats": 11, "warmup": 2, "threads": 2}
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in default.items()}
    for key, value in values.items():
        minimum = 0 if key == "warmup" else 1
        if value < minimum:
            parser.error(f"--{key.replace('_', '-')} must be >= {minimum}, got {value}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    unknown = [m for m in args.models or [] if m not in model_names()]
    if unknown:
        parser.error(f"--models: unknown models {unknown}")
    def chosen(suite: str, given: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
        return () if args.suite not in ("all", suite) else tuple(given) if given else default

    return BenchConfig(
        models=chosen("params", args.models, BenchConfig.models),
        memory_models=chosen("memory", args.memory_models, BenchConfig.memory_models),
        transformer_models=chosen("transformers", args.transformer_models, BenchConfig.transformer_models),
        out_dir=args.out,
        name=("update_step_quick" if args.quick else "update_step") + ("" if args.suite in ("all", "params") else f"_{args.suite}"),
        **values,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.update_step``."""
    config = parse_args(argv)
    command = "python -m benchmarks.update_step " + " ".join(sys.argv[1:] if argv is None else argv)
    table = run(config, command.strip())
    print(f"wrote {config.out_dir / (config.name + '.parquet')} and {config.out_dir / (config.name + '.md')} ({len(table)} conditions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
