"""The budgeted-update fine-tuning trainer, in plain PyTorch.

``train(config, report)`` runs the loop of the spec: a first mask from the
policy, epochs of masked updates, the policy's reselection after each epoch
(a velocity pass, gradient norms, a redraw: the policy's lifecycle object of
:mod:`neqtune.trainables.policies.base` decides; the trainer never looks at its name),
evaluation, and one metrics record per epoch handed to ``report``. It knows
nothing about Ray; the Tune trainable in :mod:`neqtune.search.trainable` is a
thin adapter around it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from neqtune.datasets import build_dataset
from neqtune.datasets.pipeline import Batches, LoaderSettings, make_loader, with_decoded_cache
from neqtune.trainables.budget.accounting import account_parameters
from neqtune.trainables.budget.costs import mask_memory
from neqtune.trainables.budget.resolve import build_budget
from neqtune.trainables.budget.units import Masks, budgeted_layers, conv_neuron_params, layer_flops, mask_stats, total_params, unit_norms
from neqtune.trainables.checks import resolve_device
from neqtune.trainables.config import TrialConfig
from neqtune.trainables.cpu import prepare_cpu
from neqtune.trainables.models.registry import build_model
from neqtune.trainables.policies.base import GradientNorms, PolicyContext, make_policy, policy_metric_names
from neqtune.trainables.trial_checks import check_trial
from neqtune.trainables.update.engine import SparseUpdateEngine, parameter_masks
from neqtune.trainables.update.optim import build_optimizer, cosine_lr
from neqtune.trainables.update.precision import MixedPrecision

Metrics = dict[str, Any]
StateFn = Callable[[], dict[str, Any]]
Reporter = Callable[[Metrics, StateFn], None]
"""``report(metrics, state)``: called after every epoch; ``state()`` builds a resumable checkpoint."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def top1(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, precision: MixedPrecision | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``batches``, in percent.

    The count stays on the device and is read once at the end: no batch waits for the host.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        for inputs, labels in batches:
            logits = model(inputs.to(device, non_blocking=True))
            correct += (logits.argmax(dim=1) == labels.to(device, non_blocking=True)).sum()
            total += labels.numel()
    model.train(was_training)
    return 100.0 * int(correct) / max(total, 1)


class BudgetedRun:
    """The state of one budgeted fine-tuning run and the steps of its epoch.

    Built from a :class:`TrialConfig`; :func:`train` drives it epoch by epoch.
    """

    def __init__(self, config: TrialConfig) -> None:
        self.config = config
        training, budget = config.training, config.budget
        self.device = resolve_device(training.device)
        # the one check of a trial, as space loading and the dry run make it; the data set is checked by reading it below
        check_trial(config, device=self.device, data_read_by_caller=True)
        if self.device.type == "cpu":
            prepare_cpu()  # denormals flushed, freed memory kept for reuse (trainables/cpu.py)
        seed_everything(training.seed)
        self.data = build_dataset(config.data)
        if config.data.cache == "decoded":
            self.data = with_decoded_cache(self.data, config.data)
        self.model = build_model(config.model, self.data.num_classes).to(self.device)
        if training.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision = MixedPrecision(training.precision, self.device)
        # what the budget cannot price and the study does not always train is frozen (trainables/budget/accounting.py)
        self.account = account_parameters(self.model, budget)
        self.freeze_unbudgeted()
        self.neuron_params = conv_neuron_params(self.model)
        self.total_params = total_params(self.neuron_params)
        self.budget = build_budget(budget, self.model, model_name=config.model.name, image_size=config.data.image_size)
        self.budget_params = self.budget.amount
        # what one unit of budget.unit holds: a neuron's parameters, an input channel's weight elements
        self.unit_params = self.neuron_params if budget.unit == "neuron" else {name: c.weight for name, c in self.budget.costs.items()}
        example = self.data.train[0][0].unsqueeze(0).to(self.device)
        self.flops = layer_flops(self.model, example)
        self.engine = SparseUpdateEngine(
            self.model,
            bn_update=budget.bn_update,
            sparse=training.update_engine == "sparse",
            unit=budget.unit,
            keep_selected_inputs=self.budget.kind == "memory",
        )
        self.optimizer = build_optimizer(self.model, training)
        self.shuffle_generator = torch.Generator().manual_seed(training.seed)
        self.policy_generator = torch.Generator().manual_seed(training.seed + 1)
        self.augment_generator = torch.Generator(self.device).manual_seed(training.seed + 3)  # the batched path's, on the device
        loaders = LoaderSettings(self.device, torch.get_num_threads(), self.shuffle_generator, self.augment_generator)
        self.train_loader = make_loader(self.data.train, config.data, loaders, train=True)
        self.velocity_loader = make_loader(self.data.velocity, dataclasses.replace(config.data, workers=0), loaders, train=False)
        self.val_loader = make_loader(self.data.val, config.data, loaders, train=False)
        self.test_loader = make_loader(self.data.test, config.data, loaders, train=False)
        self.steps_per_epoch = len(self.train_loader)
        self.epoch = 0
        self.best_val_top1 = float("nan")
        self.best_epoch = 0
        self.test_top1_at_best_val = float("nan")
        self.best_model_state: dict[str, torch.Tensor] | None = None
        self.policy = make_policy(PolicyContext(budget, self.model, self.budget, self.policy_generator))
        self.masks: Masks = {}  # none yet: the policy's first measurements run on the whole network
        self.masks = self.policy.start(self)
        self.apply_masks()

    def freeze_unbudgeted(self) -> None:
        """Stop the parameters the accounting calls frozen from requiring gradients: the optimizer never steps them."""
        frozen = set(self.account.names("frozen"))
        for name, param in self.model.named_parameters():
            if name in frozen:
                param.requires_grad_(False)

    def params_outside_budget(self) -> int:
        """Parameters that train this epoch outside the budget: the norms the engine lets train, the classifier."""
        outside = set(self.account.names("outside"))
        return sum(param.numel() for name, param in self.model.named_parameters() if name in outside and param.requires_grad)

    # --- what a policy may ask for (neqtune.trainables.policies.base.Probe) --------------
    def velocity_batches(self) -> Batches:
        """The velocity split, in order."""
        return self.velocity_loader

    def ranking_batches(self, batches: int) -> DataLoader[Any]:
        """The first ``batches`` batches of the training split, the same ones at every call (own fixed shuffle)."""
        size = self.config.data.batch_size
        images = len(cast(Sized, self.data.train))
        count = min(images, batches * size)
        order = torch.randperm(images, generator=torch.Generator().manual_seed(self.config.training.seed + 2))[:count]
        return DataLoader(torch.utils.data.Subset(self.data.train, order.tolist()), batch_size=size, shuffle=False)

    def gradient_norms(self, masks: Masks, batches: int) -> GradientNorms:
        """Weight-gradient norms of the units True in ``masks``, over ``batches`` :meth:`ranking_batches`, without changing the run.

        The engine is switched to ``masks``, so only those units' weight
        gradients are computed and the backward stops at the deepest conv
        measured (every other parameter is frozen for the pass). The model
        runs in train mode as in training; its buffers (normalisation
        statistics) and the gradients are restored afterwards, and the
        run's masks are put back.
        """
        started = time.perf_counter()
        unit = self.config.budget.unit
        convs = budgeted_layers(self.model)
        buffers = {name: b.detach().clone() for name, b in self.model.named_buffers()}
        flags = {param: param.requires_grad for param in self.model.parameters()}
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.engine.set_masks(masks)  # the measured convs' weights (and biases) require gradients again
        sums = {name: torch.zeros(len(mask), dtype=torch.float64) for name, mask in masks.items()}
        layer_sums = dict.fromkeys(masks, 0.0)
        measured = 0
        was_training = self.model.training
        self.model.train()
        for inputs, labels in self.ranking_batches(batches):
            self.model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(inputs.to(self.device)), labels.to(self.device))
            loss.backward()
            for name, conv in convs.items():
                if conv.weight.grad is None:
                    continue
                norms = unit_norms(conv.weight.grad, conv, unit).cpu() * masks[name].double()
                sums[name] += norms
                layer_sums[name] += float(norms.pow(2).sum().sqrt())
            measured += 1
        self.model.zero_grad(set_to_none=True)
        self.model.train(was_training)
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                buffer.copy_(buffers[name])
        for param, flag in flags.items():
            param.requires_grad_(flag)
        if self.masks:
            self.apply_masks()
        measured = max(measured, 1)
        return GradientNorms(
            {name: total / measured for name, total in sums.items()},
            {name: total / measured for name, total in layer_sums.items()},
            time.perf_counter() - started,
        )

    # --- masks -------------------------------------------------------------
    def next_masks(self) -> float:
        """The policy's reselection after an epoch (it keeps its masks where it returns None).

        Returns:
            Seconds spent reselecting (the velocity pass, gradient norms, the draw).
        """
        started = time.perf_counter()
        chosen = self.policy.reselect(self)
        if chosen is not None:
            self.masks = chosen
        self.apply_masks()
        return time.perf_counter() - started

    def apply_masks(self) -> None:
        """Hand the current masks to the engine and the optimizer (conv weight and bias rows or columns)."""
        self.engine.set_masks(self.masks)
        self.optimizer.set_update_masks(parameter_masks(self.model, self.masks, self.config.budget.unit))

    # --- one epoch ---------------------------------------------------------
    def train_epoch(self) -> tuple[float, float, float]:
        """One pass over the training split with masked updates.

        Returns:
            ``(mean loss, top-1 in percent, learning rate of the last batch)``.
        """
        training = self.config.training
        total_steps = training.total_epochs * self.steps_per_epoch
        self.model.train()
        # loss and correct counts add up on the device and are read once, after the epoch: no batch waits for the host
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        lr = training.lr
        for batch, (inputs, labels) in enumerate(self.train_loader):
            step = self.epoch * self.steps_per_epoch + batch
            lr = cosine_lr(
                step,
                base_lr=training.lr,
                total_steps=total_steps,
                warmup_steps=training.warmup_epochs * self.steps_per_epoch,
                warmup_lr=training.warmup_lr,
                final_lr=training.final_lr,
            )
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            inputs, labels = self.on_device(inputs), labels.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with self.precision.autocast():
                logits = self.model(inputs)
                loss = F.cross_entropy(logits, labels)
            self.precision.backward(loss, self.optimizer)
            self.policy.observe_step()
            self.precision.step(self.optimizer)
            loss_sum += loss.detach().double() * labels.numel()
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += labels.numel()
        return float(loss_sum) / seen, 100.0 * int(correct) / seen, lr

    def on_device(self, inputs: torch.Tensor) -> torch.Tensor:
        """A batch of images on the run's device (an asynchronous copy from pinned memory), in the model's layout."""
        inputs = inputs.to(self.device, non_blocking=True)
        return inputs.contiguous(memory_format=torch.channels_last) if self.config.training.channels_last else inputs

    def evaluate(self) -> tuple[float, float]:
        """Validation and test top-1 (percent); keeps the best epoch by validation."""
        val = top1(self.model, self.val_loader, self.device, self.precision)
        test = top1(self.model, self.test_loader, self.device, self.precision)
        if not val <= self.best_val_top1:  # also true while best is NaN
            self.best_val_top1, self.best_epoch, self.test_top1_at_best_val = val, self.epoch + 1, test
            self.best_model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}  # on the device: no wait
        return val, test

    def should_evaluate(self) -> bool:
        """Every ``eval_per_epochs`` epochs and at the last one."""
        done = self.epoch + 1
        return done % self.config.training.eval_per_epochs == 0 or done == self.config.training.total_epochs

    # --- checkpoints -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly after this epoch (a deep copy)."""
        return copy.deepcopy(
            {
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "masks": self.masks,
                "policy": self.policy.state_dict(),
                "grad_scaler": self.precision.state_dict(),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "shuffle": self.shuffle_generator.get_state(),
                    "policy": self.policy_generator.get_state(),
                    "augment": self.augment_generator.get_state(),
                    "python": random.getstate(),
                    "numpy": np.random.get_state(),
                },
                "best": {
                    "val_top1": self.best_val_top1,
                    "epoch": self.best_epoch,
                    "test_top1": self.test_top1_at_best_val,
                    "model": self.best_model_state,
                },
            }
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` output."""
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.masks = dict(state["masks"])
        self.apply_masks()
        self.policy.load_state_dict(state["policy"])
        self.precision.load_state_dict(state.get("grad_scaler", {}))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.shuffle_generator.set_state(rng["shuffle"])
        self.policy_generator.set_state(rng["policy"])
        if "augment" in rng:
            self.augment_generator.set_state(rng["augment"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        best = state["best"]
        self.best_val_top1, self.best_epoch, self.test_top1_at_best_val = best["val_top1"], best["epoch"], best["test_top1"]
        self.best_model_state = best["model"]

    def layer_names(self) -> list[str]:
        """Conv names in the order of the per-layer metric lists."""
        return list(self.neuron_params)


def run_epoch(run: BudgetedRun) -> Metrics:
    """Train ``run`` for one epoch, reselect its masks, evaluate if due; the epoch's metrics.

    :func:`train` calls it once per epoch; runs of several seeds stepped in
    lockstep (:mod:`neqtune.trainables.repeats`) call it for each seed in turn.
    """
    started = time.perf_counter()
    used = mask_stats(run.masks, run.unit_params, run.flops)  # the masks this epoch trains with
    memory = mask_memory(run.masks, run.budget.costs, run.budget.unit)
    bytes_per_element = run.config.budget.bytes_per_element
    outside = run.params_outside_budget()
    train_loss, train_top1, lr = run.train_epoch()
    velocity_time = run.next_masks()
    val_top1, test_top1 = run.evaluate() if run.should_evaluate() else (float("nan"), float("nan"))
    run.epoch += 1
    epoch_time = time.perf_counter() - started
    own = dict.fromkeys(policy_metric_names()) | run.policy.epoch_metrics(epoch_time)  # null where the policy has not got one
    return {
        "epoch": run.epoch,
        "train_loss": train_loss,
        "train_top1": train_top1,
        "val_top1": val_top1,
        "test_top1": test_top1,
        "lr": lr,
        "best_val_top1": run.best_val_top1,
        "best_epoch": run.best_epoch,
        "test_top1_at_best_val": run.test_top1_at_best_val,
        "budget_params": run.budget_params if run.budget.kind == "params" else None,
        "total_conv_params": run.total_params,
        "params_updated": used.params_updated,
        "params_outside_budget": outside,
        "budget_gap": run.budget_params - (used.params_updated if run.budget.kind == "params" else memory.elements),
        "neurons_updated": used.neurons_updated,
        "neurons_total": used.neurons_total,
        "frozen_pct": used.frozen_pct,
        "flops_saved": used.flops_saved,
        "flops_saved_pct": used.flops_saved_pct,
        "memory_budget": run.budget.memory,
        "memory_used": memory.elements,
        "memory_used_kb": memory.elements * bytes_per_element / 1024,
        "weight_elements_updated": memory.weight_elements,
        "activation_elements_kept": memory.activation_elements,
        "activation_sparsity_pct": memory.activation_sparsity_pct,
        "wgrad_flops_saved_pct": memory.wgrad_flops_saved_pct,
        "layer_frozen_pct": used.layer_frozen_pct,
        "layer_flops_saved": used.layer_flops_saved,
        "layer_names": run.layer_names(),
        "epoch_time_s": epoch_time,
        "velocity_time_s": velocity_time,
        "layers_selected": run.policy.layers_selected(),
        **own,
    }


def train(config: TrialConfig | Mapping[str, Any], report: Reporter | None = None, *, resume: Mapping[str, Any] | None = None) -> Metrics:
    """Fine-tune a network under an update budget, as the config says.

    Args:
        config: a :class:`TrialConfig` or its nested-dict form.
        report: called after every epoch with the epoch's metrics and a
            function that returns a resumable state (see docs/results.md for the
            metric names and units).
        resume: a state from a previous ``report`` call to continue from.

    Returns:
        The metrics of the last epoch (they include the best-epoch fields).
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    run = BudgetedRun(cfg)
    if resume is not None:
        run.load_state_dict(resume)
    metrics: Metrics = {}
    while run.epoch < cfg.training.total_epochs:
        metrics = run_epoch(run)
        if report is not None:
            report(metrics, run.state_dict)
    return metrics
