"""Typed configuration of one training run, loaded from plain mappings (YAML).

One dataclass per section (data, model, training, budget). Loading rejects
unknown keys and wrong types with the dotted path of the key, then each
section checks its values' types and ranges (:mod:`neqtune.datasets.parsing`).
Registered names, files and weights are checked when a trial is checked or
built (:func:`neqtune.trainables.checks.config_problems`), not here: parsing imports
no registry. ``TrialConfig.to_dict()`` gives back the resolved values, which
are saved with every run and flattened into every result row.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from neqtune.datasets.config import DataConfig
from neqtune.datasets.parsing import (
    ConfigError,
    ConfigProblems,
    flatten,
    from_mapping,
    iter_leaf_keys,
    join,
    require,
    set_dotted,
    with_overrides,
)

__all__ = [
    "BudgetConfig",
    "ConfigError",
    "ConfigProblems",
    "DataConfig",
    "ModelConfig",
    "TrainingConfig",
    "TrialConfig",
    "flatten",
    "from_mapping",
    "iter_leaf_keys",
    "set_dotted",
    "with_overrides",
]


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
    ``name`` is a registered model, ``torchvision:<builder>`` or
    ``<module>:<callable>`` (see :mod:`neqtune.trainables.models.registry`).
    ``classifier``: the qualified module name of the classifier (an
    ``nn.Linear``, e.g. ``head.fc``) where it cannot be found by itself; null
    finds it (``fc``, ``classifier``, ``head``, ``heads.head``, else the last
    ``nn.Linear``).

    ``patch_size``, ``depth``, ``width``, ``heads``, ``mlp_ratio``: the shape
    of the configurable vision transformer (``name: vit``; null takes its
    default, see :mod:`neqtune.trainables.models.transformers`); another model
    refuses them when the trial is checked. The image side must be a multiple
    of ``patch_size``.
    """

    name: str = "mbv2-w0.35"
    pretrained: str | None = None
    zoo_dir: str | None = None
    net_config: str | None = None
    num_classes: int | None = None
    classifier: str | None = None
    patch_size: int | None = None
    depth: int | None = None
    width: int | None = None
    heads: int | None = None
    mlp_ratio: float | None = None

    def validate(self, path: str) -> None:
        if self.num_classes is not None:
            require(self.num_classes >= 2, join(path, "num_classes"), f"must be >= 2, got {self.num_classes}")
        for key in ("patch_size", "depth", "width", "heads"):
            value = getattr(self, key)
            require(value is None or value >= 1, join(path, key), f"must be >= 1, got {value}")
        require(self.mlp_ratio is None or self.mlp_ratio > 0, join(path, "mlp_ratio"), f"must be > 0, got {self.mlp_ratio}")

    def shape_keys(self) -> dict[str, int | float]:
        """The architecture keys given (not null), by name."""
        return {key: value for key in ARCHITECTURE_KEYS if (value := getattr(self, key)) is not None}


ARCHITECTURE_KEYS = ("patch_size", "depth", "width", "heads", "mlp_ratio")
"""Model keys that shape a configurable network; a model takes only those its registry entry declares."""


@dataclass
class TrainingConfig:
    """Optimisation: epochs, optimizer, learning-rate schedule, evaluation, seed.

    ``epochs`` counts the cosine-decay epochs; ``warmup_epochs`` more are run
    before them with a linear warm-up (the study: 120 + 5). ``lr`` is the
    base (peak) learning rate. ``update_engine``: ``sparse`` computes weight
    gradients only for updated neurons; ``masked`` is the study's full
    backward followed by masking (same numbers, full cost). ``precision``:
    ``bf16`` / ``fp16`` run the forward and backward under autocast (fp16
    with a gradient scaler; CUDA only), weights and optimizer state stay
    float32. ``channels_last``: the model and its inputs in NHWC layout.
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
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False

    @property
    def total_epochs(self) -> int:
        """Warm-up plus decay epochs."""
        return self.warmup_epochs + self.epochs

    def validate(self, path: str) -> None:
        require(self.epochs >= 1, join(path, "epochs"), f"must be >= 1, got {self.epochs}")
        require(self.warmup_epochs >= 0, join(path, "warmup_epochs"), f"must be >= 0, got {self.warmup_epochs}")
        require(self.lr > 0, join(path, "lr"), f"must be > 0, got {self.lr}")
        require(self.warmup_lr >= 0, join(path, "warmup_lr"), f"must be >= 0, got {self.warmup_lr}")
        require(self.final_lr >= 0, join(path, "final_lr"), f"must be >= 0, got {self.final_lr}")
        require(self.momentum >= 0, join(path, "momentum"), f"must be >= 0, got {self.momentum}")
        require(not self.nesterov or self.momentum > 0, join(path, "nesterov"), "needs momentum > 0")
        require(self.weight_decay >= 0, join(path, "weight_decay"), f"must be >= 0, got {self.weight_decay}")
        require(self.eval_per_epochs >= 1, join(path, "eval_per_epochs"), f"must be >= 1, got {self.eval_per_epochs}")
        require(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            join(path, "device"),
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
    neurons and ``skip`` otherwise (see :mod:`neqtune.trainables.policies.fill`).
    ``bytes_per_element`` converts elements to bytes for reporting (4:
    float32; 1: tiny-training's int8) and a ``memory`` given in bytes to
    elements (:func:`memory_elements`). ``bn_update``: ``all`` normalisation
    layers (BatchNorm, GroupNorm, LayerNorm) train (the study), or only those
    after budgeted layers (convs, Linear layers) that hold updated channels
    (``selected``). ``options``: each policy's own options, by
    policy name (``options.velocity.mu``, ``options.rgn.refresh``), parsed
    and checked by that policy when the trial is checked (see
    :mod:`neqtune.trainables.policies.base`); the chosen policy reads its
    entry, the others stay inert.
    """

    policy: str = "velocity"
    initialization: Literal["su", "random", "full"] = "random"
    unit: Literal["neuron", "input_channel"] = "neuron"
    scheme: str | None = None
    ratio: float | None = None
    params: int | None = None
    memory: int | str | None = field(default=None, metadata={"column_type": "int64"})  # elements once validated
    bytes_per_element: float = 4.0
    fill: Literal["auto", "prefix", "skip"] = "auto"
    bn_update: Literal["all", "selected"] = "all"
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def upgrade_keys(cls, data: Mapping[str, Any], path: str) -> dict[str, Any]:
        """Move the former policy keys of the section (:data:`LEGACY_OPTIONS`) to ``options.<policy>.<key>``.

        A former key goes to the chosen policy when that policy owns it, else
        to its first owner, where it stays inert as it always did for other
        policies; ``layers`` for a policy that preselects none is refused, as
        before. A key given both ways is refused, naming both. Called by
        :func:`~neqtune.datasets.parsing.from_mapping` before the keys are checked.
        """
        upgraded = dict(data)
        policy = upgraded.get("policy", cls.policy)
        raw_options = upgraded.get("options")
        options = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw_options.items()} if isinstance(raw_options, Mapping) else raw_options
        for old, (owners, new) in LEGACY_OPTIONS.items():
            if old not in upgraded:
                continue
            value = upgraded.pop(old)
            if policy not in owners and old == "layers":
                raise ConfigError(join(path, old), f"policy {policy!r} selects from every layer; layers applies to {', '.join(owners[:-1])} and {owners[-1]}")
            owner = policy if policy in owners else owners[0]
            if options is None:
                options = {}
            if not isinstance(options, dict):
                break  # the options' own type error is reported when the section parses
            entry = options.setdefault(owner, {})
            if isinstance(entry, dict):
                if new in entry:
                    raise ConfigError(
                        join(path, old), f"given twice, as {join(path, old)} and as {join(path, f'options.{owner}.{new}')}; keep the second"
                    )
                entry[new] = value
        if options is not None:
            upgraded["options"] = options
        return upgraded

    def validate(self, path: str) -> None:
        if self.ratio is not None:
            require(0 < self.ratio <= 1, join(path, "ratio"), f"must lie in (0, 1], got {self.ratio}")
        if self.params is not None:
            require(self.params >= 1, join(path, "params"), f"must be >= 1 parameter, got {self.params}")
        require(self.bytes_per_element > 0, join(path, "bytes_per_element"), f"must be > 0, got {self.bytes_per_element}")
        if self.memory is not None:
            self.memory = memory_elements(self.memory, self.bytes_per_element, join(path, "memory"))
        require(
            self.memory is None or (self.params is None and self.ratio is None),
            join(path, "memory"),
            "is a budget of its own: give memory, or params / ratio, not both",
        )

    @property
    def memory_budget(self) -> int | None:
        """``memory`` in elements per image (a unit given in bytes is converted when the section is validated)."""
        assert not isinstance(self.memory, str), "validate() converts budget.memory to elements"
        return self.memory

    @property
    def has_budget(self) -> bool:
        """Whether a budget is given (a scheme, a ratio, params or memory)."""
        return any(v is not None for v in (self.scheme, self.ratio, self.params, self.memory))


# The former flat keys of the budget section that belong to one policy or a family: old key -> (its owners, the
# key in their options). Read and moved by BudgetConfig.upgrade_keys, so that older spaces and results' configs load.
LEGACY_OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "velocity_mu": (("velocity",), "mu"),
    "rgn_refresh": (("rgn",), "refresh"),
    "ranking_batches": (("trady", "rgn", "medyate"), "ranking_batches"),
    "layers": (("trady", "rgn", "medyate"), "layers"),
}


MEMORY_UNITS: dict[str, int] = {"B": 1, "kB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2, "GB": 1000**3, "GiB": 1024**3}
"""Byte units a ``budget.memory`` may be written in: SI (``kB`` = 1,000 B) and IEC (``KiB`` = 1,024 B); case matters."""

_MEMORY_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


def memory_elements(value: int | str, bytes_per_element: float, key: str) -> int:
    """A memory budget in elements per image: an integer is elements already; ``"256kB"`` is bytes.

    Bytes become elements by dividing by ``bytes_per_element`` and rounding
    down (a budget never grows by rounding): ``256kB`` at 4 bytes per element
    is 64,000 elements, ``64KiB`` 16,384. Units are case-sensitive, as
    written in :data:`MEMORY_UNITS`: ``kb`` would read as kilobits and ``KB``
    is neither SI nor IEC, so both are refused rather than guessed.

    Raises:
        ConfigError: (``key``) an unknown unit (the message lists the known
            ones), a malformed value, or less than one element.
    """
    accepted = ", ".join(f"{unit} ({factor:,} B)" if factor > 1 else unit for unit, factor in MEMORY_UNITS.items())
    if isinstance(value, str):
        match = _MEMORY_TEXT.match(value)
        if match is None or match.group(2) not in MEMORY_UNITS:
            raise ConfigError(
                key, f"cannot read {value!r}: give elements per image (an integer) or bytes with a unit, one of {accepted}; case matters"
            )
        number, unit = match.groups()
        elements = int(float(number) * MEMORY_UNITS[unit] // bytes_per_element)
        require(elements >= 1, key, f"{value} is less than one element of {bytes_per_element:g} bytes")
        return elements
    require(value >= 1, key, f"must be >= 1 element, got {value}")
    return value


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
