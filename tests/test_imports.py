"""The package's import graph has no circles, and the sharding layer knows no model.

Every import counts, those inside functions too: a lazy import that closes a circle still ties
the two modules together. `from pkg import sub` is an edge to the submodule `sub` alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "rlvr_jax"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the rlvr_jax modules it imports."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in mods]
                if len(targets) < len(subs):
                    targets.append(base)
            else:
                continue
            graph[m] |= {o for t in targets if (o := owner(t)) and o != m}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = [stack.pop()]
            while comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_mesh_imports_no_model():
    assert not {m for m in import_graph()["rlvr_jax.mesh"] if m.startswith("rlvr_jax.models")}


def test_every_package_import_resolves_in_this_tree():
    """Each `rlvr_jax.X` that the package, its tools, tests and benchmarks import is a module of
    this tree (an editable install elsewhere would otherwise answer for a moved module)."""
    mods = set(_modules())
    root = PKG.parent
    missing = []
    for p in sorted(
        q for d in ("rlvr_jax", "tools", "tests", "bench") for q in (root / d).rglob("*.py")
    ):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
                if node.module in mods:  # `from pkg import sub` names a module or a definition
                    pkg = root.joinpath(*node.module.split("."))
                    names += [
                        f"{node.module}.{a.name}"
                        for a in node.names
                        if pkg.is_dir() and not _defines(pkg / "__init__.py", a.name)
                    ]
            else:
                continue
            missing += [
                f"{p.relative_to(root)}: {n}"
                for n in names
                if n.split(".")[0] == "rlvr_jax" and n not in mods
            ]
    assert missing == []


def _defines(init: Path, name: str) -> bool:
    """Whether the package __init__ `init` binds `name` at top level."""
    for node in ast.parse(init.read_text()).body:
        targets = []
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        elif isinstance(node, ast.Import | ast.ImportFrom):
            targets = [(a.asname or a.name).split(".")[0] for a in node.names]
        if name in targets:
            return True
    return False


def test_nothing_patches_sys_path():
    """The package, its tools and benchmarks find each other through the installed package."""
    root = PKG.parent
    hits = [
        f"{p.relative_to(root)}"
        for d in ("rlvr_jax", "tools", "bench", "configs")
        for p in sorted((root / d).rglob("*.py"))
        if "sys.path.insert" in p.read_text() or "sys.path.append" in p.read_text()
    ]
    assert hits == []
