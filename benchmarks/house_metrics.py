"""How well the package keeps its house: upward imports, import circles, module and function sizes.

Reads the source of a package tree (this checkout's ``src/fmrilm`` by default, or any other
checkout's, e.g. an older commit in a ``git worktree``) without importing it, and counts:

* **upward imports**: an internal import from a module to one in a higher layer of
  docs/architecture.md (layers by folder: ``errors/io/runtime`` 0, ``llm`` 1,
  ``config/checkpoint`` 2, ``data`` 3, ``corpus/tokenizer`` 4, ``model/tasks`` (and the old
  ``instruct``) 5, ``training`` 6, ``evaluation/plotting`` 7, ``recipes`` 8, ``cli`` 9);
  function-level imports count, type-only imports (``if TYPE_CHECKING:``) do not;
* **import circles**: groups of modules that import each other (strongly connected
  components of the import graph, networkx);
* **recipes importing recipes** (the demo, which runs the others, excepted);
* the five largest modules (lines), the longest functions, and how many internal imports sit
  inside functions.

``python benchmarks/house_metrics.py [--src DIR] [--json OUT]``
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import networkx as nx

from fmrilm.io import write_json

LAYERS = {
    "errors": 0, "io": 0, "runtime": 0, "_version": 0, "llm": 1, "config": 2, "checkpoint": 2,
    "data": 3, "corpus": 4, "tokenizer": 4, "model": 5, "tasks": 5, "instruct": 5,
    "training": 6, "evaluation": 7, "plotting": 7, "recipes": 8, "cli": 9, "__main__": 9,
}  # fmt: skip


def _modules(src: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(src.rglob("*.py")):
        parts = list(p.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _imports(module: str, path: Path, modules: dict[str, Path]):
    """(target modules, line, inside a function) of every internal, non-type-only import
    statement."""
    tree = ast.parse(path.read_text())
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    skip, in_function = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        targets = set()
        for name in names:
            while name and name not in modules:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != module:
                targets.add(name)
        if targets:
            yield sorted(targets), node.lineno, id(node) in in_function


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def _classify(module: str, target: str, line: int, upward: list, recipe_edges: list) -> None:
    a, b = _layer(module), _layer(target)
    if a is not None and b is not None and b > a:
        upward.append(f"{module}:{line} -> {target}")
    both = module.startswith("fmrilm.recipes.") and target.startswith("fmrilm.recipes.")
    if both and not module.endswith(".demo"):
        recipe_edges.append(f"{module}:{line} -> {target}")


def measure(src: Path) -> dict:
    modules = _modules(src)
    graph, upward, recipe_edges, n_imports, n_in_function = nx.DiGraph(), [], [], 0, 0
    for module, path in modules.items():
        for targets, line, inside in _imports(module, path, modules):
            n_imports += 1
            n_in_function += inside
            for target in targets:
                graph.add_edge(module, target)
                _classify(module, target, line, upward, recipe_edges)
    circles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in modules.items()), reverse=True)
    funcs = sorted(
        ((n, f"{m}.{name}:{line}") for m, p in modules.items() for name, line, n in _functions(p)),
        reverse=True,
    )
    return {
        "src": str(src),
        "modules": len(modules),
        "upward_imports": upward,
        "import_circles": circles,
        "recipes_importing_recipes": recipe_edges,
        "internal_imports": n_imports,
        "internal_imports_in_functions": n_in_function,
        "largest_modules": [{"module": m, "lines": n} for n, m in sizes[:5]],
        "longest_functions": [{"function": f, "lines": n} for n, f in funcs[:5]],
        "functions_over_80_lines": sum(1 for n, _ in funcs if n > 80),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=Path(__file__).parents[1] / "src" / "fmrilm")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    if not (args.src / "__init__.py").is_file():
        print(f"house_metrics: error: {args.src} is not a package folder", file=sys.stderr)
        return 2
    result = measure(args.src)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
