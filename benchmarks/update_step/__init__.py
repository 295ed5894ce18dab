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
