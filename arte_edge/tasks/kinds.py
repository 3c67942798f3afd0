"""Task classes per answer kind: multiple choice (a letter), numeric (a number), code (tests pass)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from arte_edge.errors import ArteError
from arte_edge.tasks.base import Check, Item, Task
from arte_edge.tasks.extract import (
    extract_choice,
    extract_code,
    final_answer_text,
    format_number,
    match_choice_text,
    math_answers_match,
    numbers_match,
    parse_number,
)

LETTERS = "ABCDEFGHIJ"
NO_ANSWER = "no 'Answer:' line"
_ANY_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")

MC_SYSTEM_PROMPT = (
    "Answer the multiple-choice question. Think it through step by step in a few sentences, then end "
    "with a final line of the form 'Answer: X', where X is the letter of the correct choice."
)
NUMERIC_SYSTEM_PROMPT = (
    "Solve the problem step by step, showing the calculation. End with a final line of the form "
    "'Answer: N', where N is only the final number (no units, no words)."
)
MATH_SYSTEM_PROMPT = (
    "Solve the problem step by step. End with a final line of the form 'Answer: X', where X is the "
    "final answer in simplest form (LaTeX allowed, e.g. \\frac{3}{4} or 2\\sqrt{5})."
)
CODE_SYSTEM_PROMPT = (
    "Write a correct, self-contained Python solution. You may explain your approach briefly first, "
    "then give the complete code in one ```python fenced block. Do not include tests or example usage."
)


def format_choices(stem: str, choices: Sequence[str]) -> str:
    """A multiple-choice question: the stem, then one ``A. text`` line per choice."""
    if len(choices) > len(LETTERS):
        raise ArteError(f"question has {len(choices)} choices; at most {len(LETTERS)} are supported")
    lines = [stem.strip()] + [f"{LETTERS[i]}. {str(text).strip()}" for i, text in enumerate(choices)]
    return "\n".join(lines)


def _choice_lines(question: str) -> list[tuple[str, str]]:
    """``(letter, text)`` of each line of ``question`` that starts with a choice label (``A.``, ``A)``, ``(A)``).

    A stem line that looks like one (a Roman numeral ``I. ...``, an initial ``J. Smith ...``) counts too, so a
    drafted question with such a line is refused by :meth:`MultipleChoiceTask.draft_problem` rather than misread.
    """
    return re.findall(r"^[ \t]*\(?([A-J])[.)][ \t]+(.*)$", question, re.MULTILINE)


def _choices_in_question(question: str) -> list[str]:
    return [text for _, text in _choice_lines(question)]


class MultipleChoiceTask(Task):
    """The completion ends with ``Answer: <letter>``; the gold answer is a letter (A, B, ...)."""

    kind = "multiple_choice"
    system_prompt = MC_SYSTEM_PROMPT
    letters = "ABCDE"

    def __init__(self, name: str, description: str, loader: Callable[[], list[Item]], *, source: str,
                 system_prompt: str | None = None, letters: str = "ABCDE") -> None:
        super().__init__(name, description, loader, source=source, system_prompt=system_prompt)
        self.letters = letters

    def extract_answer(self, completion: str) -> str | None:
        """The choice letter of the final answer, or None."""
        text = final_answer_text(completion)
        return extract_choice(text, self.letters) if text is not None else None

    def item_choices(self, item: Item) -> list[str]:
        """The choice texts of ``item`` (from meta["choices"], else parsed from its question lines)."""
        choices = item.meta.get("choices")
        return list(choices) if choices else _choices_in_question(item.question)

    def draft_problem(self, item: Item) -> str | None:
        """A drafted question must list at least two lettered choices, lettered A, B, C, ... once each in order,
        and its key must be one of them."""
        letters = "".join(letter for letter, _ in _choice_lines(item.question))
        choices = _choices_in_question(item.question)
        if len(choices) < 2:
            return "drafted question lists no choices ('A. ...' lines)"
        if letters != LETTERS[: len(letters)]:
            return f"drafted choices are lettered {', '.join(letters)}, not A, B, C, ... once each"
        if item.answer not in LETTERS[: len(choices)]:
            return f"drafted key {item.answer!r} is not one of the {len(choices)} listed choices"
        return None

    def check(self, item: Item, completion: str) -> Check:
        """Correct when the final answer names the gold letter (or spells out exactly the gold choice)."""
        text = final_answer_text(completion)
        if text is None:
            return Check(False, None, NO_ANSWER)
        choices = self.item_choices(item)
        valid = LETTERS[: len(choices)] if choices else self.letters
        letter = extract_choice(text, valid) or match_choice_text(text, choices, LETTERS)
        if letter is None:
            return Check(False, None, f"no choice letter in answer {text[:40]!r}")
        if letter == item.answer:
            return Check(True, letter, "")
        return Check(False, letter, f"expected {item.answer}, got {letter}")

    def check_flexible(self, item: Item, completion: str) -> Check:
        """Strict check; failing an answer line, the one choice letter that starts lines ("C. mesosphere").

        A completion that recites several options ("A. ...\nB. ...") names no answer and stays unanswered.
        """
        strict = self.check(item, completion)
        if strict.predicted is not None:
            return strict
        valid = re.escape(LETTERS[: len(self.item_choices(item))] or self.letters)
        found = set(re.findall(rf"(?m)^\s*[\(\[]?([{valid}])(?:[\)\]]|[.:])", completion))
        if len(found) != 1:
            return strict
        letter = found.pop()
        return Check(letter == item.answer, letter, "" if letter == item.answer else
                     f"expected {item.answer}, got {letter} (flexible)")


class NumericTask(Task):
    """The completion ends with ``Answer: <number>``; compared as numbers with a small tolerance."""

    kind = "numeric"
    system_prompt = NUMERIC_SYSTEM_PROMPT

    def __init__(self, name: str, description: str, loader: Callable[[], list[Item]], *, source: str,
                 system_prompt: str | None = None, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> None:
        super().__init__(name, description, loader, source=source, system_prompt=system_prompt)
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    def extract_answer(self, completion: str) -> str | None:
        """The final number as a canonical string ("72", "0.5"), or None."""
        text = final_answer_text(completion)
        value = parse_number(text) if text is not None else None
        return format_number(value) if value is not None else None

    def check(self, item: Item, completion: str) -> Check:
        """Correct when the final number equals the gold number within the task's tolerance."""
        text = final_answer_text(completion)
        if text is None:
            return Check(False, None, NO_ANSWER)
        value = parse_number(text)
        if value is None:
            return Check(False, None, f"answer {text[:40]!r} is not a number")
        gold = parse_number(item.answer)
        if gold is None:
            raise ArteError(f"{item.id}: gold answer {item.answer!r} is not a number")
        predicted = format_number(value)
        if numbers_match(value, gold, rel_tol=self.rel_tol, abs_tol=self.abs_tol):
            return Check(True, predicted, "")
        return Check(False, predicted, f"expected {item.answer}, got {predicted}")

    def check_flexible(self, item: Item, completion: str) -> Check:
        """Strict check; failing an answer line, the last number in the completion (lm-eval's flexible-extract)."""
        strict = self.check(item, completion)
        if strict.predicted is not None:
            return strict
        numbers = _ANY_NUMBER.findall(completion)
        value = parse_number(numbers[-1]) if numbers else None
        gold = parse_number(item.answer)
        if value is None or gold is None:
            return strict
        predicted = format_number(value)
        ok = numbers_match(value, gold, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        return Check(ok, predicted, "" if ok else f"expected {item.answer}, got {predicted} (flexible)")


class MathTask(NumericTask):
    """Numeric kind whose answers may be LaTeX expressions (MATH): numbers compared as numbers, else text."""

    system_prompt = MATH_SYSTEM_PROMPT

    def extract_answer(self, completion: str) -> str | None:
        """The final answer as written (markdown, ``$`` and \\boxed removed), or None."""
        return final_answer_text(completion)

    def check(self, item: Item, completion: str) -> Check:
        """Correct when the final answer equals the gold one after normalisation (or numerically)."""
        text = final_answer_text(completion)
        if text is None:
            return Check(False, None, NO_ANSWER)
        if math_answers_match(text, item.answer):
            return Check(True, text, "")
        return Check(False, text, f"expected {item.answer}, got {text}"[:120])


def run_code_tests(code: str, tests: Sequence[str], setup_code: str | None = None,
                   timeout_s: float = 5.0) -> Check:
    """Run ``tests`` against ``code`` + ``setup_code`` in :mod:`arte_edge.sandbox` and return a Check."""
    from arte_edge.sandbox import run_tests  # lazy: keeps `import arte_edge.tasks` light

    # Setup code goes after the solution: MBPP's setup builds objects from classes the solution defines.
    program = f"{code}\n\n{setup_code.strip()}" if setup_code and setup_code.strip() else code
    result = run_tests(program, list(tests), timeout_s=timeout_s)
    if result.passed:
        return Check(True, code, "")
    return Check(False, code, f"{result.n_passed}/{result.n_total} tests passed: {result.error}"[:200])


class CodeTask(Task):
    """The completion holds a ```python block; correct when the item's tests pass in the sandbox."""

    kind = "code"
    system_prompt = CODE_SYSTEM_PROMPT

    def __init__(self, name: str, description: str, loader: Callable[[], list[Item]], *, source: str,
                 system_prompt: str | None = None, timeout_s: float = 5.0) -> None:
        super().__init__(name, description, loader, source=source, system_prompt=system_prompt)
        self.timeout_s = timeout_s

    def target(self, rationale: str, answer: str) -> str:
        """The assistant message to train on: the rationale (if any), then the code in a fenced block."""
        code = answer.strip("\n").rstrip()
        block = f"```python\n{code}\n```"
        rationale = (rationale or "").strip()
        return f"{rationale}\n{block}" if rationale else block

    def extract_answer(self, completion: str) -> str | None:
        """The code of the last ```python block (or the whole completion without a fence), or None."""
        return extract_code(completion)

    def program(self, item: Item, code: str) -> str:
        """The program to test: for completion-style items (HumanEval) the prompt goes first.

        A completion that only writes the function body is appended to the prompt; one that writes the
        whole function still gets the prompt first, so helpers and imports defined there exist.
        """
        if not item.prompt_code:
            return code
        defines = item.entry_point and re.search(rf"^\s*def\s+{re.escape(item.entry_point)}\s*\(", code, re.M)
        if defines or not code.startswith((" ", "\t")):
            return f"{item.prompt_code.rstrip()}\n\n\n{code}"
        return f"{item.prompt_code.rstrip()}\n{code}"

    def check(self, item: Item, completion: str) -> Check:
        """Run the item's tests against the extracted code."""
        code = extract_code(completion)
        if code is None:
            return Check(False, None, "no code")
        if not item.tests:
            raise ArteError(f"{item.id}: code item has no tests to check against")
        check = run_code_tests(self.program(item, code), item.tests, item.setup_code, self.timeout_s)
        return Check(check.correct, code, check.reason)
