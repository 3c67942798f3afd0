"""ELAD's prompts and explanation format: numbered steps for the student, CLEAR for the teacher, and cutting an
explanation back into its steps."""

from __future__ import annotations

import re
from collections.abc import Sequence

from arte_edge.backends.base import Message
from arte_edge.evaluation.scoring import answer_messages
from arte_edge.methods.common import rationale_of, teacher_messages
from arte_edge.tasks.base import Item, Task

STEP_FORMAT = ("Write the reasoning as numbered steps, one per line: 'Step 1: ...', 'Step 2: ...'. "
               "Then end with the final line 'Answer: X'.")
CLEAR_SYSTEM = ("You are a careful teacher. You check a student's step-by-step solution, step by step, and "
                "correct it from its first wrong step.")


def format_steps(steps: Sequence[str]) -> str:
    """Steps as numbered lines ``Step k: ...`` (k from 1)."""
    return "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))


def format_solution(steps: Sequence[str], answer: str) -> str:
    """A full explanation: numbered steps, then the ``Answer:`` line."""
    body = format_steps(steps)
    return f"{body}\nAnswer: {answer}" if body else f"Answer: {answer}"


def explain_messages(task: Task, item: Item) -> list[Message]:
    """The student's explanation prompt: the task's own prompt plus the numbered-step format."""
    messages = answer_messages(task, item)
    messages[0] = {"role": "system", "content": f"{task.system_prompt} {STEP_FORMAT}"}
    return messages


def prefix_messages(task: Task, item: Item, steps: Sequence[str]) -> list[Message]:
    """Ask the student for its final answer right after the first k steps of its explanation (k may be 0)."""
    shown = format_steps(steps) or "(no steps yet)"
    user = (f"{task.user_prompt(item)}\n\nThe first steps of a solution:\n{shown}\n\n"
            "Based on these steps, give the final answer now. Reply with only the line 'Answer: X'.")
    return [{"role": "system", "content": task.system_prompt}, {"role": "user", "content": user}]


def direct_answer_messages(task: Task, item: Item) -> list[Message]:
    """Ask for the final answer only, without reasoning (the answer-entropy baseline's samples)."""
    messages = answer_messages(task, item)
    messages[0] = {"role": "system", "content": f"{task.system_prompt} Reply with only the final line "
                   "'Answer: X', without any reasoning."}
    return messages


def teacher_explain_messages(task: Task, item: Item) -> list[Message]:
    """The teacher writes its own numbered explanation (the no-revision baseline)."""
    messages = teacher_messages(task, item)
    messages[0] = {"role": "system", "content": f"{messages[0]['content']} {STEP_FORMAT}"}
    return messages


def clear_messages(task: Task, item: Item, steps: Sequence[str], student_answer: str | None) -> list[Message]:
    """CLEAR: the teacher checks each numbered student step and rewrites from the first flawed one."""
    user = (f"Question:\n{task.user_prompt(item)}\n\nStudent's solution:\n{format_steps(steps) or '(no steps)'}\n"
            f"Student's final answer: {student_answer or '(none)'}\n\n"
            f"The final answer must follow this rule: {task.system_prompt}\n\n"
            "Check each step in order. Then reply in exactly this format:\n"
            "Check 1: correct\nCheck 2: wrong, <short reason>\n"
            "First wrong step: <number of the first wrong step, or none>\n"
            "Revised solution:\nStep <first wrong step>: <corrected step>\nStep <next number>: ...\n"
            "Answer: <final answer>\n\n"
            "Do not repeat the correct steps before the first wrong one. If every step is correct, write "
            "'First wrong step: none' and then only the final 'Answer:' line.")
    return [{"role": "system", "content": CLEAR_SYSTEM}, {"role": "user", "content": user}]


# ================================================================================== steps

_STEP = re.compile(r"(?im)^[ \t]*[*#>\-]*[ \t]*step[ \t]*(\d+)[ \t]*\**[ \t]*[:.)\-]\**[ \t]*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


def numbered_steps(text: str) -> list[tuple[int, str]]:
    """``(number, text)`` of each ``Step k:`` block in ``text`` (a block runs to the next step)."""
    marks = list(_STEP.finditer(text))
    if not marks:
        return []
    out = []
    ends = [m.start() for m in marks[1:]] + [len(text)]
    for mark, end in zip(marks, ends, strict=True):
        body = " ".join(text[mark.end(): end].split())
        if body:
            out.append((int(mark.group(1)), body))
    return out


def split_steps(text: str, rule: str = "numbered") -> list[str]:
    """The reasoning steps of an explanation (its ``Answer:`` line excluded), cut by ``rule``."""
    body = rationale_of(text)
    if rule == "numbered":
        found = numbered_steps(body)
        if found:
            return [s for _, s in found]
        rule = "lines"
    if rule == "lines":
        return [" ".join(line.split()) for line in body.splitlines() if line.strip()]
    return [s.strip() for s in _SENTENCE.split(" ".join(body.split())) if s.strip()]
