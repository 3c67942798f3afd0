"""Standard distillation: checked teacher answers, and the answer-line follow-up for format slips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from arte_edge.backends.base import Completion, Message, SamplingParams
from arte_edge.methods.standard import ANSWER_FOLLOWUP, GenerationSettings, answer_window
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

    def chat_batch(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        return [self.chat(c, replace(params, seed=params.seed + i)) for i, c in enumerate(conversations)]


def _settings(followup: bool = True) -> GenerationSettings:
    return GenerationSettings("scripted", 0, 0.0, 1.0, 64, answer_followup=followup)


def _item_with_answer(task, answer: str) -> Item:
    return Item(id="arith/x", question="What is 3 + 4?", answer=answer)


def test_missing_answer_line_is_rescued_by_one_followup() -> None:
    task = get_task(str(ARITH))
    item = _item_with_answer(task, "7")
    teacher = ScriptedTeacher("3 plus 4 makes seven.")
    outcome = answer_window(teacher, task, [("id1", item, {})], _settings())[0]
    assert outcome.example is not None, outcome.rejected
    assert len(teacher.seen) == 2 and teacher.seen[1][-2] == {"role": "assistant", "content": "3 plus 4 makes seven."}
    assert outcome.example["messages"][-1]["content"] == "3 plus 4 makes seven.\nAnswer: 7"
    assert outcome.example["meta"]["teacher_calls"] == 2 and outcome.example["meta"]["completion_tokens"] == 23


def test_followup_with_wrong_answer_is_rejected_and_counted() -> None:
    task = get_task(str(ARITH))
    item = _item_with_answer(task, "7")
    teacher = ScriptedTeacher("Seven-ish.", followup="Answer: 8")
    outcome = answer_window(teacher, task, [("id2", item, {})], _settings())[0]
    assert outcome.example is None and outcome.rejected["meta"]["teacher_calls"] == 2
    assert "Answer: 8" in outcome.rejected["completion"]


def test_truncated_or_disabled_gets_no_followup() -> None:
    task = get_task(str(ARITH))
    item = _item_with_answer(task, "7")
    for teacher, settings in ((ScriptedTeacher("and so on and", finish="length"), _settings()),
                              (ScriptedTeacher("3 plus 4 makes seven."), _settings(followup=False))):
        outcome = answer_window(teacher, task, [("id3", item, {})], settings)[0]
        assert outcome.example is None and len(teacher.seen) == 1


def test_answer_present_needs_no_followup() -> None:
    task = get_task(str(ARITH))
    item = _item_with_answer(task, "7")
    teacher = ScriptedTeacher("3 + 4 = 7.\nAnswer: 7")
    outcome = answer_window(teacher, task, [("id4", item, {})], _settings())[0]
    assert outcome.example is not None and len(teacher.seen) == 1


class WindowTeacher(ScriptedTeacher):
    """Answers 'What is a + b?' right when a is even and drafts 'What is i + 1?' for draft seed i; records the
    size of every batched call."""

    def __init__(self, batch_size: int = 4):
        super().__init__("")
        self.batch_size, self.calls = batch_size, []

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        if "exam questions" in messages[0]["content"]:
            return Completion(f"Question:\nWhat is {params.seed} + 1?\nAnswer: {params.seed + 1}", 30, 10)
        import re

        a, b = map(int, re.search(r"(\d+) \+ (\d+)", messages[-1]["content"]).groups())
        return Completion(f"We add.\nAnswer: {a + b + (a % 2)}", 40, 8)

    def chat_batch(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        self.calls.append(len(conversations))
        return super().chat_batch(conversations, params)


def test_generate_answers_the_pool_in_batched_windows(tmp_path) -> None:
    from arte_edge.methods.common import DurableCollector
    from arte_edge.methods.standard import generate

    task = get_task(str(ARITH))
    pool = [Item(id=f"arith/p{i}", question=f"What is {i} + 3?", answer=str(i + 3)) for i in range(10)]
    teacher = WindowTeacher(batch_size=4)
    collector = DurableCollector(tmp_path / "ex.jsonl", tmp_path / "rej.jsonl")
    totals = generate(teacher, task, pool=pool, seeds=[], mode="pool", collector=collector, settings=_settings(),
                      target=4, max_attempts=10, batch_size=8)
    assert teacher.calls == [4, 4]  # two windows of 4; the 4th kept example (item 6) stops the run
    assert totals["n_examples"] == 4 and totals["n_rejected"] == 3  # items 1, 3, 5; item 7 is not recorded
    assert [r["meta"]["item_id"] for r in collector.rejected_rows] == ["arith/p1", "arith/p3", "arith/p5"]


def test_generate_synthesizes_in_batched_windows_with_seeds_by_index(tmp_path) -> None:
    from arte_edge.methods.common import DurableCollector
    from arte_edge.methods.standard import generate

    task = get_task(str(ARITH))
    seeds = [Item(id="arith/s", question="What is 1 + 1?", answer="2")]
    teacher = WindowTeacher(batch_size=3)
    collector = DurableCollector(tmp_path / "ex.jsonl", tmp_path / "rej.jsonl")
    generate(teacher, task, pool=[], seeds=seeds, mode="synthesize", collector=collector, settings=_settings(),
             target=3, max_attempts=9, batch_size=8)
    assert teacher.calls[:2] == [3, 3]  # drafts of window 1, then their answers
    questions = [r["meta"]["question"] for r in collector.accepted_rows]
    assert questions == ["What is 0 + 1?", "What is 2 + 1?", "What is 4 + 1?"]  # odd a is answered wrong
    assert all(r["meta"]["teacher_calls"] == 2 for r in collector.accepted_rows)
