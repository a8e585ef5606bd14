"""No function of the training path is over :data:`MAX_LINES` lines: a reader follows a run's training from
the command to the loop through functions that fit on one screen (issue 28's target)."""
from __future__ import annotations

import ast
from pathlib import Path

import flowbook

PACKAGE = Path(flowbook.__file__).parent
MAX_LINES = 60
#: the training path: the trainer and its loop, the two experiments on it, the 2-D fits' training, the
#: runner, the checkpoints and the model
TRAINING_PATH = ("train.py", "trainer.py", "loop.py", "runner.py", "experiments2d/training.py", "cifar.py",
                 "checkpoints.py", "models.py")


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, lines from ``def`` to its last line) of every function in ``source`` over ``limit``."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and lines > limit:
                    found.append((name, lines))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _function(name: str, lines: int, indent: str = "") -> str:
    """The source of a function of ``lines`` lines (its ``def`` and assignments)."""
    return f"{indent}def {name}():\n" + "".join(f"{indent}    x = {i}\n" for i in range(lines - 1))


def test_the_counter_finds_a_long_method_and_a_nested_function():
    source = ("class A:\n" + _function("short", 2, "    ") + _function("long", 61, "    ")
              + "def outer():\n" + _function("inner", 61, "    ") + "    return inner\n" + _function("fits", 60))
    assert long_functions(source) == [("A.long", 61), ("outer", 63), ("outer.inner", 61)]
    assert long_functions(source, limit=63) == []


def test_no_function_of_the_training_path_is_over_60_lines():
    found = [f"flowbook/{file}: {name} has {lines} lines"
             for file in TRAINING_PATH for name, lines in long_functions((PACKAGE / file).read_text(encoding="utf-8"))]
    assert not found, (f"functions over {MAX_LINES} lines in the training path (split them into steps with names): "
                       + "; ".join(found))
