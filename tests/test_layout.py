"""The package's shape: one root namespace, no import cycles, nothing installed under a generic top-level name.

The cycle check reads every module of ``neqtune`` with ``ast`` and follows every import of another ``neqtune``
module, wherever it stands (module level, inside a function, under ``TYPE_CHECKING``): an import moved into a
function to dodge a cycle is still a cycle. It runs in the test suite, so a new cycle fails ``make test``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import neqtune
from neqtune.datasets.shadow import huggingface_datasets

ROOT = Path(__file__).resolve().parent.parent


def neqtune_modules() -> dict[str, Path]:
    """Every module of the package by dotted name, read from the folders the parts live in."""
    folders = {"neqtune": ROOT / "neqtune", **{f"neqtune.{part}": ROOT / part for part in neqtune.PARTS}}
    modules: dict[str, Path] = {}
    for package, folder in folders.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the neqtune modules it imports (``from a.b import c`` counts as ``a.b.c`` when that is a module)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    modules = neqtune_modules()
    assert len(modules) > 60  # the walk found the package
    assert cycles(import_graph(modules)) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_import_is_through_the_root_namespace() -> None:
    """No module, test or benchmark imports a part by its folder's name (that works only from the repository's root)."""
    old = {"search", "trainables", "results", "neqtune_datasets"}
    offenders = []
    for path in [*ROOT.glob("*.py"), *(p for folder in ("neqtune", *neqtune.PARTS, "benchmarks", "tests") for p in (ROOT / folder).rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.split(".")[0] in old]
    assert offenders == []


def test_only_neqtune_is_installed_at_the_top_level() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {package.split(".")[0] for package in setuptools["packages"]} == {"neqtune"}
    assert set(setuptools["package-dir"]) == {f"neqtune.{part}" for part in neqtune.PARTS}


# What each layer may import of neqtune: the layers run one way (datasets, then trainables, then search), and the
# analysis reads tables only. The Pareto functions, shared by the search and the analysis, are below them all; the
# root package (its lazy re-exports, python -m neqtune) above them all.
BASE = {"neqtune", "neqtune.pareto"}
MAY_IMPORT = {
    "neqtune": {"neqtune.pareto", "neqtune.datasets", "neqtune.trainables", "neqtune.search", "neqtune.results"},
    "neqtune.pareto": set(),
    "neqtune.datasets": BASE,
    "neqtune.trainables": BASE | {"neqtune.datasets"},
    "neqtune.search": BASE | {"neqtune.datasets", "neqtune.trainables", "neqtune.results"},
    "neqtune.results": BASE,
}


def layer(module: str) -> str:
    """``neqtune.<part>`` for a part's module, ``neqtune.pareto`` for itself, else ``neqtune`` (the root's modules)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (parts[1] in neqtune.PARTS or parts[1] == "pareto") else "neqtune"


def layer_offences(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a layer that the importing module's layer may not use, as ``module -> imported``."""
    return sorted(f"{m} -> {i}" for m, imports in graph.items() for i in imports if layer(i) != layer(m) and layer(i) not in MAY_IMPORT[layer(m)])


def test_each_layer_imports_only_the_layers_below_it() -> None:
    """Read statically, so an import inside a function or under TYPE_CHECKING counts too (a subprocess that imports
    a package sees only what its module level pulls in)."""
    graph = import_graph(neqtune_modules())
    assert set(MAY_IMPORT) == {layer(m) for m in graph}  # every part has its rule
    assert layer_offences(graph) == []


def test_the_layer_check_names_an_upward_import() -> None:
    graph = {"neqtune.datasets.a": {"neqtune.trainables.b"}, "neqtune.results.c": {"neqtune.pareto", "neqtune.search.d"}, "neqtune.pareto": {"neqtune.results.c"}}
    assert layer_offences(graph) == ["neqtune.datasets.a -> neqtune.trainables.b", "neqtune.pareto -> neqtune.results.c", "neqtune.results.c -> neqtune.search.d"]


def test_the_data_sets_and_the_root_load_alone() -> None:
    """The data sets are imported alone in a fresh interpreter (the root package with them): no other part and
    nothing of Ray or Optuna comes with them, so ``import neqtune`` stays cheap and a loader's processes light."""
    probe = (
        "import sys, neqtune.datasets; "
        "print(sorted({'.'.join(m.split('.')[:2]) for m in sys.modules if m.startswith('neqtune.')} - {'neqtune.datasets'}"
        " | {m.split('.')[0] for m in sys.modules} & {'ray', 'optuna'}))"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_import_datasets_from_the_repository_root_is_huggingface_s(tmp_path: Path) -> None:
    """From the root, ``datasets`` is the folder neqtune.datasets by path only; the name goes to the installed package."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("WHOSE = 'huggingface'\n")
    probe = "import datasets, neqtune.datasets; print(datasets.WHOSE, neqtune.datasets.__name__)"
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.stdout.split() == ["huggingface", "neqtune.datasets"], done.stderr
    # The dev extra installs HuggingFace's package (the hf-disk tests): from the root the name leads to it, not the folder.
    plain = subprocess.run([sys.executable, "-c", WHERE], cwd=ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    if plain.returncode == 0:
        assert plain.stdout.split() == ["True"], plain.stdout
    else:
        assert "No module named 'datasets' (HuggingFace's): pip install 'neqtune[hf]'" in plain.stderr


def test_without_huggingface_s_package_the_shadowed_import_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(ROOT)])  # only the repository: no installed datasets anywhere
    with pytest.raises(ModuleNotFoundError, match=r"No module named 'datasets' \(HuggingFace's\): pip install 'neqtune\[hf\]'"):
        huggingface_datasets(str(ROOT / "datasets" / "__init__.py"))


# From the root: where ``import datasets`` came from, HuggingFace's site-packages (True) or the repository's folder.
WHERE = "import datasets; print('site-packages' in datasets.__file__ and not hasattr(datasets, 'dataset_names'))"


def test_the_policies_name_no_layer_type() -> None:
    """A policy reaches layers through neqtune.trainables.budget.units only, so a new layer kind leaves the policies alone."""
    named = []
    for path in (ROOT / "trainables" / "policies").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            name = name or (node.name if isinstance(node, ast.alias) else None)
            if name in {"Conv2d", "Linear", "conv_layers"}:
                named.append(f"{path.name}: {name}")
    assert named == []


def test_a_declared_metric_joins_the_schema_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from neqtune.trainables import metrics
    from neqtune.trainables.metrics import Metric, all_metrics, metric_names, register_metric

    monkeypatch.setattr(metrics, "_REGISTERED", [])  # the probe's declarations end with the test

    metric = register_metric(Metric("layout_probe_units", "mean", objective=True))
    assert register_metric(Metric("layout_probe_units", "mean", objective=True)) is not None  # a plug-in imported twice
    assert "layout_probe_units" in metric_names(objective=True) and all_metrics()[-1] == metric
    with pytest.raises(ValueError, match=r"^metric 'layout_probe_units' is already declared"):
        register_metric(Metric("layout_probe_units", "sum"))
    with pytest.raises(ValueError, match=r"per-seed values and stds are kept for the accuracies only"):
        register_metric(Metric("layout_probe_spread", "mean", std=True))
