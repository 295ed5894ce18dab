"""Typed configuration of one training run, loaded from plain mappings (YAML).

One dataclass per section (data, model, training, budget). Loading rejects
unknown keys and wrong types with the dotted path of the key, then each
section validates its values once; after that the objects are passed around
explicitly. ``TrialConfig.to_dict()`` gives back the resolved values, which
are saved with every run and flattened into every result row.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (int -> float, mapping -> dataclass)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
        item_type = typing.get_args(tp)[0]
        return [_convert(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        _, value_type = typing.get_args(tp)
        return {str(k): _convert(v, value_type, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_mapping(typing.cast(type[Any], tp), value, path)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")


def from_mapping(cls: type[T], data: Any, path: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.

    Missing keys take the field defaults. After construction, a ``validate``
    method of the dataclass (if any) is called with ``path``.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls))}
    for key in data:
        if key not in fields:
            raise ConfigError(_join(path, str(key)), f"unknown key; known keys: {', '.join(fields)}")
    values = {name: _convert(data[name], hints[name], _join(path, name)) for name in fields if name in data}
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


@dataclass
class DataConfig:
    """Which data set, at what size, and how it is split.

    ``velocity_images`` images are carved out of the training set for the
    velocity split; ``val_fraction`` of the rest becomes the validation
    split; ``test_fraction`` applies only to data sets without an official
    test split (digits). ``root`` is the data set's directory (default
    ``$NEQ_DATA/<name>``); ``download`` lets torchvision fetch the data
    sets it can (CIFAR, Flowers, Food, Pets, Fashion-MNIST) when missing.
    """

    name: str = "digits"
    root: str | None = None
    image_size: int = 32
    batch_size: int = 32
    eval_batch_size: int = 256
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    velocity_images: int = 10
    split_seed: int = 0
    download: bool = False

    def validate(self, path: str) -> None:
        from neqtune_datasets import dataset_names

        _require(
            self.name in dataset_names(),
            _join(path, "name"),
            f"unknown data set {self.name!r}; known data sets: {', '.join(dataset_names())}",
        )
        _require(self.image_size >= 8, _join(path, "image_size"), f"must be >= 8 pixels, got {self.image_size}")
        _require(self.batch_size >= 1, _join(path, "batch_size"), f"must be >= 1, got {self.batch_size}")
        _require(self.eval_batch_size >= 1, _join(path, "eval_batch_size"), f"must be >= 1, got {self.eval_batch_size}")
        _require(0 < self.val_fraction < 1, _join(path, "val_fraction"), f"must lie in (0, 1), got {self.val_fraction}")
        _require(0 < self.test_fraction < 1, _join(path, "test_fraction"), f"must lie in (0, 1), got {self.test_fraction}")
        _require(self.velocity_images >= 1, _join(path, "velocity_images"), f"must be >= 1, got {self.velocity_images}")


@dataclass
class ModelConfig:
    """The network: a registered name, and what it starts from.

    ``pretrained``: ``null`` (random init), ``imagenet`` (the model's ImageNet
    weights: torchvision's from the torch hub cache, the MCUNet zoo's from
    the zoo cache; downloaded only when missing) or a local state-dict file.
    ``zoo_dir``: the MCUNet zoo cache (JSON net configs and ``.pth`` weights;
    default ``$NEQ_MCUNET``, else ``~/.torch/mcunet``). ``net_config``: a zoo
    JSON net config file to build a zoo model from instead. ``num_classes``:
    the classes the head must have; ``null`` takes the data set's, a number
    must equal the data set's class count (checked when the space loads).
    """

    name: str = "mbv2-w0.35"
    pretrained: str | None = None
    zoo_dir: str | None = None
    net_config: str | None = None
    num_classes: int | None = None

    def validate(self, path: str) -> None:
        """Raise the first of :meth:`problems` (a :class:`ConfigProblems` that carries them all)."""
        found = self.problems(path)
        if found:
            raise ConfigProblems(found)

    def problems(self, path: str) -> list[ConfigError]:
        """Every problem of this section, in key order; nothing is read from the network.

        ``pretrained: imagenet`` is checked against the model's registry entry
        (it must have ImageNet weights), never fetched: a dry run fetches
        nothing, and a search fetches the weights of every model it can reach
        before Ray starts (``search.weights.fetch_space_weights``), so a
        run that cannot get them is still refused first.
        """
        from pathlib import Path

        from trainables.models import model_names, model_spec

        if self.name not in model_names():
            return [ConfigError(_join(path, "name"), f"unknown model {self.name!r}; known models: {', '.join(model_names())}")]
        found: list[ConfigError] = []
        if self.num_classes is not None and self.num_classes < 2:
            found.append(ConfigError(_join(path, "num_classes"), f"must be >= 2, got {self.num_classes}"))
        spec = model_spec(self.name)
        if self.pretrained == "imagenet" and spec.imagenet is None:
            found.append(ConfigError(_join(path, "pretrained"), f"model {self.name!r} has no ImageNet weights"))
        elif self.pretrained is not None and self.pretrained != "imagenet" and not Path(self.pretrained).expanduser().is_file():
            found.append(ConfigError(_join(path, "pretrained"), f"no checkpoint file at {self.pretrained}"))
        if self.net_config is not None:
            if spec.source != "mcunet-zoo":
                found.append(ConfigError(_join(path, "net_config"), f"only MCUNet-zoo models take a net config, not {self.name!r}"))
            elif not Path(self.net_config).expanduser().is_file():
                found.append(ConfigError(_join(path, "net_config"), f"no net config file at {self.net_config}"))
        return found


class ConfigProblems(ConfigError):
    """Several problems of one section: reads as the first (key and message), carries all in ``problems``."""

    def __init__(self, problems: list[ConfigError]) -> None:
        super().__init__(problems[0].key, problems[0].message)
        self.problems = list(problems)


@dataclass
class TrainingConfig:
    """Optimisation: epochs, optimizer, learning-rate schedule, evaluation, seed.

    ``epochs`` counts the cosine-decay epochs; ``warmup_epochs`` more are run
    before them with a linear warm-up (the study: 120 + 5). ``lr`` is the
    base (peak) learning rate. ``update_engine``: ``sparse`` computes weight
    gradients only for updated neurons; ``masked`` is the study's full
    backward followed by masking (same numbers, full cost).
    """

    epochs: int = 10
    warmup_epochs: int = 0
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    warmup_lr: float = 0.0
    final_lr: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    no_wd_keys: list[str] = field(default_factory=lambda: ["norm", "bias"])
    eval_per_epochs: int = 1
    seed: int = 0
    device: str = "auto"
    update_engine: Literal["sparse", "masked"] = "sparse"

    @property
    def total_epochs(self) -> int:
        """Warm-up plus decay epochs."""
        return self.warmup_epochs + self.epochs

    def validate(self, path: str) -> None:
        _require(self.epochs >= 1, _join(path, "epochs"), f"must be >= 1, got {self.epochs}")
        _require(self.warmup_epochs >= 0, _join(path, "warmup_epochs"), f"must be >= 0, got {self.warmup_epochs}")
        _require(self.lr > 0, _join(path, "lr"), f"must be > 0, got {self.lr}")
        _require(self.warmup_lr >= 0, _join(path, "warmup_lr"), f"must be >= 0, got {self.warmup_lr}")
        _require(self.final_lr >= 0, _join(path, "final_lr"), f"must be >= 0, got {self.final_lr}")
        _require(self.momentum >= 0, _join(path, "momentum"), f"must be >= 0, got {self.momentum}")
        _require(not self.nesterov or self.momentum > 0, _join(path, "nesterov"), "needs momentum > 0")
        _require(self.weight_decay >= 0, _join(path, "weight_decay"), f"must be >= 0, got {self.weight_decay}")
        _require(self.eval_per_epochs >= 1, _join(path, "eval_per_epochs"), f"must be >= 1, got {self.eval_per_epochs}")
        _require(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            _join(path, "device"),
            f"expected auto, cpu or cuda[:N], got {self.device!r}",
        )


@dataclass
class BudgetConfig:
    """Which channels are updated, how many, and from what first mask.

    ``unit``: ``neuron`` (output channels, the study) or ``input_channel``
    (the slices ``W[:, c]``, TraDy and MeDyate). The budget is ``memory``
    (weight + conv-input activation elements per image) if given, else
    ``params`` (parameters of neurons, or weight elements of input
    channels), else ``int(P * ratio)`` of all of them, else the budget of
    ``scheme``: its parameters under ``unit: neuron``, its memory cost on
    input channels under ``unit: input_channel``. ``scheme`` also provides
    the static SU mask, which the ``su`` policy and the ``su``
    initialization need. ``fill``: how an ordered list of channels fills the
    budget; ``auto`` is the study's ``prefix`` for parameter budgets over
    neurons and ``skip`` otherwise (see :mod:`trainables.policies`).
    ``bytes_per_element`` converts elements to bytes for reporting (4:
    float32; 1: tiny-training's int8). ``bn_update``: ``all`` normalisation
    layers train (the study), or only those after convs that hold updated
    channels (``selected``).
    """

    policy: str = "velocity"
    initialization: Literal["su", "random", "full"] = "random"
    unit: Literal["neuron", "input_channel"] = "neuron"
    scheme: str | None = None
    ratio: float | None = None
    params: int | None = None
    memory: int | None = None
    bytes_per_element: float = 4.0
    fill: Literal["auto", "prefix", "skip"] = "auto"
    velocity_mu: float = 0.5
    bn_update: Literal["all", "selected"] = "all"
    layers: dict[str, float] | list[int] | None = None
    rgn_refresh: Literal["once", "epoch"] = "epoch"
    ranking_batches: int = 10

    def validate(self, path: str) -> None:
        from trainables.lifecycle import budget_policy_names, get_budget_policy
        from trainables.schemes import scheme_names

        known = budget_policy_names()
        _require(self.policy in known, _join(path, "policy"), f"unknown policy {self.policy!r}; known policies: {', '.join(sorted(known))}")
        policy = get_budget_policy(self.policy)
        _require(
            self.unit in policy.units,
            _join(path, "unit"),
            policy.unit_refusal or f"policy {self.policy!r} does not select {self.unit} channels; it needs unit {' or '.join(policy.units)}",
        )
        self._validate_layers(_join(path, "layers"), policy.preselects)
        _require(self.ranking_batches >= 1, _join(path, "ranking_batches"), f"must be >= 1 batch, got {self.ranking_batches}")
        if self.ratio is not None:
            _require(0 < self.ratio <= 1, _join(path, "ratio"), f"must lie in (0, 1], got {self.ratio}")
        if self.params is not None:
            _require(self.params >= 1, _join(path, "params"), f"must be >= 1 parameter, got {self.params}")
        if self.memory is not None:
            _require(self.memory >= 1, _join(path, "memory"), f"must be >= 1 element, got {self.memory}")
        _require(self.bytes_per_element > 0, _join(path, "bytes_per_element"), f"must be > 0, got {self.bytes_per_element}")
        if self.scheme is not None:
            _require(
                self.scheme in scheme_names(),
                _join(path, "scheme"),
                f"unknown scheme {self.scheme!r}; known schemes: {', '.join(scheme_names())}",
            )
        needs_budget = self.policy != "full"
        _require(
            not needs_budget or any(v is not None for v in (self.scheme, self.ratio, self.params, self.memory)),
            path or "budget",
            "give a scheme, a ratio, params or memory (the budget)",
        )
        _require(
            self.memory is None or (self.params is None and self.ratio is None),
            _join(path, "memory"),
            "is a budget of its own: give memory, or params / ratio, not both",
        )
        _require(0 <= self.velocity_mu <= 1, _join(path, "velocity_mu"), f"must lie in [0, 1], got {self.velocity_mu}")

    def _validate_layers(self, key: str, preselects: bool) -> None:
        """``layers``: null, ``{top_rgn_share: x}`` with x in (0, 1], ``{lara_alpha: a}`` with a > 0, or conv indices; only for preselecting policies."""
        if self.layers is None:
            return
        _require(preselects, key, f"policy {self.policy!r} selects from every layer; layers applies to trady, rgn and medyate")
        if isinstance(self.layers, list):
            _require(bool(self.layers), key, "the list of conv indices is empty")
            _require(all(i >= 0 for i in self.layers), key, f"conv indices must be >= 0, got {self.layers}")
            _require(len(set(self.layers)) == len(self.layers), key, f"a conv index repeats: {self.layers}")
            return
        rules = ("top_rgn_share", "lara_alpha")
        _require(
            len(self.layers) == 1 and next(iter(self.layers)) in rules,
            key,
            f"give one of {{top_rgn_share: x}}, {{lara_alpha: a}} or a list of conv indices, got {self.layers}",
        )
        if "top_rgn_share" in self.layers:
            share = self.layers["top_rgn_share"]
            _require(0 < share <= 1, _join(key, "top_rgn_share"), f"must lie in (0, 1], got {share}")
        else:
            alpha = self.layers["lara_alpha"]
            _require(alpha > 0, _join(key, "lara_alpha"), f"must be > 0, got {alpha}")


@dataclass
class TrialConfig:
    """Everything one training run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "") -> TrialConfig:
        """Parse and validate (see :func:`from_mapping`)."""
        return from_mapping(cls, data, path)

    def to_dict(self) -> dict[str, Any]:
        """The resolved values as plain nested dicts and lists."""
        resolved: dict[str, Any] = dataclasses.asdict(self)
        return resolved


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay lists."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = _join(prefix, str(key))
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def set_dotted(nested: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``nested["a"]["b"] = value`` for ``dotted = "a.b"``, creating sections."""
    *sections, leaf = dotted.split(".")
    node = nested
    for section in sections:
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, f"{section!r} is not a section")
        node = child
    node[leaf] = value


def with_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with dotted-key ``overrides`` applied."""
    merged: dict[str, Any] = _deep_copy(base)
    for dotted, value in overrides.items():
        set_dotted(merged, dotted, value)
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def iter_leaf_keys(cls: type[Any], prefix: str = "") -> Iterator[str]:
    """Dotted names of every leaf field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_leaf_keys(typing.cast(type[Any], tp), _join(prefix, f.name))
        else:
            yield _join(prefix, f.name)
