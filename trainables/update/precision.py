"""Training precision: float32, or bf16 / fp16 autocast around the forward and backward.

Weights, optimizer state and the masks stay float32 whatever the precision:
autocast runs the convs and matmuls in the low precision and the gradients
arrive in float32 on the float32 weights. fp16 has too little range for
small gradients, so its loss is scaled (``torch.amp.GradScaler``) and the
gradients unscaled before anyone reads them (a policy's ``observe_step``,
the optimizer); a step with an overflow is skipped and the scale lowered.
fp16 runs on CUDA only (checked when a trial is built, see
:func:`neqtune.trainables.checks.training_problems`); bf16 also runs on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """Autocast and, for fp16, the gradient scaler of one run."""

    def __init__(self, precision: Precision, device: torch.device) -> None:
        self.precision = precision
        self.device = device
        self.dtype = DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward's context: autocast in the run's dtype, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward of ``loss`` (scaled for fp16), then the gradients as they really are (unscaled)."""
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step; with fp16 skipped where a gradient overflowed, and the scale updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty without one), for the checkpoint."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs in on ``device_type`` right now, or None outside autocast."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None
