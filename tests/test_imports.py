"""The package's import graph, read from the source (pure AST: nothing is imported, so this stays fast).

Two rules keep the layout one a newcomer can follow from the bottom up:

- no import cycle among deepserial's modules, counting imports made inside functions too (an import
  moved into a function to dodge a cycle still is one);
- an import of a deepserial module inside a function is a deliberate lazy load (the flat API of
  ``deepserial/__init__.py``, a heavy optional dependency), and says why in a comment on its line or
  the line above.
"""

from __future__ import annotations

import ast
import functools
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "deepserial"


@dataclass(frozen=True)
class Import:
    """One import of a deepserial module: who imports whom, where, and whether inside a function."""

    source: str
    target: str
    path: Path
    line: int
    end_line: int
    in_function: bool


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, whether it is a package's ``__init__``)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _resolve(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The module ``name`` lands in: itself, or the nearest enclosing module (``pkg.module.attr`` ->
    ``pkg.module``); None outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict) -> list[str]:
    """The deepserial modules one import statement loads: ``import a.b``, ``from a import b`` (``b`` a
    module or a name of ``a``) and relative imports, resolved against ``module``."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = (_resolve(n, modules) for n in names if n == PACKAGE or n.startswith(PACKAGE + "."))
    return sorted({t for t in found if t is not None})


@functools.cache
def _imports() -> tuple[Import, ...]:
    """Every import of a deepserial module by a deepserial module (parsed once per test session)."""
    modules = _modules()
    found: list[Import] = []
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), str(path))

        def visit(node: ast.AST, in_function: bool, module: str = module, path: Path = path, pkg: bool = is_package):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, module, pkg, modules):
                        if target != module:
                            found.append(Import(module, target, path, child.lineno, child.end_lineno, in_function))
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, inner)

        visit(tree, False)
    return tuple(found)


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := dfs(start)):
            return found
    return None


def _comment_lines(path: Path) -> set[int]:
    """The lines of ``path`` that carry a comment (tokenized: a ``#`` inside a string is no comment)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT}


def test_the_graph_is_read() -> None:
    """The graph holds what the package is known to import, module-level and lazy, absolute and
    relative: a parser that found nothing would pass the tests below vacuously."""
    edges = {(i.source, i.target, i.in_function) for i in _imports()}
    assert ("deepserial.workflow", "deepserial.artifacts", False) in edges
    assert ("deepserial.cli", "deepserial.cli.vendor", False) in edges  # `from deepserial.cli import vendor`
    assert ("deepserial", "deepserial.schemes.base", True) in edges  # the flat API's lazy list_schemes
    assert len({i.source for i in _imports()}) > 40


def test_the_package_has_no_import_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for i in _imports():
        edges.setdefault(i.source, set()).add(i.target)
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_import_inside_a_function_says_why() -> None:
    missing = []
    comments: dict[Path, set[int]] = {}
    for i in _imports():
        if not i.in_function:
            continue
        lines = comments.setdefault(i.path, _comment_lines(i.path))
        if not lines & set(range(i.line - 1, i.end_line + 1)):
            missing.append(f"{i.path.relative_to(SRC)}:{i.line} imports {i.target} inside a function")
    assert not missing, (
        "a deepserial import inside a function needs a comment saying why it is lazy (its line or the "
        "line above); otherwise import it at the top of the module:\n" + "\n".join(sorted(set(missing)))
    )


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
