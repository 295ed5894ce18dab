"""Models by name: the study's MCUNet-zoo and torchvision networks, registered with :func:`register_model`."""

from __future__ import annotations

from neqtune.trainables.models.registry import build_model, model_names, register_model

__all__ = ["build_model", "model_names", "register_model"]
