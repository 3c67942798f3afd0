"""Pieces every data-generation method shares: prompts, cleaning a teacher answer into a target, and a
durable, resumable loop that writes accepted and rejected records in batches."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arte_edge.backends.base import Completion, Message
from arte_edge.rundir import JsonlAppender, read_jsonl
from arte_edge.tasks.base import Check, Item, Task

_ANSWER_LINE = re.compile(r"^\s*(\*\*)?\s*(final\s+)?answer\s*(\*\*)?\s*[:：].*$", re.IGNORECASE | re.MULTILINE)
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def answer_messages(task: Task, item: Item, demos: Iterable[tuple[str, str]] = ()) -> list[Message]:
    """The conversation asking a model to answer ``item``: system prompt, optional demos, the question."""
    messages: list[Message] = [{"role": "system", "content": task.system_prompt}]
    for question, answer in demos:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": task.user_prompt(item)})
    return messages


TEACHER_STYLE = (" Be concise: reason in at most three short sentences, and always finish with the final answer line"
                 " exactly as specified.")


def teacher_messages(task: Task, item: Item) -> list[Message]:
    """The teacher's prompt for ``item``: the student's prompt plus a conciseness instruction.

    Small students learn short rationales better, and short teacher answers keep generation cheap; the
    training example itself keeps the task's own system prompt (the one used at evaluation).
    """
    messages = answer_messages(task, item)
    suffix = "" if task.kind == "code" else TEACHER_STYLE
    messages[0] = {"role": "system", "content": task.system_prompt + suffix}
    return messages


def rationale_of(text: str) -> str:
    """The reasoning part of a completion: everything before its last ``Answer:`` line."""
    matches = list(_ANSWER_LINE.finditer(text))
    return text[: matches[-1].start()].strip() if matches else text.strip()


def training_target(task: Task, completion: str, check: Check) -> str:
    """Normalise an accepted teacher completion into the exact assistant message the student learns."""
    if task.kind == "code":
        blocks = _CODE_BLOCK.findall(completion)
        code = (blocks[-1] if blocks else completion).strip()
        return f"```python\n{code}\n```"
    return task.target(rationale_of(completion), check.predicted or "")


def training_example(task: Task, item: Item, target: str, example_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A record of ``data/examples.jsonl`` in TRL's conversational ``messages`` format."""
    messages = [*answer_messages(task, item), {"role": "assistant", "content": target}]
    return {"id": example_id, "messages": messages, "meta": {"item_id": item.id, **meta}}


def completion_cost(*completions: Completion) -> dict[str, int]:
    """Teacher calls and tokens spent on one record."""
    return {
        "teacher_calls": len(completions),
        "prompt_tokens": sum(c.prompt_tokens for c in completions),
        "completion_tokens": sum(c.completion_tokens for c in completions),
    }


@dataclass
class Outcome:
    """What producing one candidate gave: an accepted example, or a rejection with its reason."""

    record_id: str
    example: dict[str, Any] | None
    rejected: dict[str, Any] | None


class DurableCollector:
    """Collect examples into ``examples.jsonl``/``rejected.jsonl`` so a killed run resumes exactly.

    Every record carries an id derived from what produced it; ids already in either file are skipped on
    resume, so nothing is lost or duplicated. Records are written in batches, each flushed and fsynced.
    """

    def __init__(self, examples_path: Path, rejected_path: Path):
        self.examples = JsonlAppender(examples_path)
        self.rejected = JsonlAppender(rejected_path)
        self.accepted_rows = read_jsonl(examples_path)
        self.rejected_rows = read_jsonl(rejected_path)
        self.done_ids = {r["id"] for r in self.accepted_rows} | {r["id"] for r in self.rejected_rows}

    @property
    def n_accepted(self) -> int:
        return len(self.accepted_rows)

    @property
    def n_attempted(self) -> int:
        return len(self.done_ids)

    def run(self, candidates: Iterable[tuple[str, Callable[[], Outcome]]], *, target: int, max_attempts: int,
            batch_size: int, on_progress: Callable[[int, int], None] | None = None) -> None:
        """Produce candidates (id, thunk) in order until ``target`` accepted or ``max_attempts`` tried."""
        batch: list[Outcome] = []
        for outcome in self._produce(candidates, target, max_attempts, batch):
            batch.append(outcome)
            if len(batch) >= batch_size:
                self._flush(batch)
            if on_progress:
                on_progress(self.n_accepted + sum(o.example is not None for o in batch),
                            self.n_attempted + len(batch))
        self._flush(batch)

    def _produce(self, candidates: Iterable[tuple[str, Callable[[], Outcome]]], target: int, max_attempts: int,
                 batch: list[Outcome]) -> Iterator[Outcome]:
        for record_id, make in candidates:
            accepted = self.n_accepted + sum(o.example is not None for o in batch)
            attempted = self.n_attempted + len(batch)
            if accepted >= target or attempted >= max_attempts:
                return
            if record_id in self.done_ids:
                continue
            yield make()

    def _flush(self, batch: list[Outcome]) -> None:
        examples = [o.example for o in batch if o.example is not None]
        rejected = [o.rejected for o in batch if o.rejected is not None]
        self.examples.write_batch(examples)
        self.rejected.write_batch(rejected)
        self.accepted_rows += examples
        self.rejected_rows += rejected
        self.done_ids.update(o.record_id for o in batch)
        batch.clear()

    def totals(self) -> dict[str, int]:
        """Counts and teacher cost over everything written so far (resume-safe)."""
        rows = self.accepted_rows + self.rejected_rows
        return {
            "n_examples": len(self.accepted_rows),
            "n_rejected": len(self.rejected_rows),
            "teacher_calls": sum(r["meta"].get("teacher_calls", 0) for r in rows),
            "teacher_prompt_tokens": sum(r["meta"].get("prompt_tokens", 0) for r in rows),
            "teacher_completion_tokens": sum(r["meta"].get("completion_tokens", 0) for r in rows),
        }
