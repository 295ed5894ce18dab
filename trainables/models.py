"""Networks by name: a registry of builders, plus loading a local checkpoint.

A builder takes the number of classes and returns a randomly initialised
network whose final ``nn.Linear`` has that many outputs. Register a new one
with ``@register_model("name")``; the trainer and the search find it by name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from trainables.config import ModelConfig

ModelBuilder = Callable[[int], nn.Module]

_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers a model builder under ``name``."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = builder
        return builder

    return add


def model_names() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


@register_model("mbv2")
def mobilenet_v2(num_classes: int) -> nn.Module:
    """torchvision MobileNetV2, width 1.0."""
    model: nn.Module = torchvision.models.mobilenet_v2(num_classes=num_classes)
    return model


@register_model("mbv2-w0.35")
def mobilenet_v2_w035(num_classes: int) -> nn.Module:
    """torchvision MobileNetV2, width 0.35 (channels rounded to multiples of 8)."""
    model: nn.Module = torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=0.35)
    return model


@register_model("resnet18")
def resnet18(num_classes: int) -> nn.Module:
    """torchvision ResNet-18."""
    model: nn.Module = torchvision.models.resnet18(num_classes=num_classes)
    return model


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the last ``nn.Linear`` (the classification head)."""
    linears: list[str] = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


def load_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Load a local state dict into ``model``; the classifier may differ in size.

    The file may hold a plain state dict or a dict with a ``state_dict`` or
    ``model`` entry. Classifier tensors whose shape differs from the model's
    (another number of classes) are skipped and keep their fresh init.

    Returns:
        The skipped keys.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file does not fit the model (names the keys).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: no checkpoint file at {path}")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
    head = classifier_name(model) + "."
    own = model.state_dict()
    skipped = [k for k, v in loaded.items() if k.startswith(head) and k in own and own[k].shape != v.shape]
    state = {k: v for k, v in loaded.items() if k not in skipped}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return skipped


def build_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """Build the network named in ``config`` with a ``num_classes``-way classifier.

    Raises:
        ValueError: unknown model name (lists the known ones).
    """
    if config.name not in _MODELS:
        raise ValueError(f"unknown model {config.name!r}; known models: {', '.join(model_names())}")
    model = _MODELS[config.name](num_classes)
    if config.pretrained:
        load_checkpoint(model, config.pretrained)
    return model
