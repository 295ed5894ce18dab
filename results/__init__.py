"""Result tables of neqtune experiments.

Every experiment writes under ``results/<experiment>/`` (git ignores them):
``epochs.parquet`` (one row per trial-epoch), ``trials.parquet`` (one row
per trial), ``tensorboard/`` and Ray Tune's trial directories.
"""
