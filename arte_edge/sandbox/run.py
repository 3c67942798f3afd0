"""The public entry point: validate arguments, run tests in runner processes, assemble the result."""

from __future__ import annotations

import time
import types
from collections.abc import Sequence

from arte_edge.errors import ArteError
from arte_edge.sandbox.assert_split import runner_spec
from arte_edge.sandbox.interpreter import interpreter_cmd
from arte_edge.sandbox.process import spawn_runner
from arte_edge.sandbox.report import outcomes_for
from arte_edge.sandbox.results import SandboxResult, TestOutcome
from arte_edge.sandbox.settings import ERROR_CHARS, MAX_TESTS


def _validate(tests: Sequence[str], timeout_s: float, memory_mb: int, max_output_bytes: int) -> None:
    if isinstance(tests, str):
        raise ArteError("run_tests: tests must be a sequence of test strings, not one string")
    if len(tests) > MAX_TESTS:
        raise ArteError(f"run_tests: {len(tests)} tests given; at most {MAX_TESTS} per call")
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s <= 3600):
        raise ArteError(f"run_tests: timeout_s must be in (0, 3600], got {timeout_s!r}")
    if not (isinstance(memory_mb, int) and 64 <= memory_mb <= 1024 * 1024):
        raise ArteError(f"run_tests: memory_mb must be an int >= 64, got {memory_mb!r}")
    if not (isinstance(max_output_bytes, int) and max_output_bytes >= 0):
        raise ArteError(f"run_tests: max_output_bytes must be an int >= 0, got {max_output_bytes!r}")


def run_tests(
    program: str,
    tests: Sequence[str],
    *,
    setup_code: str = "",
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 64_000,
    per_test: bool = True,
) -> SandboxResult:
    """Run ``setup_code`` + ``program`` then each test in an isolated, resource-limited subprocess.

    With ``per_test`` every test gets a fresh process (a failure before the first test, e.g. a
    SyntaxError or a module-level infinite loop, is reported for all tests without re-running it);
    otherwise one process runs all tests in order and a test that kills it fails the rest as NotRun.
    ``timeout_s`` is wall-clock per test (and separately for setup + program). Whatever the sample
    does, the result is a failed outcome with a reason, never an exception; ArteError is raised only
    for bad arguments. Thread-safe: callers may run many samples concurrently.
    """
    _validate(tests, timeout_s, memory_mb, max_output_bytes)
    items = list(enumerate(str(t) for t in tests))
    if not items:
        return SandboxResult(False, 0, 0, "no tests given", (), types.MappingProxyType({}))
    specs = {i: runner_spec(t) for i, t in items}
    groups = [[item] for item in items] if per_test else [items]
    outcomes: dict[int, TestOutcome] = {}
    limits: dict[str, str] = {}
    for group in groups:
        if all(i in outcomes for i, _ in group):
            continue
        start = time.monotonic()
        specs_run = [(i, specs[i]) for i, _ in group]
        rep = spawn_runner(specs_run, program, setup_code, timeout_s, memory_mb, max_output_bytes)
        limits = limits or dict(rep.limits)
        got, stage_error = outcomes_for(rep, group, timeout_s, max_output_bytes)
        if stage_error:  # deterministic before any test ran: same verdict for every test left
            spent = time.monotonic() - start
            for i, test in items:
                outcomes.setdefault(i, TestOutcome(test, False, stage_error[:ERROR_CHARS], spent))
            break
        outcomes.update(got)
    ordered = tuple(outcomes[i] for i, _ in items)
    n_passed = sum(o.passed for o in ordered)
    first_error = next((o.error for o in ordered if not o.passed), "")
    limits.update(_parent_limits(timeout_s, max_output_bytes, per_test))
    return SandboxResult(
        passed=n_passed == len(ordered),
        n_passed=n_passed,
        n_total=len(ordered),
        error=first_error,
        outcomes=ordered,
        limits=types.MappingProxyType(limits),
    )


def _parent_limits(timeout_s: float, max_output_bytes: int, per_test: bool) -> dict[str, str]:
    return {
        "wall_clock": f"{timeout_s:g} s per test (process group / PID namespace killed)",
        "output": f"{max_output_bytes} bytes of stdout+stderr, then killed",
        "isolation": "one process per test" if per_test else "one process for all tests",
        "environment": "scrubbed: PATH, LANG, HOME, TMPDIR, PYTHONHASHSEED=0, PYTHONDONTWRITEBYTECODE",
        "interpreter": " ".join(interpreter_cmd("<runner>")[1:-2]) + " (no site, no user site)",
        "inherited_fds": "none (stdin: config then /dev/null; stdout/stderr: capped pipe)",
    }
