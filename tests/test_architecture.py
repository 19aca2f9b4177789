"""Fitness tests that fail when the core/method boundary erodes.

The core (every module under ``lpo_bench/``) reads methods and step reward models only through the registry's
specs: it imports no method package and names no method, except the registry's tables. The import graph of
the whole package (core and method folders) has no cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "lpo_bench"
# Method and step-reward-model names, and the words the core used for them before the boundary existed.
METHOD_WORDS = {"lpo", "spo", "dpo", "lrm", "spm"}
TOOL_NAMES = re.compile(r"lpo[-_]bench", re.IGNORECASE)  # the tool's own name is not a method name
ALLOWED = {CORE / "registry.py"}  # the registry's tables are where names map to specs


def _core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if p not in ALLOWED)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("methods", "baselines"):
        parts = ["lpo_bench", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _words(text: str, sep: str) -> set[str]:
    return {w.lower() for w in re.split(sep, TOOL_NAMES.sub(" ", text)) if w}


def method_names_in(source: str) -> list[str]:
    """Identifiers and string constants (not docstrings) that name a method or a step reward model."""
    tree = ast.parse(source)
    docs = _docstring_nodes(tree)
    hits = []
    for node in ast.walk(tree):
        # strings with a "/" are repository ids and paths of data sources (e.g. the 4k prompts of Kwai-Kolors/LPO)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                and "/" not in node.value:
            if _words(node.value, r"[^A-Za-z0-9]+") & METHOD_WORDS:
                hits.append(f"line {node.lineno}: string {node.value[:40]!r}")
        names = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.arg):
            names = [node.arg]
        for n in names:
            if _words(n, r"_+") & METHOD_WORDS:
                hits.append(f"line {node.lineno}: name {n}")
    return hits


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (module level and inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def test_the_scanner_sees_method_names():
    """The checks below would have failed on the v0.1 core (e.g. bench.py's STEP_METHODS = ("lpo", "spo"))."""
    assert method_names_in('STEP_METHODS = ("lpo", "spo")\n')
    assert method_names_in("def make_lrm(bundle):\n    return bundle\n")
    assert method_names_in('x = options["extra"]["spm"]\n')
    assert method_names_in('TRAIN_OVERRIDES = {"diffusion-dpo": {}}\n')
    assert not method_names_in('"""LPO and SPO in a docstring are prose."""\nname = "lpo-bench"\n')


def test_core_modules_name_no_method():
    offenders = {str(p.relative_to(ROOT)): hits for p in _core_files() if (hits := method_names_in(p.read_text()))}
    assert offenders == {}


def test_core_modules_import_no_method_package():
    offenders = {}
    for p in _core_files():
        bad = sorted(m for m in imported_modules(p) if m.startswith(("lpo_bench.methods", "lpo_bench.baselines")))
        if bad:
            offenders[str(p.relative_to(ROOT))] = bad
    assert offenders == {}


def _package_files() -> list[Path]:
    return sorted([*CORE.rglob("*.py"), *(ROOT / "methods").rglob("*.py"), *(ROOT / "baselines").rglob("*.py")])


def test_import_graph_is_acyclic():
    modules = {_module_name(p): p for p in _package_files()}
    graph = {m: {i for i in imported_modules(p) if i in modules and i != m} for m, p in modules.items()}
    # importing a.b.c also imports its packages a.b and a: count those edges too, except a module's own
    # ancestors (a package's __init__ importing its submodules is initialisation, not a cycle)
    for m in list(graph):
        parents = {".".join(i.split(".")[:k]) for i in graph[m] for k in range(2, i.count(".") + 1)}
        graph[m] |= {q for q in parents if q in modules and q != m and not m.startswith(q + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_harness_files_stay_small():
    """A harness, analysis, evaluation or bench file over ~400 lines mixes concerns. The toy world's renderer
    and the metric adapters' rule tables are cohesive and exempt."""
    exempt = (CORE / "toy", CORE / "metrics")
    big = {str(p.relative_to(ROOT)): n for p in _core_files() if not p.is_relative_to(exempt[0])
           and not p.is_relative_to(exempt[1]) if (n := len(p.read_text().splitlines())) > 420}
    assert big == {}
