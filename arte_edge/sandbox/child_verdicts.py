"""Child side, verdicts: run one test, compare outputs (float tolerance), format one error line.

Shipped by source to the runner (see :mod:`arte_edge.sandbox.child_runner`): builtins and cheap
stdlib modules only, imported inside each function; calls between child functions use bare names.
:func:`child_outputs_match` and :func:`child_mismatch_note` also run in the parent (tests).
"""

from __future__ import annotations

from typing import Any


def child_short_repr(value: Any) -> str:
    """A bounded repr (at most 200 chars) of ``value``, never raising."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 120, 120, 12, 12, 8, 12
    r.maxlevel = 3
    try:
        text = r.repr(value)
    except Exception as exc:
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


def child_numbers_close(a: Any, b: Any, depth: int = 0) -> bool:
    """PERsD-style float tolerance, element-wise through equal-shaped lists/tuples/dicts."""
    import math

    if depth > 32:
        return False
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        if isinstance(a, float) or isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(
            child_exactly_equal(x, y) or child_numbers_close(x, y, depth + 1) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(
            child_exactly_equal(a[k], b[k]) or child_numbers_close(a[k], b[k], depth + 1) for k in a
        )
    return False


def child_exactly_equal(a: Any, b: Any) -> bool:
    """Python ``a == b`` as a bool; False when the comparison raises."""
    try:
        return bool(a == b)
    except Exception:
        return False


def child_outputs_match(got: Any, expected: Any) -> bool:
    """Pass rule for ``assert EXPR == EXPECTED``: Python ``==``, else float tolerance."""
    return child_exactly_equal(got, expected) or child_numbers_close(got, expected)


def child_mismatch_note(got: Any, expected: Any) -> str:
    """Explain a near miss the pass rule rejects: equal after ``ast.literal_eval``, or as text."""
    for text, other in ((got, expected), (expected, got)):
        if isinstance(text, str) and not isinstance(other, str):
            try:
                import ast

                if child_outputs_match(ast.literal_eval(text.strip()), other):
                    return "; equal after ast.literal_eval of the string, but types differ"
            except Exception:
                pass
    try:
        if str(got) == str(expected):
            return f"; same text, but {type(got).__name__} vs {type(expected).__name__}"
    except Exception:
        pass
    return ""


def child_format_exc(exc: BaseException, source: str, filename: str, memory_mb: int) -> str:
    """One line: ``Type: message``; for a bare AssertionError, the failing source line."""
    name = type(exc).__name__
    if isinstance(exc, SyntaxError):
        where = f" ({filename.strip('<>')} line {exc.lineno})" if exc.lineno else ""
        return f"{name}: {exc.msg}{where}"
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable message>"
    if isinstance(exc, MemoryError) and not message:
        message = f"memory limit exceeded (RLIMIT_AS {memory_mb} MiB)"
    if isinstance(exc, AssertionError) and not message:
        message = child_failing_line(exc, source, filename)
    if isinstance(exc, SystemExit):
        message = f"sample called exit({message})"
    return f"{name}: {message}" if message else name


def child_failing_line(exc: BaseException, source: str, filename: str) -> str:
    """The stripped line of ``source`` at the innermost traceback frame in ``filename``, or ""."""
    tb, lineno = exc.__traceback__, 0
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    lines = source.splitlines()
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


def child_run_test(spec: tuple[Any, ...], ns: dict[str, Any], memory_mb: int) -> str:
    """Run one test; return "" on pass, else the error line."""
    kind, src = spec[0], spec[1]
    if kind != "eq":
        exec(compile(src, "<test>", "exec", dont_inherit=True), ns)
        return ""
    _, _, lhs, rhs, msg = spec
    got = eval(compile(lhs, "<test>", "eval", dont_inherit=True), ns)
    expected = eval(compile(rhs, "<test>", "eval", dont_inherit=True), ns)
    if child_outputs_match(got, expected):
        return ""
    shown = " ".join(src.split()) if msg is None else f"assert {lhs} == {rhs}"
    extra = "" if msg is None else f": {eval(compile(msg, '<test>', 'eval', dont_inherit=True), ns)}"
    got_text = child_short_repr(got)
    exp_text = child_short_repr(expected)
    detail = f"got {got_text}" if exp_text == rhs.strip() else f"got {got_text}, expected {exp_text}"
    return f"AssertionError{extra}: {shown} ({detail}{child_mismatch_note(got, expected)})"
