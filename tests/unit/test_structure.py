"""The package's structure, read from the source with `ast` (nothing is imported):

- the module import graph of src/d3llm, with imports at the top of a module AND inside
  functions (`from d3llm.x import y` resolved to module `d3llm.x.y` when that is a module),
  has no cycle, and neither has the graph of its subpackages;
- imports of d3llm inside functions appear only where they are deliberate laziness, listed
  in LAZY with the reason;
- docs/design.md's import rules: decode/ imports nothing from train/, eval/, serve/; metrics/
  imports no model code (torch, transformers, d3llm.models).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "src" / "d3llm"

# Modules whose imports of d3llm may sit inside functions: deliberate lazy imports, for speed
# or optional extras. None of them closes a cycle (the graph below includes them).
LAZY = {
    "d3llm": "`import d3llm` stays cheap: load_model / generate / get_task on first use",
    **dict.fromkeys(("d3llm.cli", "d3llm.cli.common", "d3llm.cli.decoding", "d3llm.cli.evaluation",
                     "d3llm.cli.models", "d3llm.cli.training", "d3llm.cli.tuning"),
                    "commands import torch-using modules when run, so -h, --version and `d3llm models` stay fast"),
    "d3llm.decode": "the settings import without torch; the loop (generate) on first use",
    "d3llm.models": "names on first use, so `d3llm models` (models/catalog.py) does not import torch",
    "d3llm.serve": "the web modules need the optional `serve` extra; `d3llm chat` does not",
    "d3llm.eval.lm_eval_cli": "the adapter needs the optional `eval` extra (lm-eval)",
}


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if "bundled" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def _resolve(name: str) -> str | None:
    """The d3llm module `name` is, or is inside (`d3llm.decode.preset` -> `d3llm.decode`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, node: ast.AST) -> list[str]:
    """Full names an import statement brings in (relative imports made absolute)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    return []


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported name, inside a function?, line) for every import statement of `module`."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            for name in _imported(module, child):
                found.append((name, in_function, child.lineno))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the d3llm modules it imports (top level and inside functions)."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        targets = {_resolve(name) for name, _, _ in _imports(module) if name.split(".")[0] == "d3llm"}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a], or None (depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def subpackage(module: str) -> str:
    """`d3llm.eval.runner` -> `d3llm.eval`; top-level modules (`d3llm.cli`) are their own."""
    return ".".join(module.split(".")[:2])


def test_the_graph_sees_imports_inside_functions():
    """The check reads what it claims to: known function-level imports are edges."""
    graph = import_graph()
    assert "d3llm.models.catalog" in graph["d3llm.cli.models"]  # imported inside `models()`
    assert "d3llm.api" in graph["d3llm"]  # imported inside `__getattr__`
    assert ("d3llm.models.catalog", True) in {(_resolve(n), f) for n, f, _ in _imports("d3llm.cli.models")}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_subpackages():
    packages: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        packages.setdefault(subpackage(module), set()).update(
            subpackage(t) for t in targets if subpackage(t) != subpackage(module))
    cycle = find_cycle(packages)
    assert cycle is None, "import cycle between subpackages: " + " -> ".join(cycle)


def test_imports_of_d3llm_sit_at_the_top_except_deliberate_laziness():
    inside = sorted({f"{MODULES[m].relative_to(ROOT.parent)}:{line} imports {_resolve(name)}"
                     for m in MODULES if m not in LAZY
                     for name, in_function, line in _imports(m) if in_function and name.split(".")[0] == "d3llm"})
    assert not inside, "imports inside functions (move them to the top, or the shared piece down):\n" + \
        "\n".join(inside)
    assert set(LAZY) <= set(MODULES)


def _uses(prefix: str) -> dict[str, set[str]]:
    """Module of `prefix` -> every name it imports (d3llm and third-party, anywhere)."""
    return {m: {name for name, _, _ in _imports(m)} for m in MODULES if m == prefix or m.startswith(prefix + ".")}


def test_decode_imports_nothing_from_train_eval_serve():
    bad = {m: sorted(n for n in names if n.split(".")[:2] in (["d3llm", "train"], ["d3llm", "eval"],
                                                                 ["d3llm", "serve"]))
           for m, names in _uses("d3llm.decode").items()}
    assert not any(bad.values()), bad


def test_metrics_import_no_model_code():
    bad = {m: sorted(n for n in names if n.split(".")[0] in ("torch", "transformers")
                     or n.split(".")[:2] == ["d3llm", "models"])
           for m, names in _uses("d3llm.metrics").items()}
    assert not any(bad.values()), bad
