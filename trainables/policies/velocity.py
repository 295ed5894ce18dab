"""Neuron activity and velocity on the velocity split (the NEq rule).

After every training epoch the network is run, in eval mode and without
gradients, over a handful of held-out images (the *velocity split*). For each
conv neuron the change of its pre-activation output since the previous pass
is measured as ``phi = mean over images of (1 - cos(y_now, y_before))``,
cosine taken over the spatial positions. The velocity then follows the
recurrence of the study's code (not the formula printed in the NEq paper,
because every published number came from the code)::

    delta_t = phi_t - phi_{t-1}              (phi_{-1} = 0)
    v_t     = s_{t-1} - delta_t              (s_{-1} = 0)   <- used for selection
    s_t     = mu * v_t + delta_t
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from neqtune.trainables.budget.units import LinearCalls, LinearFn, budgeted_layers, hooked_layers, neuron_outputs


def output_change(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``phi``: mean over samples of ``1 - cos`` between two conv outputs.

    Args:
        current, previous: ``[N, C, L]`` outputs (N samples, C neurons, L
            flattened spatial positions).

    Returns:
        ``[C]`` float64 tensor. Cosine rule for zero vectors: both zero counts
        as no change (cos = 1), exactly one zero as cos = 0.
    """
    a = current.double()
    b = previous.double()
    norm_a = a.norm(dim=-1)
    norm_b = b.norm(dim=-1)
    a_zero = norm_a == 0
    b_zero = norm_b == 0
    # Dividing by a clamped norm keeps 0/0 out of the arithmetic; the zero
    # cases are overwritten below anyway.
    cos = (a * b).sum(dim=-1) / (norm_a * norm_b).clamp_min(torch.finfo(torch.float64).tiny)
    cos = torch.where(a_zero & b_zero, torch.ones_like(cos), cos)
    cos = torch.where(a_zero ^ b_zero, torch.zeros_like(cos), cos)
    return (1.0 - cos).mean(dim=0)


class VelocityTracker:
    """Measures the velocity of every conv neuron of ``model``.

    Forward hooks on every budgeted conv record its output while
    :meth:`observe` runs (they do nothing during training); a budgeted
    Linear's output is recorded from every ``F.linear`` call on its weight
    during :meth:`observe` (:class:`~neqtune.trainables.budget.units.LinearCalls`,
    so Swin's attention projections count), as ``[neurons, tokens]`` per image. Only what the rule
    needs is kept: the last outputs on the velocity split, ``phi`` of the
    last pass and the recurrence state.

    Args:
        model: the network; its convs are found by ``named_modules()``.
        mu: the velocity momentum (``budget.options.velocity.mu``, 0.5 in the study).
    """

    def __init__(self, model: nn.Module, mu: float = 0.5) -> None:
        self.model = model
        self.mu = float(mu)
        self._convs = budgeted_layers(model)
        self._recording: dict[str, list[torch.Tensor]] | None = None
        self._previous: dict[str, torch.Tensor] | None = None
        self._last_phi: dict[str, torch.Tensor] = {}
        self._state: dict[str, torch.Tensor] = {}
        self._handles = [conv.register_forward_hook(self._make_hook(name)) for name, conv in hooked_layers(self._convs).items()]
        self._active = True
        self._linear_calls = LinearCalls(self._convs, self._record_linear)

    def _record_linear(self, name: str, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, linear: LinearFn) -> torch.Tensor:
        output = linear(inputs, weight, bias)
        if self._recording is not None:
            self._recording[name].append(neuron_outputs(output.detach(), self._convs[name]).clone())
        return output

    def _make_hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if self._recording is not None:
                self._recording[name].append(neuron_outputs(output.detach()).clone())

        return hook

    @torch.no_grad()
    def _record(self, batches: Iterable[Any]) -> dict[str, torch.Tensor]:
        if not self._active:
            raise RuntimeError("VelocityTracker.observe called after remove()")
        was_training = self.model.training
        device = next(iter(self._convs.values())).weight.device
        self._recording = {name: [] for name in self._convs}
        self.model.eval()
        try:
            with self._linear_calls:
                for batch in batches:
                    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
                    self.model(inputs.to(device))
            recorded = self._recording
        finally:
            self._recording = None
            self.model.train(was_training)
        if any(not outputs for outputs in recorded.values()):
            raise ValueError("VelocityTracker.observe got no batches (the velocity split is empty)")
        return {name: torch.cat(outputs) for name, outputs in recorded.items()}

    def observe(self, batches: Iterable[Any]) -> dict[str, torch.Tensor] | None:
        """Run the velocity split through the model and update the velocities.

        Args:
            batches: iterable of input tensors ``[B, 3, H, W]``, or of
                ``(inputs, labels)`` pairs whose labels are ignored. The same
                images, in the same order, must be given at every call.

        Returns:
            ``None`` on the first call (it records the baseline outputs);
            afterwards, per conv, the float32 velocity ``v_t`` of each output
            neuron. The model's train/eval mode is restored.
        """
        current = self._record(batches)
        previous = self._previous
        self._previous = current
        if previous is None:
            return None
        velocities: dict[str, torch.Tensor] = {}
        for name, outputs in current.items():
            phi = output_change(outputs, previous[name])
            delta = phi - self._last_phi.get(name, torch.zeros_like(phi))
            velocity = self._state.get(name, torch.zeros_like(phi)) - delta
            self._state[name] = self.mu * velocity + delta
            self._last_phi[name] = phi
            velocities[name] = velocity.float()
        return velocities

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the recurrence exactly (for checkpoints)."""
        return {
            "mu": self.mu,
            "previous": self._previous,
            "last_phi": dict(self._last_phi),
            "state": dict(self._state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.mu = float(state["mu"])
        self._previous = state["previous"]
        self._last_phi = dict(state["last_phi"])
        self._state = dict(state["state"])

    def remove(self) -> None:
        """Detach the forward hooks from the model; the tracker is unusable afterwards."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._active = False

    def __enter__(self) -> VelocityTracker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()
