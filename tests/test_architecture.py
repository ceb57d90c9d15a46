"""The layering written in docs/architecture.md, checked on the code.

Every ``edgeprune`` import is read off the source (module level, inside functions and
under ``TYPE_CHECKING`` alike: a lazy import is still a dependency) and must point to
the importer's own layer or one below it. Import circles between modules, long modules
without a written reason, and options smuggled through ``ctx.meta`` fail here too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgeprune"

#: bottom -> top; a module may import its own layer and the layers below it
LAYERS: list[tuple[str, ...]] = [
    ("edgeprune", "edgeprune.errors", "edgeprune.registry", "edgeprune.paths", "edgeprune.durations", "edgeprune.signals",
     "edgeprune.host", "edgeprune.runner"),
    ("edgeprune.config",),
    ("edgeprune.models",),
    ("edgeprune.bench",),
    ("edgeprune.compile",),
    ("edgeprune.prune",),
    ("edgeprune.latency",),
    ("edgeprune.results",),
    ("edgeprune.flows",),
    ("edgeprune.cli",),
]
MAX_LINES = 500
#: a module longer than MAX_LINES says why in its docstring, in a line starting with this
LONG_REASON = "Why this module is long:"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py (add it, and to docs)"
    return best


def sources() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported edgeprune module) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "edgeprune"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "edgeprune":
                continue
            mods = sources()
            for a in node.names:  # `from edgeprune.compile import summary` imports a module
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if sub in mods else target))
    return out


def test_imports_only_point_down_the_layers():
    bad = []
    for mod, path in sources().items():
        mine = layer_of(mod)
        for line, imp in imports_of(path, mod):
            if layer_of(imp) > mine:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {mod} (layer {mine}) imports {imp} "
                           f"(layer {layer_of(imp)})")
    assert not bad, "imports against the layering of docs/architecture.md:\n" + "\n".join(bad)


def test_the_runner_imports_nothing_of_edgeprune():
    """The runner is shipped alone to a board that has only numpy and a runtime."""
    bad = [f"{p}:{line}: {imp}" for mod, p in sources().items() if mod.startswith("edgeprune.runner")
           for line, imp in imports_of(p, mod) if not imp.startswith("edgeprune.runner")]
    assert not bad, "\n".join(bad)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    mods = sources()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps = set()
        for _, imp in imports_of(path, mod):
            # a package's __init__ is a façade: importing a name from it depends on the package,
            # not on every module it re-exports; only module -> module edges make a circle
            if imp in mods and imp != mod and not mod.startswith(imp + "."):
                deps.add(imp)
        graph[mod] = deps
    circles = _circles(graph)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_long_modules_say_why():
    bad = []
    for mod, path in sources().items():
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if LONG_REASON not in doc:
                bad.append(f"{path.relative_to(ROOT.parent)}: {n} lines")
    assert not bad, f"modules over {MAX_LINES} lines without '{LONG_REASON}' in their docstring:\n" + "\n".join(bad)


@pytest.mark.parametrize("pattern,why", [
    (r"\bctx\.meta\b", "options travel in typed objects, not ctx.meta"),
    (r"^\s*global\s+\w", "no module globals carrying state between calls"),
])
def test_no_side_channels(pattern, why):
    rx = re.compile(pattern, re.M)
    bad = [f"{p.relative_to(ROOT.parent)}" for p in sources().values() if rx.search(p.read_text())]
    assert not bad, f"{why}: " + ", ".join(bad)


def test_library_never_imports_the_cli():
    bad = [f"{p}:{line}" for mod, p in sources().items() if not mod.startswith("edgeprune.cli")
           for line, imp in imports_of(p, mod) if imp.startswith("edgeprune.cli")]
    assert not bad, bad
