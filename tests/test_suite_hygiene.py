"""Rules the test suite keeps, checked on its own source (``ast``).

* A subprocess runs from a chosen directory (``cwd=``): ``python -c`` / ``-m`` put the
  current directory first on ``sys.path``, so run from a checkout they would test its source
  tree instead of the fastgate under test (``conftest.subprocess_env``).
* Nothing skips: a skipped comparison hides a broken build or a missing test dependency.
"""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node


def test_every_subprocess_runs_from_a_chosen_directory():
    missing = [f"{path.name}:{call.lineno}" for path in sorted(TESTS.glob("*.py"))
               for call in _calls(path)
               if isinstance(call.func.value, ast.Name) and call.func.value.id == "subprocess"
               and call.func.attr in SUBPROCESS_CALLS
               and not any(keyword.arg == "cwd" for keyword in call.keywords)]
    assert missing == []


def test_nothing_skips():
    skips = [f"{path.name}:{call.lineno}" for path in sorted(TESTS.glob("*.py"))
             for call in _calls(path)
             if call.func.attr in {"skip", "skipif", "importorskip", "xfail"}
             and isinstance(call.func.value, (ast.Name, ast.Attribute))]
    assert skips == []


def test_every_package_is_installed():
    # pyproject lists the packages by hand; one left out installs without it, and only a
    # fresh clone's `pip install .` notices (fastgate.export once did).
    import tomllib

    root = TESTS.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(init.parent.relative_to(root).parts)
             for init in (root / "fastgate").rglob("__init__.py")}
    assert listed == found
