"""Standard distillation: checked teacher answers, and the answer-line follow-up for format slips."""

from __future__ import annotations

from collections.abc import Sequence

from arte_edge.backends.base import Completion, Message, SamplingParams
from arte_edge.methods.standard import ANSWER_FOLLOWUP, GenerationSettings, answer_with_teacher
from arte_edge.tasks import Item, get_task
from tests.test_pipeline import ARITH


class ScriptedTeacher:
    """Answers from a script keyed by the last user message; records every conversation it saw."""

    name = "scripted"

    def __init__(self, first: str, finish: str = "stop", followup: str = "Answer: 7"):
        self.first, self.finish, self.followup = first, finish, followup
        self.seen: list[list[Message]] = []

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        self.seen.append(list(messages))
        if messages[-1]["content"] == ANSWER_FOLLOWUP:
            return Completion(self.followup, 50, 3)
        return Completion(self.first, 40, 20, self.finish)


def _settings(followup: bool = True) -> GenerationSettings:
    return GenerationSettings("scripted", 0, 0.0, 1.0, 64, answer_followup=followup)


def _item_with_answer(task, answer: str) -> Item:
    return Item(id="arith/x", question="What is 3 + 4?", answer=answer)


def test_missing_answer_line_is_rescued_by_one_followup() -> None:
    task = get_task(str(ARITH))
    item = _item_with_answer(task, "7")
    teacher = ScriptedTeacher("3 plus 4 makes seven.")
    outcome = answer_with_teacher(teacher, task, item, _settings(), "id1")
    assert outcome.example is not None, outcome.rejected
    assert len(teacher.seen) == 2 and teacher.seen[1][-2] == {"role": "assistant", "content": "3 plus 4 makes seven."}
    assert outcome.example["messages"][-1]["content"] == "3 plus 4 makes seven.\nAnswer: 7"
    assert outcome.example["meta"]["teacher_calls"] == 2 and outcome.example["meta"]["completion_tokens"] == 23


def test_followup_with_wrong_answer_is_rejected_and_counted() -> None:
    task = get_task(str(ARITH))
    item = _item_with_answer(task, "7")
    outcome = answer_with_teacher(ScriptedTeacher("Seven-ish.", followup="Answer: 8"), task, item, _settings(), "id2")
    assert outcome.example is None and outcome.rejected["meta"]["teacher_calls"] == 2
    assert "Answer: 8" in outcome.rejected["completion"]


def test_truncated_or_disabled_gets_no_followup() -> None:
    task = get_task(str(ARITH))
    item = _item_with_answer(task, "7")
    for teacher, settings in ((ScriptedTeacher("and so on and", finish="length"), _settings()),
                              (ScriptedTeacher("3 plus 4 makes seven."), _settings(followup=False))):
        outcome = answer_with_teacher(teacher, task, item, settings, "id3")
        assert outcome.example is None and len(teacher.seen) == 1


def test_answer_present_needs_no_followup() -> None:
    task = get_task(str(ARITH))
    item = _item_with_answer(task, "7")
    teacher = ScriptedTeacher("3 + 4 = 7.\nAnswer: 7")
    outcome = answer_with_teacher(teacher, task, item, _settings(), "id4")
    assert outcome.example is not None and len(teacher.seen) == 1
