"""One command that checks neqtune on a GPU and writes what it found: ``python -m benchmarks.gpu_check``.

Meant to take under five minutes on one GPU (an H200); without a CUDA device it prints one
line and exits 0, writing nothing. Every section is timed and guarded: one
that raises, or whose check does not hold, is reported as FAILED with its
error and makes the exit code 1, and the others still run. Sections
(``--sections`` picks some):

- ``engine``: the sparse-update engine computes on CUDA, in float64, the
  conv weight gradients of the masked path (an ordinary model, full
  backward, the frozen rows or columns zeroed): for ``mbv2-w0.35`` and
  ``resnet18``, every registered selection policy and each unit it selects
  (its real first mask, from a :class:`~neqtune.trainables.trainer.BudgetedRun` on
  digits, where one builds; else a seeded mask), plus a seeded mask per unit
  that leaves every conv frozen, few, most or all of its channels. Holds
  when the updated part differs by less than :data:`TOLERANCE`, the frozen
  part is exactly 0 and every other parameter's gradient agrees as well.
- ``precision``: a 3-epoch digits trial per ``training.precision`` (and bf16
  in channels-last layout): final validation top-1, test top-1 at the best
  validation epoch, median epoch time. Fails on a non-finite loss.
- ``update_step``: the step times of :mod:`benchmarks.update_step` (paths
  full, bound, masked and engine at scheme 1) per precision and layout, on
  the GPU: the same runners and seeded round order, each step under autocast
  (:class:`~neqtune.trainables.update.precision.MixedPrecision`) and timed between two
  device synchronisations.
- ``pipeline``: images per second the input pipeline delivers to the GPU
  (batch on the device, augmented, synchronised): in-memory ``uint8``
  arrays (CIFAR-like) with ``data.augment`` pil and batched, and a folder
  of 500x375 JPEGs with ``data.cache`` none and decoded; each against the
  ``mbv2-w0.35`` engine step's images per second (at least 1: the input
  does not bound the step).
- ``search``: a real small search (digits, 8 trials of 3 epochs) run twice
  through :func:`neqtune.search.experiment.run_search`, one trial per GPU and four
  sharing it; trials per hour of each and their ratio.

The report goes to ``docs/benchmarks/gpu_check.md`` (``--out``), its raw
figures to the ``.json`` beside it; ``--quick`` runs every section at toy
sizes (into ``gpu_check_quick.md`` unless ``--out`` says otherwise).
"""

from __future__ import annotations
