"""Test specs: split a test that is exactly ``assert LHS == RHS[, MSG]`` so both sides are evaluated."""

from __future__ import annotations

import ast
from typing import Any


def split_equality_assert(test: str) -> tuple[str, str, str | None] | None:
    """For a test that is exactly ``assert LHS == RHS[, MSG]``, return its parts as source."""
    try:
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
