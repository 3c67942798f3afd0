"""Result types returned by :func:`arte_edge.sandbox.run_tests`."""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TestOutcome:
    """One test's verdict. ``error`` is empty when it passed, else one bounded line."""

    __test__ = False  # not a pytest class

    test: str
    passed: bool
    error: str
    duration_s: float


@dataclass(frozen=True)
class SandboxResult:
    """All tests' verdicts for one program; ``error`` is the first failure (<= 500 chars)."""

    passed: bool
    n_passed: int
    n_total: int
    error: str
    outcomes: tuple[TestOutcome, ...]
    limits: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
