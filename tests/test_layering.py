"""Layering of the ``fastgate`` package: every module imports on its own, the import graph
(module-level and in-function imports, read with ``ast``) has no cycle, and core modules do
not import another module's private helpers."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FASTGATE_HOME, subprocess_env

PACKAGE = Path(FASTGATE_HOME) / "fastgate"

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every Python module of the package, by dotted name."""
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(name: str, path: Path, modules: dict[str, Path], tree: ast.AST | None = None
              ) -> set[str]:
    """The fastgate modules ``name`` imports anywhere in its source (or in ``tree``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if tree is None:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import oracle` imports a module
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {target for target in found if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the fastgate package."""
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_relative_and_in_function_imports():
    graph = import_graph()
    assert "fastgate.oracle" in graph["fastgate.oracle_plan"]  # from . import oracle
    assert "fastgate.importers.keras" in graph["fastgate.loading"]  # inside load()
    assert "fastgate.cli._common" in graph["fastgate.cli.bench"]


def test_no_import_cycle():
    """The one exception: the ``to_torch_state_dict`` / ``to_onnx`` methods of layers, cells
    and models import ``fastgate.export`` when called (the exporters read the layers, so the
    dependency is export -> core; see the next test for "only inside functions")."""
    graph = import_graph()
    for source, targets in graph.items():
        if not source.startswith("fastgate.export"):
            targets -= {target for target in targets if target.startswith("fastgate.export")}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def _import_time_statements(tree: ast.AST) -> list[ast.stmt]:
    """The import statements of a module that run when it is imported: everywhere but in
    function bodies (class bodies, ``if`` and ``try`` blocks run)."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        found += _import_time_statements(node)
    return found


def test_only_functions_import_the_exporters():
    """No module outside fastgate/export/ imports it when imported (in a method is fine)."""
    modules = _modules()
    offences = []
    for name, path in modules.items():
        if name.startswith("fastgate.export"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        statements = ast.Module(body=_import_time_statements(tree), type_ignores=[])
        targets = _imported(name, path, modules, statements)
        offences += [f"{name} imports {target}" for target in sorted(targets)
                     if target.startswith("fastgate.export")]
    assert offences == []


def test_core_modules_import_no_private_name_of_another_module():
    """fastgate/*.py may import public names, or anything from a private module
    (``_validation``, ``_version``, ``_kernels``): not another module's ``_helpers``."""
    offences = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            if (node.module or "").split(".")[-1].startswith("_"):
                continue
            offences += [f"{path.name}:{node.lineno} imports {alias.name} from "
                         f"{node.module}" for alias in node.names
                         if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert offences == []


# Imports the module with its dependencies only: a bare `fastgate` package object stands in
# for fastgate/__init__.py (which imports everything, and would hide an order dependence).
_IMPORT_ALONE = """
import importlib, sys, types
package = types.ModuleType("fastgate")
package.__path__ = [{path!r}]
sys.modules["fastgate"] = package
importlib.import_module({name!r})
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(_modules()) - {"fastgate", "fastgate.__main__"}))
def test_module_imports_alone(name, tmp_path):
    code = _IMPORT_ALONE.format(path=str(PACKAGE), name=name)
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_package_and_main_import_in_a_fresh_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastgate", "--version"],
                            env=subprocess_env(), cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("fastgate "), result.stderr
    assert os.path.dirname(PACKAGE) == FASTGATE_HOME
