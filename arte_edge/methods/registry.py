"""The one list of methods: name → the package object implementing :class:`arte_edge.methods.base.Method`.

Imported lazily, so listing names or validating a recipe does not load torch or llama.cpp.
A test (or a plug-in) adds its own with :func:`register`.
"""

from __future__ import annotations

import importlib

from arte_edge.errors import ArteError
from arte_edge.methods.base import Method

BUILTIN: dict[str, str] = {
    "standard": "arte_edge.methods.standard:METHOD",
    "arte": "arte_edge.methods.arte:METHOD",
    "persd": "arte_edge.methods.persd:METHOD",
    "elad": "arte_edge.methods.elad:METHOD",
}
_registered: dict[str, Method] = {}


def method_names() -> list[str]:
    """Every known method name (built-in first, then registered ones)."""
    return list(BUILTIN) + [n for n in _registered if n not in BUILTIN]


def get_method(name: str) -> Method:
    """The method called ``name``; ArteError naming the known ones otherwise."""
    if name in _registered:
        return _registered[name]
    if name not in BUILTIN:
        raise ArteError(f"method: unknown method {name!r}; known: {', '.join(method_names())}")
    module, attr = BUILTIN[name].split(":")
    method = getattr(importlib.import_module(module), attr)
    _registered[name] = method
    return method


def register(method: Method) -> None:
    """Make ``method`` available by its name (a test's toy method, a plug-in)."""
    if not method.name:
        raise ValueError("a method needs a name")
    _registered[method.name] = method


def unregister(name: str) -> None:
    """Forget a registered (non built-in) method."""
    if name not in BUILTIN:
        _registered.pop(name, None)
