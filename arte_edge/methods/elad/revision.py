"""CLEAR: parse the teacher's step check of a student explanation into a revision (kept prefix + rewritten steps)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from arte_edge.methods.common import rationale_of
from arte_edge.methods.elad.prompts import format_solution, numbered_steps
from arte_edge.tasks.extract import final_answer_text

_FIRST_WRONG = re.compile(r"(?im)^[\W_]*first\s+(?:wrong|flawed|incorrect|erroneous)\s+step\W*?[:：=]?\s*"
                          r"(?:step\s*)?(\d+|none|n/?a|no\b)")
_REVISED = re.compile(r"(?im)^[\W_]*revised\s+solution\W*[:：]?\s*$")


@dataclass(frozen=True)
class Revision:
    """A CLEAR revision: the kept student prefix, the teacher's rewritten steps, and the final answer."""

    first_wrong: int | None  # 1-based index of the first flawed student step; None when all were correct
    steps: tuple[str, ...]
    answer: str
    n_kept: int

    @property
    def text(self) -> str:
        """The revised explanation in the student's format."""
        return format_solution(self.steps, self.answer)


def parse_clear(text: str, student_steps: Sequence[str]) -> tuple[Revision | None, str]:
    """Parse a CLEAR reply into a :class:`Revision`, or ``(None, reason)`` when it does not follow the format."""
    mark = _FIRST_WRONG.search(text)
    if mark is None:
        return None, "parse failure: no 'First wrong step' line"
    rest = text[mark.end():]
    answer = final_answer_text(rest)
    if answer is None:
        return None, "parse failure: no 'Answer:' line after 'First wrong step'"
    token = mark.group(1).lower()
    if not token.isdigit():
        steps = tuple(student_steps)
        return Revision(None, steps, answer, len(steps)), ""
    k = int(token)
    if not 1 <= k <= len(student_steps) + 1:
        return None, f"parse failure: first wrong step {k} is outside 1..{len(student_steps) + 1}"
    revised = _REVISED.search(rest)
    section = rationale_of(rest[revised.end():] if revised else rest)
    found = numbered_steps(section)
    rewritten = [s for n, s in found if n >= k] or [s for _, s in found]
    if not found:
        rewritten = [" ".join(line.split()) for line in section.splitlines() if line.strip()]
    if not rewritten and k <= len(student_steps):
        return None, f"parse failure: step {k} is wrong but no rewritten steps follow"
    kept = tuple(student_steps[: k - 1])
    return Revision(k, (*kept, *rewritten), answer, len(kept)), ""
