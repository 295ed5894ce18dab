"""Write the spaces of the offline reproduction of TraDy's SwinT rows (issue 21, item 7), and print the budgets' arithmetic.

The small ViT (:data:`SHAPE`, 16 px), pretrained in full on Fashion-MNIST
by ``python -m benchmarks.vit_pretrain``, fine-tuned on digits:
``digits_vit.yaml`` runs D-Full Random (``random``), D-Det RGN (``rgn``
refreshed every epoch) and TraDy (``trady``) on input channels at TraDy's four
SwinT budgets re-costed for this model, ``digits_vit_full.yaml`` the full
baseline; each x seeds 0 / 1 / 2.

    python spaces/vit_digits/make_spaces.py

**The rule for the budgets.** Each of TraDy's four SwinT budgets is taken as
a share of SwinT's full total (31,889,952 elements) and that share of this
model's full total is the budget, rounded to the nearest element:
``budget = round(B_swint * total / 31,889,952)``. For the two proportional
budgets this is the papers' own rule (1.988 % and 8.679 %); the two absolute
ones, 27,946 and 112,640 (the CNN budgets), become 0.0876 % and 0.353 % of
the model, so all four keep their place relative to the whole network.
A share that buys no unit at all is raised to the cheapest unit alone
(:func:`space_budgets`): here the smallest, 139 elements, is below one input
feature of a ``proj`` or ``mlp`` fc2 (64 weights + 17 tokens) with the
64-element bias that the first feature taken from a layer pays, 145, so the
space's smallest budget is 145: one input feature.

**The full total** counts, as ``shared/design/transformers.md`` derives from
the papers, every ``nn.Conv2d`` and ``nn.Linear`` except the classifier: its
weights and biases plus ``C_in x (H * W, or the tokens it sees)`` of input
activation, for one image (:func:`full_total`, measured with forward hooks,
so a layer's tokens are what it really sees).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neqtune.trainables.budget.resolve import model_costs
from neqtune.trainables.config import ModelConfig
from neqtune.trainables.models.registry import build_model, find_classifier

HERE = Path(__file__).resolve().parent
IMAGE_SIZE = 16
SHAPE: dict[str, Any] = {"patch_size": 4, "depth": 4, "width": 64, "heads": 4, "mlp_ratio": 2.0}  # benchmarks/vit_pretrain.py's
WEIGHTS = "results/pretrained/vit-fashion-mnist-16px.pt"
SWINT_TOTAL = 31_889_952
SWINT_BUDGETS = (27_946, 112_640, 633_859, 2_767_686)  # TraDy's: the CNNs' two absolute ones, then 1.988 % and 8.679 %
POLICIES = "random, rgn, trady"
SEEDS = (0, 1, 2)
EPOCHS, WARMUP = 18, 2  # benchmarks/memory_reproduction.py's fine-tuning on digits


def full_total(model: nn.Module, image_size: int) -> tuple[int, int]:
    """Weight (with bias) and input-activation elements of every Conv2d and Linear but the classifier, for one image."""
    head = find_classifier(model)
    weights, activations = 0, 0
    seen: dict[str, int] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen[name] = inputs[0].numel()  # batch 1: C_in x H x W for a conv, tokens x C_in for a Linear

        return record

    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and name != head}
    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for handle in handles:
        handle.remove()
    missing = sorted(set(layers) - set(seen))
    if missing:
        raise RuntimeError(f"layers called outside their forward (no hook fired): {missing}")
    for name, module in layers.items():
        weights += sum(p.numel() for p in module.parameters(recurse=False))
        activations += seen[name]
    return weights, activations


def scaled_budgets(total: int) -> list[int]:
    """TraDy's SwinT budgets as the same shares of ``total``, rounded half up to whole elements (module docstring)."""
    return [(2 * budget * total + SWINT_TOTAL) // (2 * SWINT_TOTAL) for budget in SWINT_BUDGETS]


def cheapest_unit(model: nn.Module, image_size: int) -> int:
    """The cheapest input channel or feature alone, with the bias its layer's first channel pays (what the pricing charges)."""
    costs = model_costs(model, image_size)
    return min(int((c.input_channel.weight + c.input_channel.activation).min()) + c.bias for c in costs.values())


def space_budgets(total: int, cheapest: int) -> list[int]:
    """:func:`scaled_budgets`, each at least ``cheapest`` (a budget below one unit would train nothing under it)."""
    return [max(budget, cheapest) for budget in scaled_budgets(total)]


HEADER = """\
# Offline reproduction of TraDy's SwinT rows (ICLR 2026, appendix D.7, Table 2), issue 21 item 7:
# {what}
# digits at {size} px, neqtune's small vit (patch 4, depth 4, width 64, heads 4, MLP ratio 2: 17 tokens a layer)
# pretrained in full on Fashion-MNIST by `python -m benchmarks.vit_pretrain` ({weights}).
# The recipe of benchmarks/memory_reproduction.py (TraDy's CNN recipe, shortened): SGD without momentum or weight
# decay, cosine from lr 0.125 to 0 over {epochs} epochs after {warmup} linear warm-up epochs from 0, batch 32, seeds
# 0 / 1 / 2, {trials} trials in all.
# {budget}
# Generated by spaces/vit_digits/make_spaces.py.
#
#   python run_search.py --space spaces/vit_digits/{file} --dry-run
"""

BUDGETED = """\
Budgets (budget.memory, weight + input-activation elements of the Conv2d and Linear layers, one image): TraDy's
# SwinT budgets 27,946 / 112,640 / 633,859 / 2,767,686 as the same shares of this model's full {total:,} as of SwinT's
# 31,889,952 (0.0876 / 0.353 / 1.988 / 8.679 %): {shares}; a share below the cheapest unit alone ({cheapest:,}: one
# input feature with its layer's bias) is raised to it: {budgets}. random = D-Full Random, rgn with refresh epoch =
# D-Det RGN, trady = TraDy."""

FULL = """\
The full fine-tuning baseline (TraDy's "full" row, all {total:,} elements): no budget, everything trains."""

BODY = """\
experiment: vit_digits{suffix}

data:
  name: digits
  image_size: {size}
  batch_size: 32
  velocity_images: 10
  val_fraction: 0.2
  test_fraction: 0.2

model:
  name: vit
  pretrained: {weights}
  patch_size: 4
  depth: 4
  width: 64
  heads: 4
  mlp_ratio: 2.0

training:
  epochs: {epochs}
  warmup_epochs: {warmup}
  warmup_lr: 0.0
  optimizer: sgd
  momentum: 0.0
  weight_decay: 0.0
  lr: 0.125
  final_lr: 0.0
  seed: 0                  # searched below

budget:
{budget_section}
search:
  algorithm: grid
  num_samples: 1
  max_concurrent: 2
  cpus_per_trial: 1
  metric: best_val_top1
  mode: max
  params:
{params}"""

BUDGET_SECTION = """\
  policy: random           # searched below
  unit: input_channel
  memory: {first:<15}# elements per image, searched below
  options:                 # each policy's own options (budget.options.<policy>)
    rgn: {{refresh: epoch}}  # rgn = TraDy's D-Det RGN
"""


def write(full: bool, total: int, budgets: list[int], cheapest: int) -> Path:
    suffix = "_full" if full else ""
    seeds = f"    training.seed: {{choice: [{', '.join(map(str, SEEDS))}]}}\n"
    if full:
        trials, what, section, params = len(SEEDS), "the full fine-tuning baseline x 3 seeds.", "  policy: full\n", seeds
        budget = FULL.format(total=total)
    else:
        trials = len(POLICIES.split(", ")) * len(budgets) * len(SEEDS)
        what = f"policies {POLICIES} on input channels x 4 memory budgets x 3 seeds."
        section = BUDGET_SECTION.format(first=budgets[0])
        params = f"    budget.policy: {{choice: [{POLICIES}]}}\n    budget.memory: {{choice: [{', '.join(map(str, budgets))}]}}\n" + seeds
        shares = " / ".join(f"{b:,}" for b in scaled_budgets(total))
        budget = BUDGETED.format(total=total, shares=shares, cheapest=cheapest, budgets=" / ".join(f"{b:,}" for b in budgets))
    file = f"digits_vit{suffix}.yaml"
    common = {"size": IMAGE_SIZE, "weights": WEIGHTS, "epochs": EPOCHS, "warmup": WARMUP}
    text = HEADER.format(what=what, trials=trials, budget=budget, file=file, **common)
    text += BODY.format(suffix=suffix, budget_section=section, params=params, **common)
    path = HERE / file
    path.write_text(text)
    return path


def main() -> None:
    model = build_model(ModelConfig(name="vit", **SHAPE), num_classes=10)
    weights, activations = full_total(model, IMAGE_SIZE)
    total = weights + activations
    cheapest = cheapest_unit(model, IMAGE_SIZE)
    budgets = space_budgets(total, cheapest)
    print(f"vit {SHAPE} at {IMAGE_SIZE} px: {weights:,} weights + {activations:,} activations = {total:,} elements")
    for swint, share, budget in zip(SWINT_BUDGETS, scaled_budgets(total), budgets, strict=True):
        raised = f" (below the cheapest unit, {cheapest:,})" if budget != share else ""
        print(f"  {swint:>9,} of SwinT's {SWINT_TOTAL:,} ({100 * swint / SWINT_TOTAL:.4f} %) -> {share:,}{raised} -> {budget:,}")
    for full in (False, True):
        print(write(full, total, budgets, cheapest))


if __name__ == "__main__":
    main()
