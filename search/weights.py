"""Fetching the ImageNet weights a space needs, before a search starts Ray.

Loading a space checks only that a ``pretrained: imagenet`` model has
ImageNet weights at all, and a dry run only says whether each file is cached
and where a run would download it from (:func:`neqtune.search.dry_run.weights_line`).
A search fetches every missing file first, so a run that cannot get its
weights (offline) is refused with one line naming the file, before any trial.
"""

from __future__ import annotations

from neqtune.search.dry_run import choices
from neqtune.search.space import Space
from neqtune.trainables.config import ModelConfig, from_mapping


def imagenet_models(space: Space) -> list[ModelConfig]:
    """The model configs of ``space`` that start from ImageNet weights (each searched model name once)."""
    base = space.base.get("model", {})
    return [
        from_mapping(ModelConfig, {**base, "name": name, "pretrained": pretrained}, "model")
        for name in dict.fromkeys(choices(space, "model.name"))
        for pretrained in dict.fromkeys(choices(space, "model.pretrained"))
        if pretrained == "imagenet"
    ]


def fetch_space_weights(space: Space) -> None:
    """Fetch the missing ImageNet weights of every model ``space`` can run into their caches.

    Raises:
        ConfigError: (``model.pretrained``) a file is missing and cannot be
            downloaded, naming the file and its URL.
    """
    from neqtune.trainables.models.registry import imagenet_weights_path

    for config in imagenet_models(space):
        imagenet_weights_path(config)
