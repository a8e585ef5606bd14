"""Sphinx extension: the ``#:`` comments of constants that a package re-exports from its submodules.

autodoc reads a module-level constant's ``#:`` comment from the source of the module it is told to
document. ``flowbook.data`` re-exports its constants from ``flowbook.data.mnist`` and
``flowbook.data.cifar10``, so ``autodata:: flowbook.data.BINARIZATION_SEED`` finds no comment in
``flowbook/data/__init__.py`` and would show the docstring of ``int``. This extension gives such an
entry the comment written where the constant is defined, so that the text lives in one place while the
reference target stays the public name ``flowbook.data.NAME``.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer


def defining_comment(package: str, name: str) -> list[str] | None:
    """The ``#:`` comment of ``name`` in the first submodule of ``package`` that defines it with one."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        docs = ModuleAnalyzer.for_module(f"{package}.{info.name}").find_attr_docs()
        if ("", name) in docs:
            return list(docs[("", name)])
    return None


def _fill(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what != "data":
        return
    package, _, attr = name.rpartition(".")
    if ("", attr) in ModuleAnalyzer.for_module(package).find_attr_docs():
        return  # documented where autodoc looks already
    comment = defining_comment(package, attr)
    if comment is not None:
        lines[:] = comment


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _fill)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
