"""Networks by name: a registry of model specs, ImageNet weights, local checkpoints.

A :class:`ModelSpec` says where a network comes from, its native input side
and how to get its ImageNet weights; its builder takes the model config and
the number of classes and returns a randomly initialised network whose final
``nn.Linear`` has that many outputs. Register one with
``@register_model("name", source=..., input_size=...)``; the trainer and the
search find it by name.

``model.pretrained`` is ``null`` (random init), ``imagenet`` (torchvision's
ImageNet weights from the torch hub cache, or the MCUNet zoo's from the zoo
cache; downloaded only when missing) or the path of a local state dict.
:func:`imagenet_weights_source` says where the weights are and come from
without fetching anything; :func:`imagenet_weights_path` fetches them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from neqtune.datasets.names import Registry
from neqtune.trainables.config import ConfigError, ModelConfig
from neqtune.trainables.models.zoo import RELEASE_URL, ZOO_NETS, build_zoo_model, fetch_weights, shipped_resolution, zoo_cache_dir

ModelBuilder = Callable[[ModelConfig, int], nn.Module]
"""``(model config, number of classes) -> randomly initialised network``."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's ImageNet weights live and come from.

    Attributes:
        path: the local file (in the torch hub cache or the zoo cache).
        url: where a run downloads it from when it is missing.
        what: the weights in words, for messages.
    """

    path: Path
    url: str
    what: str

    @property
    def cached(self) -> bool:
        """Whether the file is already there (nothing to download)."""
        return self.path.is_file()


WeightsLocator = Callable[[ModelConfig], WeightsSource]
"""``model config -> where its ImageNet state dict is and comes from`` (nothing is fetched)."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered network.

    Attributes:
        name: the registry key.
        build: the builder.
        source: where the architecture comes from (``torchvision``, ``mcunet-zoo``).
        input_size: native input side in pixels (what its ImageNet weights were trained at).
        imagenet: locates the ImageNet weights; ``None`` when there are none.
    """

    name: str
    build: ModelBuilder
    source: str
    input_size: int
    imagenet: WeightsLocator | None = None


_MODELS: Registry[ModelSpec] = Registry("model", "models")


def register_model(
    name: str, *, source: str, input_size: int, imagenet: WeightsLocator | None = None
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers a model builder under ``name``."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        _MODELS.add(name, ModelSpec(name, builder, source, input_size, imagenet))
        return builder

    return add


def model_names() -> list[str]:
    """Names of the registered models, sorted."""
    return _MODELS.names()


def model_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; ValueError listing the known ones otherwise."""
    return _MODELS.get(name)


def torchvision_weights(weights: torchvision.models.WeightsEnum) -> WeightsLocator:
    """Locator of torchvision ``weights`` in the torch hub cache (``$TORCH_HOME/hub/checkpoints``)."""

    def locate(config: ModelConfig) -> WeightsSource:
        url = weights.url
        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        return WeightsSource(path, url, f"torchvision's ImageNet weights of {config.name} ({weights})")

    return locate


# --- torchvision ---------------------------------------------------------------


@register_model("mbv2", source="torchvision", input_size=224, imagenet=torchvision_weights(torchvision.models.MobileNet_V2_Weights.DEFAULT))
def mobilenet_v2(config: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision MobileNetV2, width 1.0."""
    model: nn.Module = torchvision.models.mobilenet_v2(num_classes=num_classes)
    return model


@register_model("mbv2-w0.35", source="torchvision", input_size=224)
def mobilenet_v2_w035(config: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision MobileNetV2, width 0.35 (channels rounded to multiples of 8, 1280-wide last conv).

    Not the study's ``mbv2-w0.35``: that is the MCUNet-zoo model ``mbv2-w0.35-zoo``
    (same convs except a 448-wide last conv). torchvision has no ImageNet weights for it.
    """
    model: nn.Module = torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=0.35)
    return model


@register_model("resnet18", source="torchvision", input_size=224, imagenet=torchvision_weights(torchvision.models.ResNet18_Weights.DEFAULT))
def resnet18(config: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision ResNet-18."""
    model: nn.Module = torchvision.models.resnet18(num_classes=num_classes)
    return model


@register_model("resnet50", source="torchvision", input_size=224, imagenet=torchvision_weights(torchvision.models.ResNet50_Weights.DEFAULT))
def resnet50(config: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision ResNet-50."""
    model: nn.Module = torchvision.models.resnet50(num_classes=num_classes)
    return model


# --- MCUNet zoo ----------------------------------------------------------------


def _zoo_weights(config: ModelConfig) -> WeightsSource:
    stem = ZOO_NETS[config.name]
    return WeightsSource(zoo_cache_dir(config.zoo_dir) / f"{stem}.pth", RELEASE_URL + f"{stem}.pth", f"the ImageNet weights of {config.name}")


def _register_zoo_model(name: str) -> None:
    def build(config: ModelConfig, num_classes: int) -> nn.Module:
        return build_zoo_model(name, num_classes, net_config=config.net_config, zoo_dir=config.zoo_dir)

    build.__doc__ = f"MCUNet-zoo network {ZOO_NETS[name]} (from its JSON net config)."
    register_model(name, source="mcunet-zoo", input_size=shipped_resolution(name), imagenet=_zoo_weights)(build)


for _name in ZOO_NETS:
    _register_zoo_model(_name)


# --- checkpoints and the entry point ----------------------------------------------


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


def ungrouped_conv_params(model: nn.Module) -> int:
    """Conv parameters counted without ``/ groups`` (``in * out * kh * kw``, + biases).

    What the study's per-neuron count gives; a depthwise conv comes out
    ``in_channels`` times larger than it is. neqtune's own count is
    :func:`neqtune.trainables.budget.units.conv_neuron_params`.
    """
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += module.in_channels * module.out_channels * kh * kw + (module.out_channels if module.bias is not None else 0)
    return total


def imagenet_weights_source(config: ModelConfig) -> WeightsSource:
    """Where the ImageNet weights of ``config``'s model are cached and come from; fetches nothing.

    Raises:
        ConfigError: (``model.pretrained``) the model has no ImageNet weights.
    """
    spec = model_spec(config.name)
    if spec.imagenet is None:
        raise ConfigError("model.pretrained", f"model {config.name!r} has no ImageNet weights")
    return spec.imagenet(config)


def imagenet_weights_path(config: ModelConfig) -> Path:
    """The local file of the ImageNet weights of ``config``'s model, fetched into its cache when missing.

    Raises:
        ConfigError: (``model.pretrained``) the model has no ImageNet weights,
            or they are neither cached nor downloadable (names the file).
    """
    source = imagenet_weights_source(config)
    return fetch_weights(source.url, source.path, key="model.pretrained", what=source.what)


def build_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """Build the network named in ``config`` with a ``num_classes``-way classifier.

    ``config.pretrained``: ``imagenet`` loads the model's ImageNet weights
    (fetched into their cache when missing), any other value is a local
    state-dict file; the classifier keeps its fresh init when the number of
    classes differs.

    Raises:
        ValueError: unknown model name (lists the known ones); a zoo net
            config that cannot be built.
        ConfigError: ``imagenet`` for a model without ImageNet weights, or
            weights neither cached nor downloadable (names the file).
    """
    spec = model_spec(config.name)
    model = spec.build(config, num_classes)
    if config.pretrained == "imagenet":
        load_checkpoint(model, imagenet_weights_path(config))
    elif config.pretrained:
        load_checkpoint(model, config.pretrained)
    return model
