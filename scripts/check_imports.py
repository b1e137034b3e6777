"""Check globeflow's import graph against docs/architecture.md.

    python scripts/check_imports.py          # exit 1 and one line per violation, else a summary

Reads every module under src/globeflow with :mod:`ast` (nothing is imported). An edge A -> B is
an ``import`` of globeflow module B anywhere in A: at module level (run when A is imported) or
inside a function (run when it is called); imports under ``if TYPE_CHECKING:`` are ignored.

Rules:
1. no import circle among module-level imports;
2. no module-level import from a lower layer into a higher one (LAYERS below);
3. nothing but the ``globeflow.cli`` package and ``globeflow.__main__`` imports ``globeflow.cli``;
4. inference (api, hub, viz, data, answers, density, encoders, embed, evaluate, metrics) never
   imports ``globeflow.training``, neither directly (any level) nor through module-level imports;
5. viz imports no method module (``globeflow.methods``): it draws what it is given.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"

#: Layers, lowest first; a module imports (at module level) only from its own layer or below.
LAYERS = [
    ["globeflow.io", "globeflow.runs", "globeflow.pretrained", "globeflow.geometry"],
    ["globeflow.paths", "globeflow.nets", "globeflow.solvers", "globeflow.density", "globeflow.metrics"],
    ["globeflow.methods"],
    ["globeflow.data", "globeflow.encoders", "globeflow.training"],
    ["globeflow.hub", "globeflow.api"],
    ["globeflow.answers"],
    ["globeflow.evaluate", "globeflow.embed", "globeflow.demo", "globeflow.predict"],
    ["globeflow.viz", "globeflow.serve"],
    ["globeflow.cli", "globeflow.__main__", "globeflow"],
]
INFERENCE = [
    "globeflow.api",
    "globeflow.hub",
    "globeflow.viz",
    "globeflow.data",
    "globeflow.answers",
    "globeflow.density",
    "globeflow.encoders",
    "globeflow.embed",
    "globeflow.evaluate",
    "globeflow.metrics",
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "globeflow").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _layer(name: str) -> int:
    best, rank = -1, len(LAYERS)
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if _under(name, prefix) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.depth = 0
        self.edges: list[tuple[str, bool, int]] = []  # (target, module level, line)

    def _add(self, target: str, line: int) -> None:
        while target and target not in self.known:
            target = target.rpartition(".")[0]
        if target:
            self.edges.append((target, self.depth == 0, line))

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _under(alias.name, "globeflow"):
                self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        if not _under(base, "globeflow"):
            return
        for alias in node.names:  # `from pkg import submodule` is an edge to the submodule
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.known else base, node.lineno)


def graph() -> dict[str, list[tuple[str, bool, int]]]:
    modules = _modules()
    known = set(modules)
    edges = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        edges[name] = sorted({(t, top, line) for t, top, line in visitor.edges if t != name})
    return edges


def _cycles(top: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in top.get(v, ()):
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

    for v in sorted(top):
        if v not in index:
            visit(v)
    return out


def check() -> list[str]:
    edges = graph()
    top = {m: {t for t, is_top, _ in es if is_top} for m, es in edges.items()}
    problems = [f"import circle: {' <-> '.join(c)}" for c in _cycles(top)]
    for m, es in sorted(edges.items()):
        for t, is_top, line in es:
            where = f"{m}:{line} imports {t}"
            if is_top and _layer(t) > _layer(m):
                problems.append(f"upward import: {where} (layer {_layer(m)} -> {_layer(t)})")
            if _under(t, "globeflow.cli") and not (_under(m, "globeflow.cli") or m == "globeflow.__main__"):
                problems.append(f"CLI import outside the CLI: {where}")
            if any(_under(m, p) for p in INFERENCE) and _under(t, "globeflow.training"):
                problems.append(f"inference imports the trainer: {where}")
            if _under(m, "globeflow.viz") and _under(t, "globeflow.methods"):
                problems.append(f"viz imports a method module: {where}")
    for m in sorted(edges):  # the trainer reached through module-level imports
        if not any(_under(m, p) for p in INFERENCE):
            continue
        seen, todo = set(), [m]
        while todo:
            for t in top.get(todo.pop(), ()):
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        hit = sorted(t for t in seen if _under(t, "globeflow.training"))
        if hit:
            problems.append(f"inference imports the trainer: importing {m} imports {hit[0]}")
    return problems


def main() -> int:
    problems = check()
    for p in problems:
        print(p)
    edges = graph()
    n_top = sum(is_top for es in edges.values() for _, is_top, _ in es)
    n_all = sum(len(es) for es in edges.values())
    n_deferred = n_all - n_top
    print(f"{len(edges)} modules, {n_top} module-level and {n_deferred} deferred imports: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
