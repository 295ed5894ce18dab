"""MCUNet model-zoo networks, built from the zoo's JSON net configs.

The MCUNet zoo (MIT HAN Lab) describes each network as a ProxylessNAS-style
JSON config: a first conv, a list of mobile inverted bottleneck blocks
(kernel size, expand ratio, stride, width, identity shortcut or not), an
optional 1x1 feature-mix conv and a linear classifier, plus the input
resolution. Its ImageNet weights are a ``.pth`` state dict beside the JSON.

neqtune ships the configs of the zoo models the study used (architecture
facts, in the zoo's own JSON format) under ``zoo_configs/``, so every zoo
model builds offline with random init. A config in the zoo cache directory
(``model.zoo_dir``, else ``$NEQ_MCUNET``, else ``~/.torch/mcunet``) or an
explicit ``model.net_config`` file takes precedence. Module names follow the
zoo's layout (``first_conv.conv``, ``blocks.3.mobile_inverted_conv.depth_conv.conv``,
``classifier.linear``), so the zoo's state dicts load as they are.
"""

from __future__ import annotations

import json
import os
import urllib.error
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neqtune.trainables.config import ConfigError

ZOO_NETS: dict[str, str] = {
    "mcunet-in0": "mcunet-10fps_imagenet",
    "mcunet-in1": "mcunet-5fps_imagenet",
    "mcunet-in2": "mcunet-256kb-1mb_imagenet",
    "mcunet-in3": "mcunet-320kb-1mb_imagenet",
    "mcunet-in4": "mcunet-512kb-2mb_imagenet",
    "mbv2-w0.35-zoo": "mbv2-w0.35-r144_imagenet",
    "proxyless-w0.3": "proxyless-w0.3-r176_imagenet",
}
"""neqtune model key -> the zoo's file stem (``<stem>.json``, ``<stem>.pth``)."""

RELEASE_URL = "https://hanlab18.mit.edu/projects/tinyml/mcunet/release/"
SHIPPED_CONFIGS = Path(__file__).with_name("zoo_configs")
DEFAULT_ZOO_DIR = "~/.torch/mcunet"
ZOO_DIR_ENV = "NEQ_MCUNET"


class ZooConfigError(ValueError):
    """A zoo JSON net config that cannot be built; the message names the file and the key."""


@dataclass(frozen=True)
class ConvSpec:
    """A conv + batch norm + activation layer (the zoo's ``ConvLayer``)."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    act: str | None


@dataclass(frozen=True)
class BlockSpec:
    """A mobile inverted bottleneck block; ``mid_channels == 0`` marks a skip (zero) block."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    expand_ratio: float
    mid_channels: int
    act: str | None
    residual: bool

    @property
    def is_skip(self) -> bool:
        """A ``ZeroLayer`` block: the input passes through unchanged."""
        return self.mid_channels == 0


@dataclass(frozen=True)
class NetSpec:
    """A whole zoo network, parsed from its JSON config."""

    first_conv: ConvSpec
    blocks: tuple[BlockSpec, ...]
    feature_mix: ConvSpec | None
    classifier_in: int
    dropout: float
    resolution: int
    bn_momentum: float
    bn_eps: float


# --- reading the JSON ---------------------------------------------------------


def _get(node: Mapping[str, Any], key: str, source: str, path: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(node, Mapping) or key not in node:
        raise ZooConfigError(f"{source}: {path}.{key}: missing")
    value = node[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ZooConfigError(f"{source}: {path}.{key}: unexpected value {value!r}")
    return value


def _act(node: Mapping[str, Any], source: str, path: str) -> str | None:
    act = node.get("act_func")
    if act not in (None, "none", "relu", "relu6", "h_swish"):
        raise ZooConfigError(f"{source}: {path}.act_func: unsupported activation {act!r}")
    return None if act in (None, "none") else str(act)


def _parse_conv(node: Any, source: str, path: str) -> ConvSpec:
    if not isinstance(node, Mapping) or node.get("name") != "ConvLayer":
        raise ZooConfigError(f"{source}: {path}: expected a ConvLayer, got {node!r:.80}")
    if node.get("groups", 1) != 1 or node.get("bias", False) or node.get("use_bn", True) is not True:
        raise ZooConfigError(f"{source}: {path}: only ungrouped, bias-free ConvLayers with batch norm are supported")
    return ConvSpec(
        in_channels=_get(node, "in_channels", source, path, int),
        out_channels=_get(node, "out_channels", source, path, int),
        kernel_size=_get(node, "kernel_size", source, path, int),
        stride=int(node.get("stride", 1)),
        act=_act(node, source, path),
    )


def _parse_block(node: Any, source: str, path: str, in_channels: int) -> BlockSpec:
    conv = node.get("mobile_inverted_conv") if isinstance(node, Mapping) else None
    shortcut = node.get("shortcut") if isinstance(node, Mapping) else None
    if conv is None or conv.get("name") == "ZeroLayer":
        if shortcut is None:
            raise ZooConfigError(f"{source}: {path}: a zero block needs an identity shortcut")
        return BlockSpec(in_channels, in_channels, 0, 1, 0.0, 0, None, True)
    where = f"{path}.mobile_inverted_conv"
    if conv.get("name") != "MBInvertedConvLayer":
        raise ZooConfigError(f"{source}: {where}.name: expected MBInvertedConvLayer or ZeroLayer, got {conv.get('name')!r}")
    if conv.get("use_se"):
        raise ZooConfigError(f"{source}: {where}.use_se: squeeze-excitation blocks are not supported")
    block_in = _get(conv, "in_channels", source, where, int)
    if block_in != in_channels:
        raise ZooConfigError(f"{source}: {where}.in_channels: {block_in} does not match the previous layer's {in_channels} channels")
    expand = _get(conv, "expand_ratio", source, where, (int, float))
    mid = conv.get("mid_channels")
    mid_channels = round(block_in * expand) if mid is None else int(mid)
    out = _get(conv, "out_channels", source, where, int)
    stride = _get(conv, "stride", source, where, int)
    if shortcut is not None and (stride != 1 or block_in != out):
        raise ZooConfigError(f"{source}: {path}.shortcut: an identity shortcut needs stride 1 and equal widths")
    return BlockSpec(
        in_channels=block_in,
        out_channels=out,
        kernel_size=_get(conv, "kernel_size", source, where, int),
        stride=stride,
        expand_ratio=float(expand),
        mid_channels=mid_channels,
        act=_act(conv, source, where),
        residual=shortcut is not None,
    )


def parse_net_config(raw: Any, source: str) -> NetSpec:
    """Check a zoo JSON net config (already parsed) and turn it into a :class:`NetSpec`.

    Raises:
        ZooConfigError: a missing or unsupported entry, naming ``source`` and the key.
    """
    if not isinstance(raw, Mapping):
        raise ZooConfigError(f"{source}: expected a JSON object with first_conv, blocks, classifier")
    first = _parse_conv(raw.get("first_conv"), source, "first_conv")
    blocks_raw = _get(raw, "blocks", source, "net", list)
    blocks: list[BlockSpec] = []
    channels = first.out_channels
    for i, node in enumerate(blocks_raw):
        block = _parse_block(node, source, f"blocks[{i}]", channels)
        blocks.append(block)
        channels = block.out_channels
    mix = raw.get("feature_mix_layer")
    feature_mix = None if mix is None else _parse_conv(mix, source, "feature_mix_layer")
    if feature_mix is not None:
        if feature_mix.in_channels != channels:
            raise ZooConfigError(f"{source}: feature_mix_layer.in_channels: {feature_mix.in_channels}, the last block gives {channels}")
        channels = feature_mix.out_channels
    classifier = _get(raw, "classifier", source, "net", Mapping)
    classifier_in = _get(classifier, "in_features", source, "classifier", int)
    if classifier_in != channels:
        raise ZooConfigError(f"{source}: classifier.in_features: {classifier_in}, the network gives {channels}")
    bn = raw.get("bn") or {}
    return NetSpec(
        first_conv=first,
        blocks=tuple(blocks),
        feature_mix=feature_mix,
        classifier_in=classifier_in,
        dropout=float(classifier.get("dropout_rate", 0) or 0),
        resolution=_get(raw, "resolution", source, "net", int),
        bn_momentum=float(bn.get("momentum", 0.1)),
        bn_eps=float(bn.get("eps", 1e-5)),
    )


def read_net_config(path: Path) -> NetSpec:
    """Read and check the JSON net config at ``path``."""
    try:
        raw = json.loads(path.read_text())
    except OSError as err:
        raise ZooConfigError(f"{path}: cannot read the net config: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ZooConfigError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    return parse_net_config(raw, str(path))


# --- where the files are ------------------------------------------------------


def zoo_cache_dir(zoo_dir: str | None = None) -> Path:
    """The zoo cache directory: ``zoo_dir``, else ``$NEQ_MCUNET``, else ``~/.torch/mcunet``."""
    return Path(zoo_dir or os.environ.get(ZOO_DIR_ENV) or DEFAULT_ZOO_DIR).expanduser()


def net_config_path(name: str, *, net_config: str | None = None, zoo_dir: str | None = None) -> Path:
    """The JSON config that defines zoo model ``name``: explicit file, cached file, or the shipped one."""
    if net_config is not None:
        return Path(net_config).expanduser()
    cached = zoo_cache_dir(zoo_dir) / f"{ZOO_NETS[name]}.json"
    return cached if cached.is_file() else SHIPPED_CONFIGS / f"{ZOO_NETS[name]}.json"


def fetch_weights(url: str, path: Path, *, key: str, what: str) -> Path:
    """``path`` if the file is there, else download ``url`` to it.

    Raises:
        ConfigError: (key ``key``) the file is missing and cannot be downloaded,
            naming the file and where it comes from.
    """
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        reason = getattr(err, "reason", None) or err
        raise ConfigError(
            key, f"{what} are not at {path} and downloading {url} failed ({reason}); download that file and put it at {path}"
        ) from None
    return path


def zoo_weights_path(name: str, zoo_dir: str | None = None) -> Path:
    """The ImageNet state dict of zoo model ``name``, downloaded into the cache when missing."""
    stem = ZOO_NETS[name]
    return fetch_weights(
        RELEASE_URL + f"{stem}.pth", zoo_cache_dir(zoo_dir) / f"{stem}.pth", key="model.pretrained", what=f"the ImageNet weights of {name}"
    )


# --- the network --------------------------------------------------------------


def _activation(name: str | None) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "h_swish":
        return nn.Hardswish(inplace=True)
    return nn.Identity()


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, act: str | None, *, groups: int = 1) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        bn=nn.BatchNorm2d(out_ch),
    )
    if act is not None:
        layers["act"] = _activation(act)
    return nn.Sequential(layers)


class MBInvertedConv(nn.Module):
    """1x1 expansion (unless the ratio is 1), depthwise k x k, 1x1 linear projection."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        mid = spec.mid_channels
        self.inverted_bottleneck = None if spec.expand_ratio == 1 else _conv_bn(spec.in_channels, mid, 1, 1, spec.act)
        self.depth_conv = _conv_bn(mid, mid, spec.kernel_size, spec.stride, spec.act, groups=mid)
        self.point_linear = _conv_bn(mid, spec.out_channels, 1, 1, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        out: torch.Tensor = self.point_linear(self.depth_conv(x))
        return out


class MBBlock(nn.Module):
    """One block: the inverted bottleneck, plus the input when it has an identity shortcut."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.mobile_inverted_conv = None if spec.is_skip else MBInvertedConv(spec)
        self.residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mobile_inverted_conv is None:
            return x
        out: torch.Tensor = self.mobile_inverted_conv(x)
        return out + x if self.residual else out


class ZooNet(nn.Module):
    """A ProxylessNAS-style network of the MCUNet zoo (global average pooling before the classifier)."""

    def __init__(self, spec: NetSpec, num_classes: int) -> None:
        super().__init__()
        first = spec.first_conv
        self.resolution = spec.resolution
        self.first_conv = _conv_bn(first.in_channels, first.out_channels, first.kernel_size, first.stride, first.act)
        self.blocks = nn.ModuleList(MBBlock(block) for block in spec.blocks)
        mix = spec.feature_mix
        self.feature_mix_layer = None if mix is None else _conv_bn(mix.in_channels, mix.out_channels, mix.kernel_size, mix.stride, mix.act)
        head: OrderedDict[str, nn.Module] = OrderedDict()
        if spec.dropout > 0:
            head["dropout"] = nn.Dropout(spec.dropout)
        head["linear"] = nn.Linear(spec.classifier_in, num_classes)
        self.classifier = nn.Sequential(head)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum, module.eps = spec.bn_momentum, spec.bn_eps
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        if self.feature_mix_layer is not None:
            x = self.feature_mix_layer(x)
        logits: torch.Tensor = self.classifier(x.mean(dim=(2, 3)))
        return logits


def _init_weights(model: nn.Module) -> None:
    """Random init as torchvision's MobileNetV2 does it (He normal, unit BN, small linear)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


def build_zoo_model(name: str, num_classes: int, *, net_config: str | None = None, zoo_dir: str | None = None) -> ZooNet:
    """Build zoo model ``name`` with random init and a ``num_classes``-way classifier.

    Raises:
        ZooConfigError: the net config is missing or cannot be built (names the file and key).
    """
    path = net_config_path(name, net_config=net_config, zoo_dir=zoo_dir)
    if not path.is_file():
        raise ZooConfigError(f"{path}: no such net config file")
    return ZooNet(read_net_config(path), num_classes)


def shipped_resolution(name: str) -> int:
    """The native input side of zoo model ``name`` (from its shipped config)."""
    return read_net_config(SHIPPED_CONFIGS / f"{ZOO_NETS[name]}.json").resolution
