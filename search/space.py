"""Search spaces: a YAML file with a base trial config and what to search over.

A space file has the trial sections of :class:`~trainables.config.TrialConfig`
(``data``, ``model``, ``training``, ``budget``), an ``experiment`` name and a
``search`` section whose ``params`` map dotted config keys to distributions::

    search:
      algorithm: optuna          # or grid: every combination of the choices
      num_samples: 8
      params:
        budget.policy: {choice: [velocity, random, su, full]}
        training.lr: {loguniform: [0.01, 0.2]}

:func:`load_space` checks everything once, before any work starts: YAML
syntax, unknown keys, types, value ranges, names of policies, models, data
sets and schemes, and whether every combination of choices makes a valid
trial (SU schemes must fit the model). Each problem is one
:class:`SpaceError` naming the file and the key.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from trainables.config import ConfigError, TrialConfig, from_mapping, iter_leaf_keys, with_overrides

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "spaces" / "digits.yaml"
TRIAL_SECTIONS = ("data", "model", "training", "budget")
MAX_CHECKED_COMBINATIONS = 20_000


class SpaceError(ValueError):
    """A problem with a space file: ``file: key: message`` on one line."""

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(": ".join(part for part in (source, key, message) if part))
        self.source = source
        self.key = key


@dataclass
class ParamSpec:
    """One searched key: exactly one of a choice list or a numeric range."""

    choice: list[Any] | None = None
    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    randint: list[int] | None = None

    def validate(self, path: str) -> None:
        given = [kind for kind in ("choice", "uniform", "loguniform", "randint") if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ConfigError(path, "give exactly one of choice, uniform, loguniform, randint")
        if self.choice is not None and not self.choice:
            raise ConfigError(f"{path}.choice", "the choice list is empty")
        for kind in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, kind)
            if bounds is None:
                continue
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise ConfigError(f"{path}.{kind}", f"expected [low, high] with low < high, got {bounds}")
            if kind == "loguniform" and bounds[0] <= 0:
                raise ConfigError(f"{path}.{kind}", f"bounds must be > 0, got {bounds}")

    @property
    def kind(self) -> str:
        """``choice``, ``uniform``, ``loguniform`` or ``randint``."""
        return next(k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    def representatives(self) -> list[Any]:
        """Values that stand for the whole distribution when checking: the choices or the bounds."""
        if self.choice is not None:
            return list(self.choice)
        low, high = getattr(self, self.kind)
        return [low, high - 1] if self.kind == "randint" else [low, high]


@dataclass
class SearchConfig:
    """How to search: algorithm, trial counts, resources and the objective.

    ``num_samples`` is the number of trials for ``optuna``, and the number of
    repeats of the whole grid for ``grid`` (seeds belong in the grid as
    ``training.seed``). ``metric`` is reported by every epoch; the default
    maximises the best validation top-1 (test accuracy is never used to steer).
    """

    algorithm: Literal["optuna", "grid"] = "optuna"
    sampler: Literal["tpe", "random"] = "tpe"
    startup_trials: int = 4
    num_samples: int = 8
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    seed: int = 0
    metric: str = "best_val_top1"
    mode: Literal["max", "min"] = "max"
    params: dict[str, ParamSpec] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        for key, value in (
            ("num_samples", self.num_samples),
            ("max_concurrent", self.max_concurrent),
            ("startup_trials", self.startup_trials),
        ):
            if value < 1:
                raise ConfigError(f"{path}.{key}", f"must be >= 1, got {value}")
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"{path}.cpus_per_trial", f"must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"{path}.gpus_per_trial", f"must be >= 0, got {self.gpus_per_trial}")
        known = set(iter_leaf_keys(TrialConfig))
        for key, spec in self.params.items():
            if key not in known:
                raise ConfigError(f"{path}.params.{key}", "not a config key (expected a dotted key such as training.lr)")
            if self.algorithm == "grid" and spec.kind != "choice":
                raise ConfigError(f"{path}.params.{key}", f"a grid takes choice lists only, got {spec.kind}")


@dataclass
class Space:
    """A loaded, validated search space.

    Attributes:
        experiment: the experiment name (results go to ``results/<experiment>``).
        base: the nested trial config before sampling (plain dicts).
        search: how to search.
        source: the file it came from (for messages), or ``<default>``.
    """

    experiment: str
    base: dict[str, Any]
    search: SearchConfig
    source: str

    def grid_size(self) -> int:
        """Trials a grid search runs (choices multiplied, times ``num_samples``)."""
        return math.prod(len(spec.choice or []) for spec in self.search.params.values()) * self.search.num_samples

    def num_trials(self) -> int:
        """Trials this space runs."""
        return self.grid_size() if self.search.algorithm == "grid" else self.search.num_samples

    def combinations(self) -> Iterator[dict[str, Any]]:
        """Dotted-key overrides for every combination of representative values."""
        keys = list(self.search.params)
        values = [self.search.params[k].representatives() for k in keys]
        for combo in itertools.product(*values):
            yield dict(zip(keys, combo, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """The space as it was resolved (after command-line overrides), for saving."""
        search = {k: v for k, v in vars(self.search).items() if k != "params"}
        search["params"] = {k: {spec.kind: getattr(spec, spec.kind)} for k, spec in self.search.params.items()}
        return {"experiment": self.experiment, **self.base, "search": search}


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise SpaceError(str(path), "", "no such space file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceError(str(path), "", f"malformed YAML: {where}{problem}") from None


@functools.cache
def _conv_count_model(name: str) -> Any:
    from trainables.config import ModelConfig
    from trainables.models import build_model

    return build_model(ModelConfig(name=name), num_classes=10)


def check_trial(overrides: Mapping[str, Any], base: Mapping[str, Any]) -> TrialConfig:
    """Validate one combination; SU schemes are checked against the model's convs, data sets against the disk."""
    from datasets import check_dataset
    from trainables.schemes import get_scheme
    from trainables.trainer import needs_su_mask

    config = TrialConfig.from_dict(with_overrides(base, overrides))
    if config.data.name != "digits":  # built in; every other data set must be on disk (or downloadable) before Ray starts
        check_dataset(config.data)
    budget = config.budget
    if needs_su_mask(budget):
        scheme = get_scheme(budget.scheme) if budget.scheme else None
        if scheme is None or scheme.su is None:
            raise ConfigError(
                "budget.scheme",
                f"policy {budget.policy!r} with initialization {budget.initialization!r} needs a scheme with an SU part, got {budget.scheme!r}",
            )
        scheme.su.check_fits(_conv_count_model(config.model.name), scheme.name)
    return config


def _check_written_values(base: dict[str, Any]) -> None:
    """Refuse a bad value written in the trial sections, even one the search overrides.

    The base alone may be incomplete (the search supplies the scheme, say);
    only errors about values actually written are raised here.
    """
    written = {f"{section}.{key}" for section, values in base.items() for key in values}
    try:
        TrialConfig.from_dict(base)
    except ConfigError as err:
        if err.key.split("[")[0] in written or (err.key.split(".")[0] in TRIAL_SECTIONS and err.message.startswith("unknown key")):
            raise


def _absolute_paths(base: dict[str, Any], relative_to: Path) -> None:
    """Make file paths of the trial config absolute: trials may run in another directory."""
    for section, key in (("data", "root"), ("model", "pretrained"), ("model", "zoo_dir"), ("model", "net_config")):
        value = base.get(section, {}).get(key) if isinstance(base.get(section), dict) else None
        if (section, key, value) == ("model", "pretrained", "imagenet"):
            continue  # a weights name, not a path
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            base[section][key] = str((relative_to / value).resolve())


def build_space(
    raw: Any, source: str, *, overrides: Sequence[tuple[str, Any]] = (), search_overrides: Mapping[str, Any] | None = None
) -> Space:
    """Validate a parsed space mapping (with command-line overrides applied)."""
    if not isinstance(raw, Mapping):
        raise SpaceError(source, "", f"a space file must be a mapping of sections, got {type(raw).__name__}")
    known = ("experiment", *TRIAL_SECTIONS, "search")
    for key in raw:
        if key not in known:
            raise SpaceError(source, str(key), f"unknown section; known sections: {', '.join(known)}")
    experiment = raw.get("experiment", Path(source).stem if source != "<default>" else "digits")
    if not isinstance(experiment, str) or not experiment or "/" in experiment:
        raise SpaceError(source, "experiment", f"expected a non-empty name without '/', got {experiment!r}")
    base: dict[str, Any] = {}
    for section in TRIAL_SECTIONS:
        value = raw.get(section) or {}
        if not isinstance(value, Mapping):
            raise SpaceError(source, section, f"expected a mapping, got {value!r}")
        base[section] = dict(value)
    try:
        search_raw: dict[str, Any] = dict(raw.get("search") or {})
        for key, value in overrides:
            if key.startswith("search."):
                search_raw = with_overrides(search_raw, {key.removeprefix("search."): value})
            else:
                base = with_overrides(base, {key: value})
        search_raw.update(search_overrides or {})
        search = from_mapping(SearchConfig, search_raw, "search")
        _absolute_paths(base, Path.cwd())
        space = Space(experiment=experiment, base=base, search=search, source=source)
        _check_written_values(base)
        for n, combination in enumerate(space.combinations()):
            if n >= MAX_CHECKED_COMBINATIONS:
                break
            try:
                check_trial(combination, base)
            except ConfigError as err:
                where = ", ".join(f"{k}={v}" for k, v in combination.items())
                message = f"{err.message} (with {where})" if where else err.message
                key = f"search.params.{err.key}" if err.key.split("[")[0] in combination else err.key
                raise ConfigError(key, message) from None
    except ConfigError as err:
        raise SpaceError(source, err.key, err.message) from None
    return space


def load_space(
    path: str | Path | None = None, *, overrides: Sequence[tuple[str, Any]] = (), search_overrides: Mapping[str, Any] | None = None
) -> Space:
    """Read and validate a space file (``None``: the embedded digits default).

    Args:
        path: the YAML file.
        overrides: ``(dotted key, value)`` pairs laid over the trial sections.
        search_overrides: values laid over the ``search`` section.

    Raises:
        SpaceError: the first problem found, naming the file and the key.
    """
    file = Path(path) if path is not None else DEFAULT_SPACE
    return build_space(
        _read_yaml(file),
        str(path) if path is not None else str(DEFAULT_SPACE.relative_to(Path(__file__).resolve().parent.parent)),
        overrides=overrides,
        search_overrides=search_overrides,
    )
