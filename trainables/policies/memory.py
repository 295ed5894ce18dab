"""The memory-budget policies over input channels: TraDy, deterministic RGN and MeDyate, with layer preselection.

All three select input channels (``unit: input_channel``) inside a set of
preselected convs ``L_K`` (their option ``layers``, e.g.
``budget.options.trady.layers``; formerly ``budget.layers``):

- ``{top_rgn_share: x}``: TraDy's rule, the convs of highest layer RGN
  (``sum_c g_c / (C^W_c + C^A_c)``) holding the share ``x`` of its sum;
- ``{lara_alpha: a}``: MeDyate's rule, the top-K convs by LaRa
  (``||dL/dW|| / sum_c (C^W_c + C^A_c)``) with the smallest K whose memory
  ``M_K`` gives ``budget / M_K <= a``; every conv when none does;
- a list of conv indices (module order).

The rules rank from a short gradient pass at the start of the run: the
mean over ``ranking_batches`` training batches (an option, formerly
``budget.ranking_batches``) of every input
channel's weight-gradient norm ``g_c``, no weights changed. The ranking and
the layers chosen are in the checkpoint, so a restarted run keeps them.
Defaults: TraDy and RGN take ``{top_rgn_share: 0.97}``, MeDyate
``{lara_alpha: 0.2}`` (the papers' values).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from neqtune.datasets.parsing import join, require
from neqtune.trainables.budget.costs import LayerCosts
from neqtune.trainables.budget.resolve import ResolvedBudget, check_layer_list, layer_indices
from neqtune.trainables.budget.units import Masks, Unit, budgeted_layers, unit_norms
from neqtune.trainables.policies.base import BudgetPolicy, GradientNorms, Need, PolicyContext, Probe, register_policy
from neqtune.trainables.policies.fill import Policy as SelectionFn
from neqtune.trainables.policies.fill import medyate_policy, restrict_pricing, rgn_policy, trady_policy

DEFAULT_SHARE = 0.97
DEFAULT_ALPHA = 0.2
TIME_METRICS = ("ranking_time_s", "grad_norm_time_s", "grad_norm_overhead_pct")


def channel_memory(conv: LayerCosts) -> torch.Tensor:
    """Each input channel's weight + input plane elements (per image)."""
    return conv.weight + conv.activation


def layer_scores(norms: GradientNorms, costs: Mapping[str, LayerCosts]) -> tuple[list[float], list[float]]:
    """Per conv (module order): layer RGN, ``sum_c g_c / (C^W_c + C^A_c)``, and LaRa, ``||dL/dW|| / sum_c (C^W_c + C^A_c)``."""
    rgn = [float((norms.units[name] / channel_memory(conv).double()).sum()) for name, conv in costs.items()]
    lara = [norms.layers[name] / float(channel_memory(conv).sum()) for name, conv in costs.items()]
    return rgn, lara


def top_share_layers(rgn: Sequence[float], share: float) -> list[int]:
    """The fewest convs of highest RGN whose RGN sum reaches ``share`` of the total (all convs when the total is 0)."""
    total = sum(rgn)
    if total <= 0:
        return list(range(len(rgn)))
    order = sorted(range(len(rgn)), key=lambda i: (-rgn[i], i))
    chosen: list[int] = []
    cumulative = 0.0
    for index in order:
        chosen.append(index)
        cumulative += rgn[index]
        if cumulative >= share * total * (1 - 1e-12):
            break
    return sorted(chosen)


def lara_layers(lara: Sequence[float], memory: Sequence[int], budget: int, alpha: float) -> list[int]:
    """The top-K convs by LaRa for the smallest K with ``budget / M_K <= alpha`` (``M_K`` their memory); all when none."""
    order = sorted(range(len(lara)), key=lambda i: (-lara[i], i))
    spent = 0
    for k, index in enumerate(order, start=1):
        spent += memory[index]
        if budget <= alpha * spent:
            return sorted(order[:k])
    return sorted(order)


@dataclass
class PreselectOptions:
    """The options of TraDy and MeDyate (``budget.options.trady``, ``budget.options.medyate``).

    ``layers``: the preselection rule, ``{top_rgn_share: x}`` with x in
    (0, 1], ``{lara_alpha: a}`` with a > 0, or a list of budgeted layers,
    each a module-order index or a qualified name (``features.1.0.attn.qkv``);
    null takes the policy's default rule.
    ``ranking_batches``: training batches of the ranking gradient pass.
    """

    layers: dict[str, float] | list[int | str] | None = None
    ranking_batches: int = 10

    def validate(self, path: str) -> None:
        require(self.ranking_batches >= 1, join(path, "ranking_batches"), f"must be >= 1 batch, got {self.ranking_batches}")
        key = join(path, "layers")
        if self.layers is None:
            return
        if isinstance(self.layers, list):
            require(bool(self.layers), key, "the list of conv indices is empty")
            require(all(isinstance(i, str) or i >= 0 for i in self.layers), key, f"conv indices must be >= 0, got {self.layers}")
            require(len(set(self.layers)) == len(self.layers), key, f"a conv index repeats: {self.layers}")
            return
        rules = ("top_rgn_share", "lara_alpha")
        require(
            len(self.layers) == 1 and next(iter(self.layers)) in rules,
            key,
            f"give one of {{top_rgn_share: x}}, {{lara_alpha: a}} or a list of conv indices, got {self.layers}",
        )
        if "top_rgn_share" in self.layers:
            share = self.layers["top_rgn_share"]
            require(0 < share <= 1, join(key, "top_rgn_share"), f"must lie in (0, 1], got {share}")
        else:
            alpha = self.layers["lara_alpha"]
            require(alpha > 0, join(key, "lara_alpha"), f"must be > 0, got {alpha}")


@dataclass
class RgnOptions(PreselectOptions):
    """The options of deterministic RGN (``budget.options.rgn``): TraDy's, and ``refresh`` (``once`` or ``epoch``)."""

    refresh: Literal["once", "epoch"] = "epoch"


class PreselectingPolicy(BudgetPolicy):
    """Input-channel selection inside preselected convs; subclasses draw the channels.

    Its state: the layers chosen, the ranking they came from and the
    ranking pass's time.
    """

    units: ClassVar[tuple[Unit, ...]] = ("input_channel",)
    preselects: ClassVar[bool] = True
    options_type: ClassVar[type[Any] | None] = PreselectOptions
    metrics: ClassVar[tuple[str, ...]] = TIME_METRICS
    default_rule: ClassVar[Mapping[str, float]] = {"top_rgn_share": DEFAULT_SHARE}
    measures_at_start: ClassVar[bool] = False  # needs every channel's norm at the start even with an explicit layer list

    def __init__(self, context: PolicyContext) -> None:
        super().__init__(context)
        self.options: PreselectOptions = context.options if context.options is not None else self.parse_options(None, "")
        self.layers: list[int] = []
        self.ranking: dict[str, list[float]] = {}
        self.ranking_time_s: float | None = None
        self.grad_norm_time_s = 0.0  # spent on gradient norms since the last epoch_metrics
        self.current: Masks = {}

    @classmethod
    def check_fit(cls, options: Any, budget: ResolvedBudget, path: str) -> None:
        """A list of conv indices must lie in the model and hold the budget."""
        if isinstance(options.layers, list):
            check_layer_list(options.layers, budget.pricing, budget.amount, key=join(path, "layers"))

    def rule(self) -> Mapping[str, float] | list[int]:
        """The ``layers`` option (a list as module-order indices), or the policy's default rule."""
        layers = self.options.layers
        if layers is None:
            return self.default_rule
        if isinstance(layers, list):
            return layer_indices(layers, self.conv_names(), key="layers")
        return layers

    def measure(self, probe: Probe, masks: Masks) -> GradientNorms:
        """The gradient norms of ``masks``' units over the ``ranking_batches`` option's batches."""
        return probe.gradient_norms(masks, self.options.ranking_batches)

    def preselect(self, probe: Probe) -> GradientNorms | None:
        """Choose ``self.layers``; the norms of every channel when a ranking pass ran (None for a layer list that needs none)."""
        rule = self.rule()
        costs = self.context.budget.costs
        if isinstance(rule, list):
            self.layers = sorted(rule)
            if not self.measures_at_start:
                return None
            norms = self.measure(probe, self.candidates())  # the listed convs' channels only
        else:
            norms = self.measure(probe, {name: torch.ones(conv.in_channels, dtype=torch.bool) for name, conv in costs.items()})
        self.ranking_time_s = norms.seconds
        rgn, lara = layer_scores(norms, costs)
        self.ranking = {"rgn": rgn, "lara": lara}
        if isinstance(rule, list):
            pass
        elif "top_rgn_share" in rule:
            self.layers = top_share_layers(rgn, rule["top_rgn_share"])
        else:
            memory = [int(channel_memory(conv).sum()) for conv in costs.values()]
            self.layers = lara_layers(lara, memory, self.context.budget.amount, rule["lara_alpha"])
        return norms

    def layer_names(self) -> list[str]:
        names = self.conv_names()
        return [names[i] for i in self.layers]

    def candidates(self) -> Masks:
        """Every channel of the preselected convs True, the rest False."""
        chosen = set(self.layer_names())
        return {name: torch.full((conv.in_channels,), name in chosen, dtype=torch.bool) for name, conv in self.context.budget.costs.items()}

    def draw(self, policy: SelectionFn, scores: Mapping[str, torch.Tensor] | None = None) -> Masks:
        """The selection function ``policy`` over the preselected convs only; every other conv frozen."""
        names = self.layer_names()
        pricing = restrict_pricing(self.context.budget.pricing, names)
        picked = self.select(policy, None if scores is None else {n: scores[n] for n in names}, pricing)
        masks = {name: picked.get(name, torch.zeros(conv.in_channels, dtype=torch.bool)) for name, conv in self.context.budget.costs.items()}
        self.current = masks
        return masks

    def layers_selected(self) -> list[int]:
        return list(self.layers)

    def state_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "ranking": dict(self.ranking), "ranking_time_s": self.ranking_time_s, "current": self.current}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.layers = list(state["layers"])
        self.ranking = dict(state["ranking"])
        self.ranking_time_s = state["ranking_time_s"]
        self.current = dict(state["current"])

    def epoch_metrics(self, epoch_time_s: float) -> dict[str, Any]:
        measured = self.needs == "gradient_norms"
        spent, self.grad_norm_time_s = self.grad_norm_time_s, 0.0
        return {
            "ranking_time_s": self.ranking_time_s,
            "grad_norm_time_s": spent if measured else None,
            "grad_norm_overhead_pct": 100.0 * spent / epoch_time_s if measured and epoch_time_s > 0 else None,
        }


@register_policy("trady")
class TradyPolicy(PreselectingPolicy):
    """TraDy: input channels drawn uniformly inside the top-RGN convs, redrawn every epoch; no gradients online."""

    @property
    def reselects_every_epoch(self) -> bool:
        return True

    def start(self, probe: Probe) -> Masks:
        self.preselect(probe)
        return self.draw(trady_policy)

    def reselect(self, probe: Probe) -> Masks | None:
        return self.draw(trady_policy)


@register_policy("rgn")
class RgnPolicy(PreselectingPolicy):
    """Deterministic RGN: the highest ``g_c / (C^W_c + C^A_c)`` channels of the preselected convs.

    Option ``refresh``: ``once`` (TraDy's S-Det RGN, the start's norms)
    or ``epoch`` (D-Det RGN: the norms measured again after every epoch,
    the engine computing only the preselected convs' weight gradients).
    """

    needs: ClassVar[Need] = "gradient_norms"
    measures_at_start: ClassVar[bool] = True
    options_type: ClassVar[type[Any] | None] = RgnOptions

    @property
    def reselects_every_epoch(self) -> bool:
        assert isinstance(self.options, RgnOptions)
        return self.options.refresh == "epoch"

    def start(self, probe: Probe) -> Masks:
        norms = self.preselect(probe)
        assert norms is not None
        return self.draw(rgn_policy, norms.units)

    def reselect(self, probe: Probe) -> Masks | None:
        if not self.reselects_every_epoch:
            return None
        norms = self.measure(probe, self.candidates())
        self.grad_norm_time_s += norms.seconds
        return self.draw(rgn_policy, norms.units)


@register_policy("medyate")
class MedyatePolicy(PreselectingPolicy):
    """MeDyate: uniform in the first epoch, then channels drawn in proportion to the stored gradient norms.

    ``g_c`` of a trained channel is the mean, over the epoch's training
    steps, of the norm of its weight gradient: the gradients the engine
    computed for the update anyway (no extra backward). After every epoch
    the trained channels' entries of the stored norms are overwritten; after
    the first one, every channel not seen yet gets the largest observed
    norm, and keeps it until it is trained.
    """

    needs: ClassVar[Need] = "gradient_norms"
    default_rule: ClassVar[Mapping[str, float]] = {"lara_alpha": DEFAULT_ALPHA}
    metrics: ClassVar[tuple[str, ...]] = (*TIME_METRICS, "channels_seen_pct")

    def __init__(self, context: PolicyContext) -> None:
        super().__init__(context)
        costs = context.budget.costs
        self.norms = {name: torch.zeros(conv.in_channels, dtype=torch.float64) for name, conv in costs.items()}
        self.seen = {name: torch.zeros(conv.in_channels, dtype=torch.bool) for name, conv in costs.items()}
        self.sums = {name: torch.zeros(conv.in_channels, dtype=torch.float64) for name, conv in costs.items()}
        self.steps = 0
        self.epochs_done = 0
        self._convs = budgeted_layers(context.model)
        self._trained: list[str] = []  # the layers with a trained channel under the current masks

    @property
    def reselects_every_epoch(self) -> bool:
        return True

    def start(self, probe: Probe) -> Masks:
        self.preselect(probe)
        return self.draw(medyate_policy)

    def draw(self, policy: SelectionFn, scores: Mapping[str, torch.Tensor] | None = None) -> Masks:
        masks = super().draw(policy, scores)
        self._trained = [name for name in self.layer_names() if bool(masks[name].any())]
        return masks

    def observe_step(self) -> None:
        """Add up the trained channels' gradient norms where the gradients are (on the device; read after the epoch)."""
        started = time.perf_counter()
        for name in self._trained:
            grad = self._convs[name].weight.grad
            if grad is None:
                continue
            if self.sums[name].device != grad.device:
                self.sums[name] = self.sums[name].to(grad.device)
            self.sums[name] += unit_norms(grad, self._convs[name], "input_channel")
        self.steps += 1
        self.grad_norm_time_s += time.perf_counter() - started

    def reselect(self, probe: Probe) -> Masks | None:
        started = time.perf_counter()
        self.epochs_done += 1
        for name in self.layer_names():
            trained = self.current[name]
            if self.steps:
                self.norms[name][trained] = self.sums[name].cpu()[trained] / self.steps
            self.seen[name] |= trained
            self.sums[name].zero_()
        self.steps = 0
        if self.epochs_done == 1:
            observed = [self.norms[n][self.seen[n]] for n in self.layer_names() if bool(self.seen[n].any())]
            fill = float(torch.cat(observed).max()) if observed else 1.0
            for name in self.layer_names():
                self.norms[name][~self.seen[name]] = fill
        self.grad_norm_time_s += time.perf_counter() - started
        return self.draw(medyate_policy, self.norms)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "norms": self.norms,
            "seen": self.seen,
            "sums": self.sums,
            "steps": self.steps,
            "epochs_done": self.epochs_done,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.norms = {k: v.clone() for k, v in state["norms"].items()}
        self.seen = {k: v.clone() for k, v in state["seen"].items()}
        self.sums = {k: v.clone() for k, v in state["sums"].items()}
        self.steps = int(state["steps"])
        self.epochs_done = int(state["epochs_done"])
        self._trained = [name for name in self.layer_names() if bool(self.current[name].any())]

    def epoch_metrics(self, epoch_time_s: float) -> dict[str, Any]:
        names = self.layer_names()
        seen = sum(int(self.seen[n].sum()) for n in names)
        total = sum(self.seen[n].numel() for n in names)
        return {**super().epoch_metrics(epoch_time_s), "channels_seen_pct": 100.0 * seen / total if total else 0.0}
