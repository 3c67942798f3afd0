"""Judging one completion: run its code on the item's unit tests in the sandbox (answer tasks: check the answer),
and bound the error shown to the teacher and the student. Also where decoding stops, on every backend alike."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arte_edge.errors import ArteError
from arte_edge.tasks.base import Item, Task

if TYPE_CHECKING:
    from arte_edge.sandbox import SandboxResult

NO_CODE = "no code found (expected a ```python block)"
# A complete fenced code block: decoding stops there (small models add long explanations after the code).
CODE_DONE = r"```[ \t]*(?:python3?|py)?[ \t]*\n[\s\S]*?\n[ \t]*```"


@dataclass(frozen=True)
class Judgement:
    """Whether a completion passes, what was tested (code, or the predicted answer), and the bounded error."""

    passed: bool
    answer: str | None
    error: str


def cut(text: str, max_chars: int) -> str:
    """``text`` in at most ``max_chars``, cut in the middle so a long assert keeps its ``(got ...)`` tail."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    tail = max_chars // 3
    head = max_chars - tail - 5
    return f"{text[:head].rstrip()} ... {text[-tail:].lstrip()}"


def format_error(result: SandboxResult, max_chars: int = 300, n_tests: int = 1) -> str:
    """The error shown to the teacher/student: the first ``n_tests`` distinct failures, each ≤ ``max_chars``.

    An equality assert reads ``AssertionError: assert f(2) == 4 (got 5)`` (input, output, expected); any other
    failure reads ``<Type>: <message>`` followed by the test it happened in.
    """
    lines: list[str] = []
    seen: set[str] = set()
    for outcome in result.outcomes:
        if outcome.passed or outcome.error in seen:
            continue
        seen.add(outcome.error)
        error = outcome.error or "failed"
        if not error.startswith("AssertionError: assert"):
            first_line = outcome.test.strip().splitlines()[0] if outcome.test.strip() else ""
            if first_line and first_line not in error and not error.startswith(("SyntaxError", "IndentationError")):
                error = f"{error} (in test: {first_line})"
        lines.append(cut(error, max_chars))
        if len(lines) >= n_tests:
            break
    return "\n".join(lines) or cut(result.error or "tests failed", max_chars)


def run_item_tests(task: Task, item: Item, code: str, tests: Sequence[str], timeout_s: float) -> SandboxResult:
    """Run ``tests`` on ``code`` the way the task's checker does (HumanEval prompt first, MBPP setup after)."""
    from arte_edge.sandbox import run_tests

    program = task.program(item, code) if hasattr(task, "program") else code
    if item.setup_code and item.setup_code.strip():
        program = f"{program}\n\n{item.setup_code.strip()}"
    return run_tests(program, list(tests), timeout_s=timeout_s)


def judge(task: Task, item: Item, text: str, *, tests: Sequence[str] | None = None, timeout_s: float = 5.0,
          error_max_chars: int = 300, error_tests: int = 1) -> Judgement:
    """Test (code) or check (answer tasks) one completion; never raises for anything the completion does.

    ``tests`` defaults to all of the item's tests. Answer tasks never reveal the gold answer in the error.
    """
    if task.kind != "code":
        check = task.check(item, text)
        if check.correct:
            return Judgement(True, check.predicted, "")
        error = (f"The final answer {check.predicted} is incorrect." if check.predicted is not None
                 else f"No final answer found ({check.reason}).")
        return Judgement(False, check.predicted, cut(error, error_max_chars))
    from arte_edge.tasks.extract import extract_code

    code = extract_code(text)
    if code is None:
        return Judgement(False, None, NO_CODE)
    chosen = list(item.tests if tests is None else tests)
    if not chosen:
        raise ArteError(f"{item.id}: code item has no tests to check against; give it a 'tests' list")
    result = run_item_tests(task, item, code, chosen, timeout_s)
    return Judgement(result.passed, code, "" if result.passed else format_error(result, error_max_chars, error_tests))


def shown_attempt(judgement: Judgement, text: str) -> str:
    """What the refine prompts show as the student's attempt: the tested code, else the raw completion."""
    return judgement.answer if judgement.answer is not None and judgement.answer.strip() else text.strip()


def stop_regex_for(task: Task, nl_feedback: bool = False) -> str | None:
    """Where decoding may stop: after the first complete code block (code), after the answer line (others).

    None for nl-mode refinements, whose feedback may quote code before the fixed block.
    """
    if nl_feedback:
        return None
    if task.kind == "code":
        return CODE_DONE
    from arte_edge.evaluation.scoring import ANSWER_DONE

    return ANSWER_DONE


def truncate_at_stop(text: str, stop_regex: str | None) -> str:
    """``text`` up to the end of the first ``stop_regex`` match: every backend is judged on the same text, whether
    it stopped decoding there (llama.cpp, ONNX) or generated on (transformers)."""
    match = re.search(stop_regex, text) if stop_regex else None
    return text[: match.end()] if match else text
