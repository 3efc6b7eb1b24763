"""The package's shape (docs/architecture.md): no file cycles, imports at the top, each timing fact defined once.

`lint-imports` (run by .ci/run, contracts in pyproject.toml) checks the layers; these tests check what it does not.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mtdistill"
LAZY_ALLOWED = ("cli.py", "commands/")
MAX_LAZY = 8


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported mtdistill module, is_lazy) for every import statement of the file, resolved to module names."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            candidates = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for name in candidates:
            if name.startswith("mtdistill") and _exists(name):
                found.append((name, node.col_offset > 0))
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_file_cycles_counting_lazy_imports() -> None:
    graph = {_module_name(f): {m for m, _ in _imports(f)} for f in _files()}
    # a module importing its own package's __init__ (or a parent package) is not a cycle between files
    for mod, deps in graph.items():
        deps -= {d for d in deps if mod.startswith(d + ".") or d == mod}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "import cycles between files: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_of_mtdistill_modules_sit_at_the_top_outside_the_cli() -> None:
    lazy = [
        f"{f.relative_to(SRC)} imports {m}"
        for f in _files()
        if not str(f.relative_to(SRC)).startswith(LAZY_ALLOWED)
        for m, is_lazy in _imports(f)
        if is_lazy
    ]
    assert len(lazy) <= MAX_LAZY, "imports inside functions outside cli/commands:\n" + "\n".join(lazy)


TIMING_FACTS = {
    # fact: (name pattern of the variable or argument, value)
    "sample rate 16 kHz": (r"(?i)^(sr|sample_rate|rate|SR)$|SAMPLE_RATE", 16000),
    "640 samples per frame": (r"(?i)samples", 640),
    "25 fps analysis rate": (r"(?i)fps", 25),
    "5-frame window": (r"^WINDOW\w*$|^window_frames$", 5),
    "+-15 search range": (r"(?i)shift|search|range", 15),
}


def _bindings(tree: ast.AST) -> list[tuple[str, object, int]]:
    """(name, constant value, line) for assignments and argument defaults with a literal number."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if isinstance(node.value, ast.Constant):
                out += [(t.id, node.value.value, node.lineno) for t in targets if isinstance(t, ast.Name)]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args
            pairs = list(zip(args[len(args) - len(node.args.defaults) :], node.args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True) if d]
            out += [(a.arg, d.value, d.lineno) for a, d in pairs if isinstance(d, ast.Constant)]
    return out


@pytest.mark.parametrize("fact", sorted(TIMING_FACTS))
def test_each_timing_fact_is_defined_once_in_core_timing(fact: str) -> None:
    pattern, value = TIMING_FACTS[fact]
    places = [
        f"{f.relative_to(SRC)}:{line} {name} = {v}"
        for f in _files()
        for name, v, line in _bindings(ast.parse(f.read_text()))
        if v == value and type(v) is not bool and re.search(pattern, name)
    ]
    outside = [p for p in places if not p.startswith("core/timing.py")]
    assert not outside, f"{fact} defined outside core/timing.py: {outside}"


def test_mel_window_start_is_defined_once() -> None:
    places = [f.relative_to(SRC) for f in _files() if "def mel_window_start(" in f.read_text()]
    assert [str(p) for p in places] == ["core/timing.py"]


def test_import_layer_contracts_hold() -> None:
    """`lint-imports` with the contracts in pyproject.toml: layers, no sibling cycles, facades, system separation."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed; `pip install -e .[dev]` (scripts/setup.sh) installs it")
    proc = subprocess.run([exe], cwd=SRC.parents[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout
