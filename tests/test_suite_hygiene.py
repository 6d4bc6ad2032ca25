"""Rules the test suite keeps, checked on its own source (``ast``).

* A subprocess runs from a chosen directory (``cwd=``): ``python -c`` / ``-m`` put the
  current directory first on ``sys.path``, so run from a checkout they would test its source
  tree instead of the fastgate under test (``conftest.subprocess_env``).
* Nothing skips: a skipped comparison hides a broken build or a missing test dependency.
"""

import ast
import re
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


# ---------------------------------------------------------------------- function length
#: The longest a function of fastgate/ may be (lines from its signature to its end,
#: docstring included): a reader takes in a function whole.
MAX_FUNCTION_LINES = 80
#: Functions allowed to be longer, each with the reason ("path:name": reason). Empty now;
#: an entry needs a reason a reviewer accepts.
LONG_FUNCTIONS_ALLOWED: dict[str, str] = {}

_PYX_DEF = re.compile(r"^(\s*)(?:cpdef|cdef|def)\s[^=]*?(\w+)\s*\(")
# a return type, then the name: "static inline float fg_exp(", not a macro's use "M(a, b)"
_C_SIGNATURE = re.compile(r"^[A-Za-z_][\w \t*]*[ \t*](\w+)\s*\(")


def _python_functions(text: str):
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def _cython_functions(text: str):
    # a def/cdef/cpdef with parentheses runs until the next code line indented no deeper
    lines = text.split("\n")
    for start, line in enumerate(lines):
        match = _PYX_DEF.match(line)
        if match is None or "extern" in line:
            continue
        indent, last = len(match.group(1)), start
        for k in range(start + 1, len(lines)):
            code = lines[k].strip()
            if not code or code.startswith("#"):
                continue
            if len(lines[k]) - len(lines[k].lstrip()) <= indent:
                break
            last = k
        yield match.group(2), start + 1, last - start + 1


def _c_functions(text: str):
    # a signature from column 0, then its body by counting braces (a ";" before any "{" is
    # a declaration); a multi-line macro (which may define a function per ISA) counts as
    # one function
    lines = text.split("\n")
    k = 0
    while k < len(lines):
        line = lines[k]
        if line.startswith("#define") and line.rstrip().endswith("\\"):
            end = k
            while lines[end].rstrip().endswith("\\"):
                end += 1
            yield line.split()[1].split("(")[0], k + 1, end - k + 1
            k = end + 1
            continue
        match = _C_SIGNATURE.match(line)
        end = None if match is None else _c_body_end(lines, k)
        if end is None:
            k += 1
            continue
        named = re.search(r"FG_NAME\((\w+)\)", line)   # a function defined per ISA
        yield (named or match).group(1), k + 1, end - k + 1
        k = end + 1


def _c_body_end(lines: list[str], start: int) -> int | None:
    """The line where the function whose signature starts at ``start`` ends (``None``: not
    a function definition)."""
    depth, opened = 0, False
    for k in range(start, len(lines)):
        code = re.sub(r'"(\\.|[^"\\])*"', "", lines[k].split("//")[0])
        for char in code:
            if char == ";" and not opened:
                return None
            if char == "{":
                depth, opened = depth + 1, True
            elif char == "}":
                depth -= 1
                if opened and depth == 0:
                    return k
    return None


def function_lengths(package: Path):
    """``(lines, "path:name", line)`` of every function in the package's own source."""
    scanners = {".py": _python_functions, ".pyx": _cython_functions,
                ".pxd": _cython_functions, ".h": _c_functions}
    for path in sorted(package.rglob("*")):
        scan = scanners.get(path.suffix)
        if scan is None:
            continue
        for name, line, length in scan(path.read_text(encoding="utf-8")):
            yield length, f"{path.relative_to(package.parent).as_posix()}:{name}", line


def test_function_length_scanner_sees_every_language():
    python = list(_python_functions("def f():\n    x = 1\n\n    return x\n"))
    cython = list(_cython_functions("cdef int f(int x) nogil:\n    x += 1\n\n    return x\n"
                                    "\ncdef int y = 2\n"))
    c = list(_c_functions("static int f(int x)\n{\n    return x;\n}\n#define M(a) \\\n"
                          "    a \\\n    a\nint g(void);\nstatic int h(void) { return 1; }\n"
                          "int k(int y)\n{\n    if (y) {\n        y = 2;\n    }\n    return y;\n"
                          "}\n"))
    assert python == [("f", 1, 4)] and cython == [("f", 1, 4)]
    assert c == [("f", 1, 4), ("M", 5, 3), ("h", 9, 1), ("k", 10, 7)]


def test_no_function_is_too_long():
    functions = list(function_lengths(TESTS.parent / "fastgate"))
    languages = {where.split(":")[0].rsplit(".", 1)[1] for _, where, _ in functions}
    assert languages >= {"py", "pyx", "h"} and len(functions) > 500   # the scanners read it
    too_long = [f"{where} at line {line}: {length} lines" for length, where, line in functions
                if length > MAX_FUNCTION_LINES and where not in LONG_FUNCTIONS_ALLOWED]
    assert too_long == []
