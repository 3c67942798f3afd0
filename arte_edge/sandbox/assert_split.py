"""Test specs: split a test that is exactly ``assert LHS == RHS[, MSG]`` so both sides are evaluated."""

from __future__ import annotations

import ast
import threading
from typing import Any

AST_LOCK = threading.Lock()
"""Held around every AST build of the parent process (``ast.parse``, ``compile``): tests are judged from several
threads, and CPython 3.11's AST constructor keeps its recursion depth in interpreter-wide state, so two threads
building ASTs at once can fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905;
it stopped a HumanEval evaluation here)."""


def split_equality_assert(test: str) -> tuple[str, str, str | None] | None:
    """For a test that is exactly ``assert LHS == RHS[, MSG]``, return its parts as source."""
    try:
        with AST_LOCK:
            tree = ast.parse(test)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    node = tree.body[0]
    comp = node.test
    if not (isinstance(comp, ast.Compare) and len(comp.ops) == 1 and isinstance(comp.ops[0], ast.Eq)):
        return None
    msg = ast.unparse(node.msg) if node.msg is not None else None
    return ast.unparse(comp.left), ast.unparse(comp.comparators[0]), msg


def runner_spec(test: str) -> tuple[Any, ...]:
    """The runner's spec: ``("eq", test, lhs, rhs, msg)`` for an equality assert, else ``("exec", test)``."""
    parts = split_equality_assert(test)
    if parts is None:
        return ("exec", test)
    return ("eq", test, *parts)
