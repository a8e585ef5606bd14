"""The package's imports point one way: no module of flowbook imports, at any depth and at any place in
the file (top level, inside a function, under TYPE_CHECKING), a module that imports it back.

One place is not an import of the module: its ``if __name__ == "__main__":`` block, which runs only when
the file is the program (``python -m flowbook.cifar``). There the module is ``__main__``, not
``flowbook.cifar``, so what the block imports cannot import it back; a thin entry to a command-line module
(:mod:`flowbook.cifarcli`) lives there."""
from __future__ import annotations

import ast
from pathlib import Path

import flowbook

PACKAGE = Path(flowbook.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_main_block(node: ast.stmt) -> bool:
    """Whether ``node`` is the top-level ``if __name__ == "__main__":`` block (see the module docstring)."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def import_graph() -> dict[str, set[str]]:
    """Each module of flowbook → the modules of flowbook it imports anywhere in its source."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tree.body = [n for n in tree.body if not _is_main_block(n)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from package import module` imports the module; `from module import name` the module
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names}
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each holds at least one cycle)."""
    order, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_and_the_graph_sees_lazy_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    # runner imports the trainer inside its functions; the graph must see such imports
    assert "flowbook.trainer" in graph["flowbook.runner"]
    assert "flowbook.flows" in graph["flowbook.models"]
    main_block = ast.parse('if __name__ == "__main__":\n    import os\n').body[0]
    assert _is_main_block(main_block) and not _is_main_block(ast.parse("if x:\n    import os\n").body[0])


def test_flowbook_has_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], f"modules that import each other (directly or around a loop): {found}"
