"""Networks by name: a registry of model specs, ImageNet weights, local checkpoints.

A :class:`ModelSpec` says where a network comes from, its native input side
and how to get its ImageNet weights; its builder takes the model config and
the number of classes and returns a randomly initialised network whose final
``nn.Linear`` has that many outputs. Register one with
``@register_model("name", source=..., input_size=...)``; the trainer and the
search find it by name.

Beside the registered names, ``model.name`` takes two prefixed forms
(:func:`model_spec`): ``torchvision:<builder>``, any classification builder of
``torchvision.models`` (ImageNet weights from the builder's ``DEFAULT``
weights), and ``<module>:<callable>``, a factory of the researcher's own (a
plug-in's, or any importable module's) called as ``factory(num_classes=n)``
that returns an ``nn.Module``.

Every network's classifier (its final ``nn.Linear``, always trained in full)
is found by :func:`find_classifier`: ``model.classifier`` when given, else the
first of torchvision's attribute names ``fc``, ``classifier``, ``head``,
``heads.head``, ``heads``, ``last_linear`` that holds an ``nn.Linear`` (the last one
inside a container), else the last ``nn.Linear`` in module order. A
classifier with another number of outputs is replaced by a fresh one.

``model.pretrained`` is ``null`` (random init), ``imagenet`` (torchvision's
ImageNet weights from the torch hub cache, or the MCUNet zoo's from the zoo
cache; downloaded only when missing) or the path of a local state dict.
:func:`imagenet_weights_source` says where the weights are and come from
without fetching anything; :func:`imagenet_weights_path` fetches them.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from neqtune.datasets.names import Registry, origin_of
from neqtune.trainables.config import ConfigError, ModelConfig
from neqtune.trainables.models.transformers import VIT_B_16, VIT_KEYS, VIT_NATIVE_SIDE, PatchViT, vit_shape
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

SideMultiple = Callable[[ModelConfig], int]
"""``model config -> the number its input side must be a multiple of`` (a transformer's patch size)."""

ShapeCheck = Callable[[ModelConfig], object]
"""Resolves a model's architecture keys; raises ``ConfigError`` (its key relative to the model section) for a bad combination."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered network.

    Attributes:
        name: the registry key.
        build: the builder.
        source: where the architecture comes from (``torchvision``, ``mcunet-zoo``).
        input_size: native input side in pixels: what its ImageNet weights were
            trained at, or the side the papers run it at (``swin_t``: 128, TraDy's).
        imagenet: locates the ImageNet weights; ``None`` when there are none.
        side_multiple: the number the input side must be a multiple of, from
            the model config (a transformer's patch size); ``None``: any side
            the network's layers take.
        keys: the architecture keys of :class:`ModelConfig` it takes
            (:data:`~neqtune.trainables.config.ARCHITECTURE_KEYS`); any other model refuses them.
        shape: checks those keys together (the heads divide the width, ...).
    """

    name: str
    build: ModelBuilder
    source: str
    input_size: int
    imagenet: WeightsLocator | None = None
    side_multiple: SideMultiple | None = None
    keys: tuple[str, ...] = ()
    shape: ShapeCheck | None = None


_MODELS: Registry[ModelSpec] = Registry("model", "models")


def register_model(
    name: str,
    *,
    source: str,
    input_size: int,
    imagenet: WeightsLocator | None = None,
    side_multiple: SideMultiple | None = None,
    keys: tuple[str, ...] = (),
    shape: ShapeCheck | None = None,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers a model builder under ``name`` (the keyword arguments are :class:`ModelSpec`'s)."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        spec = ModelSpec(name, builder, source, input_size, imagenet, side_multiple, keys, shape)
        _MODELS.add(name, spec, origin=origin_of(builder))
        return builder

    return add


def model_names() -> list[str]:
    """Names of the registered models, sorted."""
    return _MODELS.names()


TORCHVISION_PREFIX = "torchvision:"
CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "head", "heads.head", "heads", "last_linear")
"""Where torchvision (and timm-like) networks keep their classifier, in the order they are tried."""
DEFAULT_INPUT_SIZE = 224


def model_spec(name: str) -> ModelSpec:
    """The spec of model ``name``: a registered name, ``torchvision:<builder>`` or ``<module>:<callable>``.

    Raises:
        ValueError: an unknown registered name (lists the known ones), an
            unknown torchvision builder (lists close matches), a module that
            cannot be imported or a callable it does not have.
    """
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_spec(name.removeprefix(TORCHVISION_PREFIX))
    if ":" in name:
        return factory_spec(name)
    return _MODELS.get(name)


@functools.cache
def torchvision_spec(builder: str) -> ModelSpec:
    """The spec of ``torchvision:<builder>``: ``torchvision.models.get_model(builder, num_classes=n)``, random init;
    its ``DEFAULT`` weights are its ImageNet weights, and their crop size its native input side."""
    known = torchvision.models.list_models(module=torchvision.models)
    if builder not in known:
        close = difflib.get_close_matches(builder, known, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(TORCHVISION_PREFIX + c for c in close)}" if close else "see torchvision.models.list_models()"
        raise ValueError(f"unknown torchvision classification builder {builder!r}; {hint}")
    weights = torchvision.models.get_model_weights(builder)
    default = getattr(weights, "DEFAULT", None)
    input_size = int(default.transforms().crop_size[0]) if default is not None else DEFAULT_INPUT_SIZE
    extra = {"aux_logits": False} if builder in ("googlenet", "inception_v3") else {}  # one output tensor in training too

    def build(config: ModelConfig, num_classes: int) -> nn.Module:
        model: nn.Module = torchvision.models.get_model(builder, weights=None, num_classes=num_classes, **extra)
        return model

    build.__doc__ = f"torchvision's {builder}."
    name = TORCHVISION_PREFIX + builder
    return ModelSpec(name, build, "torchvision", input_size, torchvision_weights(default) if default is not None else None)


def factory_spec(name: str) -> ModelSpec:
    """The spec of ``<module>:<callable>``: ``callable(num_classes=n)`` must return an ``nn.Module``.

    The module is imported by name (a plug-in is imported already); the
    callable may be a dotted path inside it (``zoo:Nets.small``). Its native
    input side is the callable's ``input_size`` attribute, else 224.
    """
    module_name, _, qualname = name.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"expected <module>:<callable>, got {name!r}")
    try:
        found: object = importlib.import_module(module_name)
    except Exception as err:
        raise ValueError(f"{name}: cannot import module {module_name!r}: {type(err).__name__}: {str(err).strip().splitlines()[0]}") from None
    for part in qualname.split("."):
        if not hasattr(found, part):
            raise ValueError(f"{name}: module {module_name!r} has no {qualname!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"{name}: {qualname!r} is a {type(found).__name__}, not a callable")
    factory = found

    def build(config: ModelConfig, num_classes: int) -> nn.Module:
        try:
            model = factory(num_classes=num_classes)
        except Exception as err:
            raise ValueError(f"{name}(num_classes={num_classes}) failed: {type(err).__name__}: {str(err).strip().splitlines()[0]}") from None
        if not isinstance(model, nn.Module):
            raise ValueError(f"{name}(num_classes={num_classes}) returned a {type(model).__name__}, not an nn.Module")
        return model

    input_size = getattr(factory, "input_size", DEFAULT_INPUT_SIZE)
    return ModelSpec(name, build, "callable", int(input_size) if isinstance(input_size, int) else DEFAULT_INPUT_SIZE)


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


@register_model(
    "swin_t", source="torchvision", input_size=128, imagenet=torchvision_weights(torchvision.models.Swin_T_Weights.IMAGENET1K_V1),
    side_multiple=lambda config: 4,
)  # fmt: skip
def swin_t(config: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision Swin-T (4 px patches, windows of 7, padded to whole windows); run at 128 px as TraDy runs it."""
    model: nn.Module = torchvision.models.swin_t(num_classes=num_classes)
    return model


@register_model(
    "vit_b_16", source="torchvision", input_size=224, imagenet=torchvision_weights(torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1),
    side_multiple=lambda config: VIT_B_16.patch_size,
)  # fmt: skip
def vit_b_16(config: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision ViT-B/16 in torchvision's layout (its weights load), attention as ``nn.Linear`` modules, at any multiple of 16 px."""
    return PatchViT(VIT_B_16, num_classes)


# --- neqtune's own ----------------------------------------------------------------


@register_model("vit", source="neqtune", input_size=VIT_NATIVE_SIDE, side_multiple=lambda config: vit_shape(config).patch_size, keys=VIT_KEYS, shape=vit_shape)
def vit(config: ModelConfig, num_classes: int) -> nn.Module:
    """A small vision transformer shaped by the model keys patch_size, depth, width, heads, mlp_ratio (for offline runs and tests)."""
    return PatchViT(vit_shape(config), num_classes)


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


class ClassifierError(ValueError):
    """A network whose classifier cannot be found, or a ``model.classifier`` that names no ``nn.Linear``."""


def _last_linear(module: nn.Module, prefix: str = "") -> str | None:
    names = [name for name, child in module.named_modules(prefix=prefix) if isinstance(child, nn.Linear)]
    return names[-1] if names else None


def find_classifier(model: nn.Module, name: str | None = None) -> str:
    """Qualified name of the classifier: ``name`` when given, else the first of :data:`CLASSIFIER_ATTRIBUTES`
    that is (or holds) an ``nn.Linear``, else the last ``nn.Linear`` in module order.

    Raises:
        ClassifierError: ``name`` is no ``nn.Linear`` of the model, or the model has no ``nn.Linear`` at all.
    """
    if name is not None:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ClassifierError(f"{type(model).__name__} has no module {name!r}") from None
        if not isinstance(module, nn.Linear):
            raise ClassifierError(f"{name!r} is a {type(module).__name__}, not an nn.Linear")
        return name
    for attribute in CLASSIFIER_ATTRIBUTES:
        try:
            found = _last_linear(model.get_submodule(attribute), attribute)
        except AttributeError:
            continue
        if found is not None:
            return found
    last = _last_linear(model)
    if last is None:
        raise ClassifierError(
            f"{type(model).__name__} has no nn.Linear classifier (looked at {', '.join(CLASSIFIER_ATTRIBUTES)} and every module); "
            "the head must be an nn.Linear, found by name or named with model.classifier"
        )
    return last


HEAD_MARK = "_neqtune_classifier"
"""The attribute where :func:`fit_classifier` leaves the classifier's name on the model it fitted (``model.classifier``
of the config, or the one found), so that everything asking later finds the same layer."""


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the classification head: the one :func:`fit_classifier` fitted (``model.classifier`` when the
    config names it), else :func:`find_classifier` without a given name."""
    marked = getattr(model, HEAD_MARK, None)
    return marked if isinstance(marked, str) else find_classifier(model)


def fit_classifier(model: nn.Module, num_classes: int, name: str | None = None) -> str:
    """Make the classifier (:func:`find_classifier`) give ``num_classes`` outputs: a fresh ``nn.Linear`` replaces one
    with another count. Returns its qualified name."""
    found = find_classifier(model, name)
    head = model.get_submodule(found)
    assert isinstance(head, nn.Linear)
    if head.out_features != num_classes:
        parent, _, leaf = found.rpartition(".")
        setattr(model.get_submodule(parent), leaf, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
    object.__setattr__(model, HEAD_MARK, found)
    return found


def load_checkpoint(model: nn.Module, path: str | Path, *, classifier: str | None = None) -> list[str]:
    """Load a local state dict into ``model``; the classifier may differ in size.

    The file may hold a plain state dict or a dict with a ``state_dict`` or
    ``model`` entry. Classifier tensors whose shape differs from the model's
    (another number of classes) are skipped and keep their fresh init;
    ``classifier`` names the head (see :func:`find_classifier`).

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
    head = find_classifier(model, classifier) + "."
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

    The classifier is found by :func:`find_classifier` (``config.classifier``
    when given) and replaced when its number of outputs differs.

    Raises:
        ValueError: unknown model name (lists the known ones); a zoo net
            config that cannot be built; a factory that returns no
            ``nn.Module``; a classifier that cannot be found.
        ConfigError: ``imagenet`` for a model without ImageNet weights, or
            weights neither cached nor downloadable (names the file).
    """
    spec = model_spec(config.name)
    model = spec.build(config, num_classes)
    fit_classifier(model, num_classes, config.classifier)
    if config.pretrained == "imagenet":
        load_checkpoint(model, imagenet_weights_path(config), classifier=config.classifier)
    elif config.pretrained:
        load_checkpoint(model, config.pretrained, classifier=config.classifier)
    return model
