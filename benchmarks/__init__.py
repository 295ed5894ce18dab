"""Benchmarks shipped with neqtune, each runnable as ``python -m benchmarks.<module>``.

- :mod:`benchmarks.update_step`: per-step time and memory of the update paths
  (full update, the study's mask-after-backward, the sparse-update engine,
  and the bound with every conv weight gradient off).
- :mod:`benchmarks.bn_update`: the accuracy effect of ``budget.bn_update:
  selected`` against ``all`` in a short real training run.
- :mod:`benchmarks.gpu_check`: one command that checks neqtune on a GPU
  (engine exactness, precisions, step times, input pipeline, trials per GPU).

:mod:`benchmarks.report` holds what their reports share: Markdown tables,
number cells, the machine line, and the ``.md`` written beside its
``.parquet`` or ``.json``.
"""

from __future__ import annotations
