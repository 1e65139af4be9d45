"""The package's import graph: no cycles between modules, and no import from a lower layer to a higher
one. Layers (a package may import from its own layer or below):

    errors, ranking, config, tracking  <  store, models, corpus  <  extraction, data, methods
    <  probes, evaluation, viz, analysis, causal, benchmark  <  tasks  <  cli

Every `import` statement counts, also those inside functions (a lazy import still couples the code).
"""
from __future__ import annotations

import ast
from pathlib import Path

import neurolab

ROOT = Path(neurolab.__file__).resolve().parent
LAYERS = [
    {"errors", "ranking", "config", "tracking", "heap", "__init__"},
    {"store", "models", "corpus"},
    {"extraction", "data", "methods"},
    {"probes", "evaluation", "viz", "analysis", "causal", "benchmark"},
    {"tasks"},
    {"cli", "__main__"},
]


def _layer(top: str) -> int:
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"neurolab.{top} is in no layer of this test: place it in LAYERS")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package imported by ``path`` (resolved to their dotted names)."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("neurolab"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("neurolab"):
                continue
            for a in node.names:  # `from . import x` may name a submodule
                sub = f"{target}.{a.name}"
                out.add(sub if _exists(sub) else target)
    return out


def _exists(dotted: str) -> bool:
    p = ROOT.parent.joinpath(*dotted.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): {m for m in _imports(p) if _exists(m)} for p in ROOT.rglob("*.py")}


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_goes_up_a_layer():
    bad = []
    for mod, deps in _graph().items():
        for dep in deps:
            if _layer(_top(dep)) > _layer(_top(mod)):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = _graph()
    # a package's __init__ re-exporting its own submodules is not a dependency of theirs: drop those edges
    for mod, deps in g.items():
        if (ROOT.parent.joinpath(*mod.split(".")) / "__init__.py").exists():
            g[mod] = {d for d in deps if not d.startswith(mod + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d == m:
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif state.get(d) is None:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layers_cover_every_subpackage():
    for p in ROOT.iterdir():
        if p.is_dir() and (p / "__init__.py").exists():
            _layer(p.name)
        elif p.suffix == ".py":
            _layer(p.stem)
