"""Search spaces: a YAML file with a base trial config and what to search over.

A space file has the trial sections of :class:`~neqtune.trainables.config.TrialConfig`
(``data``, ``model``, ``training``, ``budget``), an ``experiment`` name and a
``search`` section whose ``params`` map dotted config keys to distributions::

    search:
      algorithm: optuna          # or grid: every combination of the choices
      num_samples: 8
      params:
        budget.policy: {choice: [velocity, random, su, full]}
        training.lr: {loguniform: [0.01, 0.2]}

A ``plugins`` list names the researcher's own modules (``.py`` files or
package folders relative to the space file, or module names) that register
models, data sets and policies; they are imported before anything else is
checked (:mod:`neqtune.search.plugins`), and travel with the search to every
trial.

A ``variants`` section names alternative recipes of the same study: each
variant maps dotted keys to the values it fixes (``training.epochs: 200``);
``load_space(..., variant="paper")`` (``run_search.py --variant paper``)
applies them before the command-line overrides, drops the keys it fixes from
``search.params``, and names the experiment ``<experiment>-<variant>``.

:func:`load_space` checks everything once, before any work starts: YAML
syntax, unknown keys, types, value ranges, names of policies, models, data
sets and schemes, and whether every combination of choices makes a valid
trial (SU schemes must fit the model). Each problem is one
:class:`SpaceError` naming the file and the key.

The ``search`` section's schema is :mod:`neqtune.search.search_config`; a
combination's config is judged by
:func:`~neqtune.trainables.trial_checks.trial_problems`, the one check of a
trial, which the trial itself and the dry run call too.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neqtune.search.plugins import Plugin, PluginError, entry_point_plugins, load_plugins, resolve_plugins, saved_specs
from neqtune.search.search_config import SearchConfig
from neqtune.trainables.checks import section_problems
from neqtune.trainables.config import ConfigError, TrialConfig, from_mapping, with_overrides
from neqtune.trainables.policies.base import needs_su_mask
from neqtune.trainables.trial_checks import CombinationError, trial_problems

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
class Space:
    """A loaded, validated search space.

    Attributes:
        experiment: the experiment name (results go to ``results/<experiment>``).
        base: the nested trial config before sampling (plain dicts).
        search: how to search.
        source: the file it came from (for messages), or ``<default>``.
        plugins: the plug-ins loaded for it (``--plugin``, the file's
            ``plugins``, the installed entry points), which every trial imports.
    """

    experiment: str
    base: dict[str, Any]
    search: SearchConfig
    source: str
    plugins: list[Plugin] = field(default_factory=list)

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

    def asha_max_epochs(self) -> int:
        """ASHA's last rung: ``search.asha.max_epochs``, else the longest trial's epochs (warm-up included)."""
        if self.search.asha.max_epochs is not None:
            return self.search.asha.max_epochs
        return max(
            (_combination_config(c, self.base).training.total_epochs for c in itertools.islice(self.combinations(), MAX_CHECKED_COMBINATIONS)),
            default=TrialConfig().training.total_epochs,
        )

    def to_dict(self) -> dict[str, Any]:
        """The space as it was resolved (after command-line overrides), for saving."""
        search = {k: v for k, v in vars(self.search).items() if k not in ("params", "asha")}
        search["asha"] = dataclasses.asdict(self.search.asha)
        search["params"] = {k: {spec.kind: getattr(spec, spec.kind)} for k, spec in self.search.params.items()}
        plugins = {"plugins": saved_specs(self.plugins)} if saved_specs(self.plugins) else {}
        return {"experiment": self.experiment, **plugins, **self.base, "search": search}


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


def _error_inputs(err: ConfigError) -> tuple[str, ...]:
    """The config keys or sections ``err`` depends on.

    Its own key, and for a plain ConfigError its section (a section validates
    its fields together: ``nesterov`` needs ``momentum``); a
    :class:`CombinationError` names the rest itself.
    """
    own = err.key.split("[")[0]
    if isinstance(err, CombinationError):
        return (own, *err.depends_on)
    return (own, own.split(".")[0])


def _searched_causes(err: ConfigError, combination: Mapping[str, Any]) -> dict[str, Any]:
    """The searched keys (with their values in ``combination``) that ``err`` depends on."""
    inputs = _error_inputs(err)
    return {key: value for key, value in combination.items() if any(key == given or key.startswith(f"{given}.") for given in inputs)}


def combination_problems(overrides: Mapping[str, Any], base: Mapping[str, Any]) -> tuple[TrialConfig | None, list[ConfigError]]:
    """One combination's config (None where it does not parse) and every problem of it: a bad value (its section
    validates it), else those of :func:`~neqtune.trainables.trial_checks.trial_problems`, the one check of a trial."""
    try:
        config = TrialConfig.from_dict(with_overrides(base, overrides))
    except ConfigError as err:
        return None, [err]
    return config, trial_problems(config)


def _combination_config(overrides: Mapping[str, Any], base: Mapping[str, Any]) -> TrialConfig:
    """One combination's checked config (raises the first of :func:`combination_problems`)."""
    config, problems = combination_problems(overrides, base)
    if problems:
        raise problems[0]
    assert config is not None
    return config


def _written_value_errors(base: dict[str, Any]) -> list[ConfigError]:
    """The bad values written in the trial sections, even ones the search overrides, section by section.

    The base alone may be incomplete (the search supplies the scheme, say);
    only errors about values actually written count. A section with several
    problems (the model section reports all of its own) gives them all.
    """
    written = {f"{section}.{key}" for section, values in base.items() for key in values}
    hints = typing.get_type_hints(TrialConfig)
    found: list[ConfigError] = []
    for section in TRIAL_SECTIONS:
        try:
            problems = section_problems(section, from_mapping(hints[section], base.get(section) or {}, section))
        except ConfigError as err:
            problems = getattr(err, "problems", [err])
        found.extend(p for p in problems if p.key.split("[")[0] in written or p.message.startswith("unknown key"))
    return found


def _absolute_paths(base: dict[str, Any], relative_to: Path) -> None:
    """Make file paths of the trial config absolute: trials may run in another directory."""
    for section, key in (("data", "root"), ("model", "pretrained"), ("model", "zoo_dir"), ("model", "net_config")):
        value = base.get(section, {}).get(key) if isinstance(base.get(section), dict) else None
        if (section, key, value) == ("model", "pretrained", "imagenet"):
            continue  # a weights name, not a path
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            base[section][key] = str((relative_to / value).resolve())


def build_space(
    raw: Any,
    source: str,
    *,
    overrides: Sequence[tuple[str, Any]] = (),
    search_overrides: Mapping[str, Any] | None = None,
    problems: list[SpaceError] | None = None,
    variant: str | None = None,
    plugins: Sequence[Plugin] = (),
) -> Space:
    """Validate a parsed space mapping (with a variant and command-line overrides applied).

    First the plug-ins are imported: the installed entry points', ``plugins``
    (loaded already, from ``--plugin``), then the file's ``plugins`` list.

    Without ``problems`` the first problem is raised. With a list, the
    problems of the trial values (written values, every combination: data
    on disk, SU masks, class counts) are appended to it, each once, and the
    space is returned all the same (a dry run reports them all); problems of
    the file's structure and of the search section are still raised.
    """

    def found(err: ConfigError) -> None:
        if problems is None:
            raise SpaceError(source, err.key, err.message) from None
        problem = SpaceError(source, err.key, err.message)
        if str(problem) not in {str(p) for p in problems}:
            problems.append(problem)

    if not isinstance(raw, Mapping):
        raise SpaceError(source, "", f"a space file must be a mapping of sections, got {type(raw).__name__}")
    known = ("experiment", "plugins", *TRIAL_SECTIONS, "search", "variants")
    for key in raw:
        if key not in known:
            raise SpaceError(source, str(key), f"unknown section; known sections: {', '.join(known)}")
    loaded = space_plugins(raw.get("plugins"), source, given=plugins)
    experiment = raw.get("experiment", Path(source).stem if source != "<default>" else "digits")
    if not isinstance(experiment, str) or not experiment or "/" in experiment:
        raise SpaceError(source, "experiment", f"expected a non-empty name without '/', got {experiment!r}")
    fixed = _variant_values(raw.get("variants"), variant, source)
    if variant is not None:
        experiment = f"{experiment}-{variant}"
    base: dict[str, Any] = {}
    for section in TRIAL_SECTIONS:
        value = raw.get(section) or {}
        if not isinstance(value, Mapping):
            raise SpaceError(source, section, f"expected a mapping, got {value!r}")
        base[section] = dict(value)
    try:
        search_raw: dict[str, Any] = dict(raw.get("search") or {})
        if fixed:
            search_raw["params"] = {k: v for k, v in dict(search_raw.get("params") or {}).items() if k not in fixed}
        for key, value in [*fixed.items(), *overrides]:
            if key.startswith("search."):
                search_raw = with_overrides(search_raw, {key.removeprefix("search."): value})
            else:
                base = with_overrides(base, {key: value})
        search_raw.update(search_overrides or {})
        search = from_mapping(SearchConfig, search_raw, "search")
        _absolute_paths(base, Path.cwd())
        space = Space(experiment=experiment, base=base, search=search, source=source, plugins=loaded)
        written_errors = _written_value_errors(base)
        for problem in written_errors:
            found(problem)
        seen = {(written.key, written.message) for written in written_errors}
        for n, combination in enumerate(space.combinations()):
            if n >= MAX_CHECKED_COMBINATIONS:
                break
            for err in combination_problems(combination, base)[1]:
                if (err.key, err.message) in seen or any(err.key == written.key for written in written_errors):
                    continue  # one problem once, with the values of the first combination that has it
                seen.add((err.key, err.message))
                # Name the searched values only where they are part of the cause;
                # a missing data set root says so plainly.
                where = ", ".join(f"{k}={v}" for k, v in _searched_causes(err, combination).items())
                message = f"{err.message} (with {where})" if where else err.message
                key = f"search.params.{err.key}" if err.key.split("[")[0] in combination else err.key
                found(ConfigError(key, message))
        ignored = _ignored_scheme_search(space)
        if ignored is not None:
            found(ignored)
        precision = search.params.get("training.precision")
        precisions = precision.choice if precision is not None and precision.choice else [base.get("training", {}).get("precision")]
        if search.gpus_per_trial == 0 and "fp16" in precisions:
            found(ConfigError("training.precision", "fp16 needs a CUDA device, but search.gpus_per_trial is 0: the trials get no GPU; use fp32 or bf16"))
        if problems:
            return space  # the trial configs are not all valid: ASHA's rungs cannot be checked against them
        if search.scheduler == "asha" and search.asha.grace_period > space.asha_max_epochs():
            raise ConfigError(
                "search.asha.grace_period",
                f"{search.asha.grace_period} epochs exceed the trials' {space.asha_max_epochs()} epochs",
            )
    except ConfigError as err:
        raise SpaceError(source, err.key, err.message) from None
    return space


def space_plugins(written: Any, source: str, *, given: Sequence[Plugin] = ()) -> list[Plugin]:
    """Import the plug-ins of a space: the entry points', ``given`` (loaded by the caller), then ``written`` (the file's
    ``plugins`` list, paths relative to the file's folder); returns them all, in that order.

    Raises:
        SpaceError: ``plugins`` is not a list of strings, or a plug-in is missing, fails to import or
            registers a name that is taken (one line, naming the plug-in).
    """
    if written is not None and (not isinstance(written, list) or not all(isinstance(spec, str) and spec for spec in written)):
        raise SpaceError(source, "plugins", f"expected a list of module names or .py paths, got {written!r}")
    folder = Path(source).parent if source != "<default>" and Path(source).suffix in (".yaml", ".yml") else Path.cwd()
    try:
        installed = entry_point_plugins()
        load_plugins(installed)
        own = resolve_plugins(written or [], key="plugins", relative_to=folder)
        load_plugins(own)
    except PluginError as err:
        raise SpaceError(source, err.key, f"{err.plugin}: {err.reason}") from None
    given_modules = {plugin.module for plugin in given}
    return [*installed, *given, *(plugin for plugin in own if plugin.module not in given_modules)]


def _ignored_scheme_search(space: Space) -> ConfigError | None:
    """A searched ``budget.scheme`` that no trial would use: a fixed ``budget.memory`` sets the budget, and no trial takes the SU mask.

    Under a memory budget a scheme only lends its static SU mask to policy
    ``su`` or to ``initialization: su``; without either, every choice of the
    search would run the same trial.
    """
    params = space.search.params
    if "budget.scheme" not in params or "budget.memory" in params or (space.base.get("budget") or {}).get("memory") is None:
        return None
    for combination in itertools.islice(space.combinations(), MAX_CHECKED_COMBINATIONS):
        try:
            if needs_su_mask(TrialConfig.from_dict(with_overrides(space.base, combination)).budget):
                return None
        except (ConfigError, ValueError):  # a bad value or an unknown policy: reported on its own
            continue
    return ConfigError(
        "search.params.budget.scheme",
        "is searched beside a fixed budget.memory, which sets the budget; no trial uses the scheme (only policy su or "
        "initialization su take its SU mask), so every choice would run the same trial: search budget.memory instead, or drop it",
    )


def _variant_values(variants: Any, variant: str | None, source: str) -> dict[str, Any]:
    """The dotted keys and values that ``variant`` fixes (empty without one).

    Raises:
        SpaceError: a malformed ``variants`` section, or a variant the file does not define.
    """
    if variants is not None and (not isinstance(variants, Mapping) or not all(isinstance(v, Mapping) for v in variants.values())):
        raise SpaceError(source, "variants", "expected a mapping of variant names to mappings of dotted keys to values")
    if variant is None:
        return {}
    defined: Mapping[str, Any] = variants or {}
    if variant not in defined:
        where = f"its variants: {', '.join(map(str, defined))}" if defined else "it has no variants section"
        raise SpaceError(source, "variants", f"no variant {variant!r}; {where}")
    return {str(key): value for key, value in defined[variant].items()}


def load_space(
    path: str | Path | None = None,
    *,
    overrides: Sequence[tuple[str, Any]] = (),
    search_overrides: Mapping[str, Any] | None = None,
    problems: list[SpaceError] | None = None,
    variant: str | None = None,
    plugins: Sequence[Plugin] = (),
) -> Space:
    """Read and validate a space file (``None``: the embedded digits default).

    Args:
        path: the YAML file.
        overrides: ``(dotted key, value)`` pairs laid over the trial sections.
        search_overrides: values laid over the ``search`` section.
        problems: collect the trial values' problems here instead of raising
            the first (see :func:`build_space`).
        variant: a variant of the file's ``variants`` section to apply.
        plugins: plug-ins loaded already (``--plugin``), kept with the space.

    Raises:
        SpaceError: the first problem found, naming the file and the key.
    """
    file = Path(path) if path is not None else DEFAULT_SPACE
    return build_space(
        _read_yaml(file),
        str(path) if path is not None else str(DEFAULT_SPACE.relative_to(Path(__file__).resolve().parent.parent)),
        overrides=overrides,
        search_overrides=search_overrides,
        problems=problems,
        variant=variant,
        plugins=plugins,
    )
