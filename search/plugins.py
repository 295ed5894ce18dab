"""Plug-ins: the researcher's own models, data sets and policies, from their own files or installed packages.

A plug-in is a Python module that registers things with the decorators the
built-ins use (``neqtune.register_model``, ``neqtune.register_dataset``,
``neqtune.register_check``, ``neqtune.register_policy``) when it is imported.
It comes from

- a ``plugins:`` list at the top of a space file: ``.py`` files or package
  folders (paths relative to the space file) and module names (looked for
  beside the space file, then on ``sys.path``);
- ``run_search.py --plugin`` (repeatable; paths relative to the current directory);
- the entry-point group ``neqtune.plugins`` of any installed distribution
  (each entry point names a module, loaded like a module plug-in; like pytest's ``pytest11``).

The driver imports them before the space is checked. Every trial imports them
again in its Ray worker before its config is resolved, on whatever node it
runs: a file, a package folder, and a module found outside site-packages (the
current directory, ``PYTHONPATH``) travel with the trainable as a zip of their
source (:class:`Plugin`), which the worker unpacks into a node-local cache
keyed by the zip's SHA-256 (:func:`plugin_cache_dir`) and imports from there.
Modules found in site-packages, and entry points, are taken to be installed on
every node, as the project itself is.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import os
import site
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from neqtune.datasets.names import DuplicateNameError

ENTRY_POINT_GROUP = "neqtune.plugins"
"""The entry-point group through which installed distributions offer plug-ins."""

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed time stamp: the same source gives the same zip, hence the same cache folder


class PluginError(ValueError):
    """A plug-in that cannot be used: ``<key>: <plug-in>: <reason>``, on one line.

    ``key`` is where it was named: ``plugins`` (a space file), ``--plugin``
    or ``entry point <name>``.
    """

    def __init__(self, key: str, plugin: str, reason: str) -> None:
        super().__init__(f"{key}: {plugin}: {reason}")
        self.key = key
        self.plugin = plugin
        self.reason = reason


@dataclass(frozen=True)
class Plugin:
    """One plug-in, as it is imported on the driver and shipped to the workers.

    Attributes:
        spec: what the user wrote (a path or a module name), for messages and the saved space.
        key: where it was named (``plugins``, ``--plugin``, ``entry point <name>``), for messages.
        module: the name it is imported under.
        path: on the driver, the file or package folder it is imported from
            (``None`` for an installed module).
        archive: a zip of its source (``<module>.py``, or the package folder
            ``<module>/``) that travels to the workers; ``None``: installed on
            every node, imported by name.
        attribute: the object an entry point names inside the module (``module:attribute``), if any.
    """

    spec: str
    key: str
    module: str
    path: Path | None = None
    archive: bytes | None = None
    attribute: str | None = None

    @property
    def digest(self) -> str:
        """The SHA-256 of :attr:`archive` (hex), naming its folder in the node's cache ("" without one)."""
        return hashlib.sha256(self.archive).hexdigest() if self.archive is not None else ""


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec or spec.startswith(".")


def _installed_roots() -> list[Path]:
    """Folders whose modules count as installed on every node: site-packages and the standard library."""
    paths = sysconfig.get_paths()
    roots = {paths["purelib"], paths["platlib"], paths["stdlib"], paths["platstdlib"], *site.getsitepackages(), site.getusersitepackages()}
    return [Path(root).resolve() for root in roots if root]


def _zip_source(path: Path) -> bytes:
    """A zip of the file ``path`` (as its own name) or of the package folder ``path`` (under its name); no byte code."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for file in files:
            if file.suffix == ".pyc":
                continue
            archive.writestr(zipfile.ZipInfo(str(file.relative_to(path.parent)), date_time=_ZIP_TIME), file.read_bytes())
    return buffer.getvalue()


def _from_path(spec: str, key: str, relative_to: Path) -> Plugin:
    path = Path(spec).expanduser()
    path = (path if path.is_absolute() else relative_to / path).resolve()
    if path.is_dir():
        if not (path / "__init__.py").is_file():
            raise PluginError(key, spec, f"{path} is a folder without __init__.py (give a .py file or a package folder)")
    elif not path.is_file():
        raise PluginError(key, spec, f"no such file: {path}")
    elif path.suffix != ".py":
        raise PluginError(key, spec, f"{path} is not a .py file")
    module = path.name if path.is_dir() else path.stem
    if not module.isidentifier():
        raise PluginError(key, spec, f"{module!r} is not a valid module name (rename the file)")
    return Plugin(spec=spec, key=key, module=module, path=path, archive=_zip_source(path))


def _beside(top: str, folder: Path) -> Path | None:
    """The module ``top`` as a file or package folder in ``folder``, if it is there."""
    for candidate in (folder / top, folder / f"{top}.py"):
        if candidate.is_file() or (candidate / "__init__.py").is_file():
            return candidate.resolve()
    return None


def _from_module(spec: str, key: str, relative_to: Path) -> Plugin:
    top = spec.split(".")[0]
    local = _beside(top, relative_to)
    if local is not None:  # beside the space file (or in the current directory): imported from there, not from sys.path
        return Plugin(spec=spec, key=key, module=spec, path=local, archive=_zip_source(local))
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError) as err:
        raise PluginError(key, spec, f"{type(err).__name__}: {_first_line(err)}") from None
    if found is None:
        raise PluginError(key, spec, f"no module named {spec!r} (give a path ending in .py for a file)")
    origin = Path(found.origin).resolve() if found.origin and found.has_location else None
    if origin is None or any(origin.is_relative_to(root) for root in _installed_roots()):
        return Plugin(spec=spec, key=key, module=spec)  # installed: every node has it
    top_spec = importlib.util.find_spec(top)  # a submodule travels with its whole top-level package
    assert top_spec is not None and top_spec.origin is not None
    source = Path(top_spec.origin).resolve()
    return Plugin(spec=spec, key=key, module=spec, archive=_zip_source(source.parent if top_spec.submodule_search_locations else source))


def resolve_plugins(specs: Iterable[str], *, key: str, relative_to: Path) -> list[Plugin]:
    """The plug-ins ``specs`` name, with the source of those that must travel (nothing is imported).

    A module name is looked for in ``relative_to`` first (a module or package
    beside the space file, or in the current directory for ``--plugin``),
    then on ``sys.path``.

    Args:
        specs: ``.py`` paths, package folders or module names.
        key: where they were named, for messages (``plugins``, ``--plugin``).
        relative_to: the folder relative paths and local modules start from (the space file's, or the current directory).

    Raises:
        PluginError: a missing path, a folder that is no package, an unknown module.
    """
    plugins = []
    for spec in specs:
        if not isinstance(spec, str) or not spec:
            raise PluginError(key, repr(spec), "expected a module name or the path of a .py file")
        plugins.append(_from_path(spec, key, relative_to) if _looks_like_path(spec) else _from_module(spec, key, relative_to))
    return plugins


def entry_point_plugins() -> list[Plugin]:
    """The plug-ins installed distributions offer through :data:`ENTRY_POINT_GROUP` (``name = module`` or ``module:attribute``)."""
    return [
        Plugin(spec=entry.value, key=f"entry point {entry.name}", module=entry.module, attribute=entry.attr or None)
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    ]


def plugin_cache_dir() -> Path:
    """The node-local folder shipped plug-ins are unpacked into: ``$NEQ_PLUGIN_CACHE``, else ``<tmp>/neqtune-plugins-<uid>``."""
    configured = os.environ.get("NEQ_PLUGIN_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"neqtune-plugins-{os.getuid()}"


def unpack(plugin: Plugin) -> Path:
    """Unpack the shipped source of ``plugin`` into the node's cache (once per content) and return the file or package folder.

    Two workers unpacking the same plug-in at once each write into a folder
    of their own and rename it into place; the second rename finds the first
    one's folder there and keeps it (same content, same name).
    """
    assert plugin.archive is not None
    target = plugin_cache_dir() / plugin.digest
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{plugin.digest[:12]}-", dir=target.parent))
        with zipfile.ZipFile(io.BytesIO(plugin.archive)) as archive:
            archive.extractall(staging)
        try:
            staging.rename(target)
        except OSError:  # another worker was first
            if not target.is_dir():
                raise
    top = plugin.module.split(".")[0]
    return target / top if (target / top).is_dir() else target / f"{top}.py"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _import_file(module: str, path: Path) -> ModuleType:
    """Import the file or package folder ``path`` as ``module`` (registered in ``sys.modules``; ``sys.path`` is left alone)."""
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(module, path / "__init__.py", submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(module, path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module] = loaded
    try:
        spec.loader.exec_module(loaded)
    except BaseException:
        del sys.modules[module]
        raise
    return loaded


def _file_of(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def _import_once(plugin: Plugin, module: str, location: Path) -> None:
    """Import the file or package folder ``location`` as ``module`` unless that very file is imported already."""
    loaded = sys.modules.get(module)
    if loaded is None:
        _import_file(module, location)
        return
    expected = (location / "__init__.py" if location.is_dir() else location).resolve()
    if _file_of(loaded) != expected:
        raise PluginError(plugin.key, plugin.spec, f"a module named {module!r} is already imported from {_file_of(loaded)}; rename the plug-in")


def _load(plugin: Plugin, *, shipped: bool) -> None:
    """Import one plug-in: on a worker (``shipped``) a travelling one from its unpacked archive, on the driver
    a file from its path, anything else by its module name."""
    try:
        if shipped and plugin.archive is not None:
            top = plugin.module.split(".")[0]
            _import_once(plugin, top, unpack(plugin))
            module = importlib.import_module(plugin.module)
        elif plugin.path is not None:
            _import_once(plugin, plugin.module.split(".")[0], plugin.path)
            module = importlib.import_module(plugin.module)
        else:
            module = importlib.import_module(plugin.module)
        offered: object = module
        for part in (plugin.attribute or "").split(".") if plugin.attribute else ():
            offered = getattr(offered, part)  # an entry point's object: importing its module registered what it offers
    except DuplicateNameError as err:
        raise PluginError(plugin.key, plugin.spec, str(err)) from None
    except PluginError:
        raise
    except Exception as err:
        raise PluginError(plugin.key, plugin.spec, f"{type(err).__name__}: {_first_line(err)}") from None


def load_plugins(plugins: Sequence[Plugin], *, shipped: bool = False) -> None:
    """Import ``plugins`` in order; each registers what it offers. A plug-in imported before is not imported again.

    Args:
        plugins: from :func:`resolve_plugins` and :func:`entry_point_plugins`.
        shipped: import the travelling ones from their unpacked archives (a
            Ray worker, which may never have seen the files), not from their paths.

    Raises:
        PluginError: a plug-in failed to import (its first error line), or it
            registers a name that is taken (both origins named).
    """
    for plugin in plugins:
        _load(plugin, shipped=shipped)


def saved_specs(plugins: Sequence[Plugin]) -> list[str]:
    """What a saved space lists under ``plugins:`` to load the same plug-ins again (absolute paths, module names; no entry points)."""
    return [
        str(plugin.path) if plugin.path is not None and "." not in plugin.module else plugin.spec
        for plugin in plugins
        if not plugin.key.startswith("entry point")
    ]
