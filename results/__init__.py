"""Result tables of neqtune experiments, and their analysis.

Every experiment writes under ``results/<experiment>/`` (git ignores them):
``epochs.parquet`` (one row per trial-epoch), ``trials.parquet`` (one row
per trial), ``tensorboard/`` and Ray Tune's trial directories.

``python -m neqtune.results.analyze <experiment dir> [...] [-o <out dir>]`` merges
experiments into the study's table, the Pareto front of test top-1 versus
budget, and plots (:mod:`neqtune.results.analyze`: it reads them with
:mod:`neqtune.results.loading`, computes with :mod:`neqtune.results.outcomes`, and
writes with :mod:`neqtune.results.report` and :mod:`neqtune.results.plots`). The
modules are not imported here, so that ``python -m neqtune.results.analyze`` runs
the module once.
"""
