"""Applying update masks: optimizers that leave frozen neurons bit-identical,
and the learning-rate schedule.

Masks are set per parameter (True = updated): a bool tensor over its first
dimension (the output channels, rows, of a conv weight or bias), an
:class:`AxisMask` over another dimension (the input channels, columns
``W[:, c]``, of a conv weight), or a bool tensor with the parameter's number
of dimensions that broadcasts over it (an element mask, e.g. the input
channels of a grouped conv, which are blocks of the weight). The update rule
follows the study's code so that numbers are comparable: the gradient of a
frozen row is zeroed after weight decay and the step is zeroed again after
momentum (SGD) or the first moment is cleared (Adam), so neither momentum nor
weight decay can move a frozen row. A parameter without a mask is updated in
full (BatchNorm, the classifier).

A parameter may also go without a gradient for a while (the sparse-update
engine switches fully frozen convs off). When it next has one, the state it
missed is caught up exactly as if it had received zero gradients all along:
an SGD momentum buffer decays by ``momentum ** k``, Adam clears the first
moment and decays the second by ``beta2 ** k``, and Adam's bias correction
counts the optimizer's steps, not the parameter's. Both update paths
therefore produce the same weights.

With ``row_sparse=True`` (the sparse-update engine's optimizer) a partly
updated parameter is stepped on its updated rows (or columns, along the
mask's axis) only: their gradient and weights are gathered, updated and
scattered back, and the state of the frozen slices takes its zero-gradient
step in place (one pass: momentum or the second moment decays, the first
moment is cleared) instead of the whole-tensor temporaries of the masked
step. The arithmetic per element is the masked path's, so both give
bit-identical weights and state. An element mask always takes the masked
step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neqtune.trainables.config import TrainingConfig


@dataclass(frozen=True)
class AxisMask:
    """An update mask along one dimension of a parameter.

    Attributes:
        mask: 1-D bool tensor over ``param.shape[axis]``; True = that slice is updated.
        axis: the dimension the mask runs along: 0 for the output channels
            (rows) of a conv weight, 1 for its input channels (columns ``W[:, c]``).
    """

    mask: torch.Tensor
    axis: int = 0


UpdateMask = torch.Tensor | AxisMask
"""A parameter's update mask: a row mask (plain 1-D tensor over dim 0), an :class:`AxisMask`, or an element mask."""


def _frozen_view(mask: AxisMask, param: torch.Tensor) -> torch.Tensor:
    """True where ``param`` is frozen, shaped to broadcast over it (the mask's length at its axis, 1 elsewhere)."""
    shape = [1] * param.dim()
    shape[mask.axis] = -1
    return (~mask.mask).to(param.device).view(shape)


class _MaskedOptimizer(torch.optim.Optimizer):
    """Shared mask bookkeeping of :class:`MaskedSGD` and :class:`MaskedAdam`."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], row_sparse: bool = False) -> None:
        super().__init__(params, {**defaults, "global_step": 0})
        self.row_sparse = row_sparse
        self._frozen_rows: dict[int, torch.Tensor] = {}
        self._updated_rows: dict[int, torch.Tensor] = {}
        self._row_axes: dict[int, int] = {}

    def set_update_masks(self, masks: Mapping[torch.Tensor, UpdateMask]) -> None:
        """Replace the update masks (True = updated); unlisted parameters update fully.

        Args:
            masks: per parameter, a bool tensor over its first dimension (rows),
                an :class:`AxisMask` (slices along another dimension), or a bool
                tensor with the parameter's number of dimensions that broadcasts
                over it (elements; always the masked, whole-tensor step).

        Raises:
            ValueError: a mask does not fit its parameter.
        """
        frozen: dict[int, torch.Tensor] = {}
        updated: dict[int, torch.Tensor] = {}
        axes: dict[int, int] = {}
        for param, given in masks.items():
            mask = _axis_mask(given, param)
            if not isinstance(mask, AxisMask):  # an element mask: the masked step only
                if not bool(mask.all()):
                    frozen[id(param)] = (~mask).to(param.device)
                continue
            if bool(mask.mask.all()):
                continue
            frozen[id(param)] = _frozen_view(mask, param)
            updated[id(param)] = mask.mask.to(param.device).nonzero().flatten()
            axes[id(param)] = mask.axis
        self._frozen_rows = frozen
        self._updated_rows = updated
        self._row_axes = axes

    def _rows_step(self, param: torch.Tensor) -> torch.Tensor | None:
        """Indices of the rows (slices along :meth:`_row_axis`) a row-sparse step updates; None for a whole-tensor step."""
        return self._updated_rows.get(id(param)) if self.row_sparse else None

    def _row_axis(self, param: torch.Tensor) -> int:
        """The dimension along which :meth:`_rows_step`'s indices run."""
        return self._row_axes.get(id(param), 0)

    def _frozen(self, param: torch.Tensor) -> torch.Tensor | None:
        return self._frozen_rows.get(id(param))

    @staticmethod
    def _skipped_steps(state: dict[str, Any], step: int) -> int:
        """Steps since the parameter's last update (0 when it was updated the step before)."""
        skipped = step - int(state.get("last_step", step - 1)) - 1
        state["last_step"] = step
        return skipped


def _axis_mask(mask: UpdateMask, param: torch.Tensor) -> UpdateMask:
    """``mask`` as an :class:`AxisMask` (a plain 1-D tensor over dim 0 is a row mask); an element mask is returned as it is.

    Raises:
        ValueError: the mask does not fit ``param``.
    """
    if (mask.mask if isinstance(mask, AxisMask) else mask).dtype != torch.bool:
        raise ValueError("update masks must be bool tensors")
    if isinstance(mask, AxisMask):
        if not 0 <= mask.axis < param.dim() or mask.mask.shape != param.shape[mask.axis : mask.axis + 1]:
            raise ValueError(
                f"mask of shape {tuple(mask.mask.shape)} along axis {mask.axis} does not fit a parameter of shape {tuple(param.shape)}"
            )
        return mask
    if mask.shape == param.shape[:1]:
        return AxisMask(mask, 0)
    fits = mask.dim() == param.dim() and all(m in (1, p) for m, p in zip(mask.shape, param.shape, strict=True))
    if not fits:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit a parameter of shape {tuple(param.shape)}")
    return mask


class MaskedSGD(_MaskedOptimizer):
    """SGD with momentum, dampening, nesterov and weight decay, under update masks."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        row_sparse: bool = False,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening 0")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay, "nesterov": nesterov}
        super().__init__(params, defaults, row_sparse)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            momentum = group["momentum"]
            group["global_step"] += 1
            for param in group["params"]:
                if param.grad is None:
                    continue
                rows = self._rows_step(param)
                if rows is not None:
                    self._sgd_rows(param, rows, self._row_axis(param), group)
                    continue
                frozen = self._frozen(param)
                state = self.state[param]
                skipped = self._skipped_steps(state, group["global_step"])
                step = param.grad
                if group["weight_decay"] != 0:
                    step = step.add(param, alpha=group["weight_decay"])
                if frozen is not None:
                    step = step.masked_fill(frozen, 0.0)
                if momentum != 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = step.detach().clone()
                    else:
                        if skipped:
                            buf.mul_(momentum**skipped)
                        buf.mul_(momentum).add_(step, alpha=1 - group["dampening"])
                    step = step.add(buf, alpha=momentum) if group["nesterov"] else buf
                    if frozen is not None:
                        step = step.masked_fill(frozen, 0.0)
                param.add_(step, alpha=-group["lr"])

    def _sgd_rows(self, param: torch.Tensor, rows: torch.Tensor, axis: int, group: dict[str, Any]) -> None:
        """The SGD step of ``param`` computed on its updated ``rows`` (slices along ``axis``) only (``row_sparse``)."""
        assert param.grad is not None
        momentum, state = group["momentum"], self.state[param]
        skipped = self._skipped_steps(state, group["global_step"])
        weights = param.index_select(axis, rows)
        step = param.grad.index_select(axis, rows)
        if group["weight_decay"] != 0:
            step = step.add(weights, alpha=group["weight_decay"])
        if momentum != 0:
            buffer = state.get("momentum_buffer")
            if buffer is None:  # frozen rows start from zero, as the masked step's
                buffer = state["momentum_buffer"] = torch.zeros_like(param)
                rows_buffer = step.clone()
            else:
                if skipped:
                    buffer.mul_(momentum**skipped)
                buffer.mul_(momentum)  # every row's zero-gradient step; updated rows add theirs next
                rows_buffer = buffer.index_select(axis, rows).add_(step, alpha=1 - group["dampening"])
            buffer.index_copy_(axis, rows, rows_buffer)
            step = step.add(rows_buffer, alpha=momentum) if group["nesterov"] else rows_buffer
        param.index_copy_(axis, rows, weights.add_(step, alpha=-group["lr"]))


class MaskedAdam(_MaskedOptimizer):
    """Adam (L2 weight decay added to the gradient, as torch's Adam), under update masks."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        row_sparse: bool = False,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("lr, eps and weight_decay must be >= 0")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}, row_sparse)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            group["global_step"] += 1
            step = group["global_step"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                frozen = self._frozen(param)
                state = self.state[param]
                if not state:
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                rows = self._rows_step(param)
                if rows is not None:
                    self._adam_rows(param, rows, self._row_axis(param), group)
                    continue
                skipped = self._skipped_steps(state, step)
                if skipped:
                    state["exp_avg"].zero_()
                    state["exp_avg_sq"].mul_(beta2**skipped)
                state["step"] = step
                grad = param.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(param, alpha=group["weight_decay"])
                if frozen is not None:
                    grad = grad.masked_fill(frozen, 0.0)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if frozen is not None:
                    exp_avg.masked_fill_(frozen, 0.0)
                correction1 = 1 - beta1 ** state["step"]
                correction2 = 1 - beta2 ** state["step"]
                denom = (exp_avg_sq.sqrt() / math.sqrt(correction2)).add_(group["eps"])
                param.addcdiv_(exp_avg, denom, value=-group["lr"] / correction1)

    def _adam_rows(self, param: torch.Tensor, rows: torch.Tensor, axis: int, group: dict[str, Any]) -> None:
        """The Adam step of ``param`` computed on its updated ``rows`` (slices along ``axis``) only (``row_sparse``)."""
        assert param.grad is not None
        beta1, beta2 = group["betas"]
        step, state = group["global_step"], self.state[param]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        skipped = self._skipped_steps(state, step)
        if skipped:
            exp_avg.zero_()
            exp_avg_sq.mul_(beta2**skipped)
        state["step"] = step
        weights = param.index_select(axis, rows)
        grad = param.grad.index_select(axis, rows)
        if group["weight_decay"] != 0:
            grad = grad.add(weights, alpha=group["weight_decay"])
        frozen = self._frozen(param)
        assert frozen is not None
        exp_avg.masked_fill_(frozen, 0.0)  # frozen rows: first moment cleared, second decays (zero gradient)
        exp_avg_sq.mul_(beta2)
        rows_avg = exp_avg.index_select(axis, rows).mul_(beta1).add_(grad, alpha=1 - beta1)
        rows_avg_sq = exp_avg_sq.index_select(axis, rows).addcmul_(grad, grad, value=1 - beta2)
        exp_avg.index_copy_(axis, rows, rows_avg)
        exp_avg_sq.index_copy_(axis, rows, rows_avg_sq)
        correction1 = 1 - beta1**step
        correction2 = 1 - beta2**step
        denom = (rows_avg_sq.sqrt() / math.sqrt(correction2)).add_(group["eps"])
        param.index_copy_(axis, rows, weights.addcdiv_(rows_avg, denom, value=-group["lr"] / correction1))


def cosine_lr(
    step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0, warmup_lr: float = 0.0, final_lr: float = 0.0
) -> float:
    """Learning rate at batch ``step`` (0-based): linear warm-up, then cosine decay.

    During the first ``warmup_steps`` batches the rate goes linearly from
    ``warmup_lr`` towards ``base_lr``; over the remaining ``total_steps -
    warmup_steps`` batches it follows half a cosine from ``base_lr`` to
    ``final_lr``.
    """
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, config: TrainingConfig) -> list[dict[str, Any]]:
    """Split parameters into weight-decayed and not, by ``no_wd_keys``.

    ``norm`` matches every parameter of a normalisation layer, ``bias`` every
    bias; any other key matches as a substring of the parameter's name.
    """
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            skip = any(
                (key == "norm" and isinstance(module, norm_types)) or (key == "bias" and param_name == "bias") or key in name
                for key in config.no_wd_keys
            )
            (no_decay if skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: TrainingConfig) -> MaskedSGD | MaskedAdam:
    """The masked optimizer named in ``config`` (SGD or Adam); row-sparse steps with the sparse-update engine."""
    groups = parameter_groups(model, config)
    row_sparse = config.update_engine == "sparse"
    if config.optimizer == "sgd":
        return MaskedSGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay, row_sparse=row_sparse
        )
    return MaskedAdam(groups, lr=config.lr, weight_decay=config.weight_decay, row_sparse=row_sparse)
