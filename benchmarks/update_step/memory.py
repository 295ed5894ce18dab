"""Memory accounting of one training step: the bytes saved for backward (split by who saved them), gradients and
optimizer state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.update_step.runners import Runner
from neqtune.trainables.budget.units import LinearCalls, budgeted_layers, hooked_layers
from neqtune.trainables.update import engine as engine_module

MIB = 2**20


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
