"""Pieces every data-generation method shares: prompts, cleaning a teacher answer into a target, and a
durable, resumable loop that writes accepted and rejected records in batches."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from arte_edge.backends.base import ChatModel, Completion, Message, SamplingParams, answer_followups
from arte_edge.evaluation.scoring import answer_messages
from arte_edge.rundir import JsonlAppender, read_jsonl
from arte_edge.tasks.balance import balance_example
from arte_edge.tasks.base import Check, Item, Task
from arte_edge.tasks.decontam import HeldOut, count_contaminated

_ANSWER_LINE = re.compile(r"^\s*(\*\*)?\s*(final\s+)?answer\s*(\*\*)?\s*[:：].*$", re.IGNORECASE | re.MULTILINE)
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def chat_seeded(model: ChatModel, conversations: Sequence[Sequence[Message]], params: SamplingParams,
                seeds: Sequence[int]) -> list[Completion]:
    """Conversation i sampled with ``seeds[i]``, through as few ``chat_batch`` calls as the seeds allow.

    ``chat_batch`` seeds by position (``params.seed + i``), so each run of consecutive seeds is one batched
    call; a batched backend decodes the whole run together.
    """
    out: list[Completion] = []
    start = 0
    while start < len(conversations):
        end = start + 1
        while end < len(conversations) and seeds[end] == seeds[start] + (end - start):
            end += 1
        out += model.chat_batch(conversations[start:end], replace(params, seed=seeds[start]))
        start = end
    return out


def chat_all(model: ChatModel, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
    """Every conversation answered with ``params`` as one call would: greedy ones through one batched call,
    sampled ones each with ``params.seed`` (batching would seed them by position instead)."""
    if not conversations:
        return []
    if params.temperature == 0:
        return model.chat_batch(conversations, params)
    return chat_seeded(model, conversations, params, [params.seed] * len(conversations))


def chat_then(model: ChatModel, conversations: Sequence[Sequence[Message]], params: SamplingParams,
              followup: Callable[[int, Completion], Sequence[Message] | None],
              followup_params: SamplingParams) -> list[tuple[Completion, Completion | None]]:
    """Every conversation answered as :func:`chat_all` does, then a next turn wherever ``followup(i, completion)``
    gives one (the whole conversation so far plus the new turn), answered with ``followup_params``.

    A backend that continues a conversation in place (``chat_batch_then``: llama.cpp's batched decoder keeps the
    conversation's KV cells and processes only the new turn) does that for greedy turns; any other answers every
    first turn, then every follow-up in one batched call. ``(first, follow-up or None)`` per conversation.
    """
    if not conversations:
        return []
    direct = getattr(model, "chat_batch_then", None)
    if direct is not None and params.temperature == 0 and followup_params.temperature == 0:
        return direct(conversations, params, followup, followup_params)
    return answer_followups(model, chat_all(model, conversations, params), followup, followup_params)


def teacher_window(teacher: ChatModel) -> int:
    """Candidates produced per batched teacher call: a server's concurrency, or as many conversations as keep a
    local batched decoder's slots full (its ``window``), else its decode batch size."""
    return max(1, int(getattr(teacher, "parallel", 0) or getattr(teacher, "window", 0)
                      or getattr(teacher, "batch_size", 1) or 1))


TEACHER_STYLE = (" Be concise: explain in one to three short sentences, then write the final answer line exactly as"
                 " specified. Do not discuss every option.")

# One worked example per answer kind, shown to the teacher only: small teachers (0.5B) follow a demonstrated
# format far better than an instruction, and ramble through every option without one. Hand-written, not taken
# from any dataset, so nothing leaks into evaluation.
FORMAT_DEMOS: dict[str, tuple[str, str]] = {
    "multiple_choice": (
        "Which of these is a renewable source of energy?\nA. coal\nB. natural gas\nC. wind\nD. oil",
        "Coal, natural gas and oil are fossil fuels that took millions of years to form. Wind is replenished "
        "naturally all the time, so it is renewable.\nAnswer: C",
    ),
    "numeric": (
        "A box holds 12 pencils. A teacher buys 5 boxes and gives away 14 pencils. How many pencils are left?",
        "The 5 boxes hold 5 × 12 = 60 pencils. After giving away 14, 60 − 14 = 46 pencils are left.\nAnswer: 46",
    ),
}


def teacher_messages(task: Task, item: Item) -> list[Message]:
    """The teacher's prompt for ``item``: the student's prompt, a conciseness instruction and a format demo.

    Small students learn short rationales better, and short teacher answers keep generation cheap; the
    training example itself keeps the task's own system prompt and no demo (the prompt used at evaluation).
    """
    if task.kind == "code":
        return answer_messages(task, item)
    demo = FORMAT_DEMOS.get(task.kind)
    messages = answer_messages(task, item, [demo] if demo else [])
    messages[0] = {"role": "system", "content": task.system_prompt + TEACHER_STYLE}
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
    """A record of ``data/examples.jsonl`` in TRL's conversational ``messages`` format.

    Multiple-choice examples have their gold choice moved to a letter drawn from the example id (letter references
    in the target swapped with it: :mod:`arte_edge.tasks.balance`), so the gold letters of a training set are
    uniform whatever letters the teacher happened to get right."""
    item, target, swap = balance_example(task, item, target, example_id)
    messages = [*answer_messages(task, item), {"role": "assistant", "content": target}]
    return {"id": example_id, "messages": messages, "meta": {"item_id": item.id, **meta, **swap}}


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

    def run(self, candidates: Iterable[tuple[str, Any]], *, target: int, max_attempts: int,
            batch_size: int, on_progress: Callable[[int, int], None] | None = None, parallel: int = 1,
            run_window: Callable[[list[tuple[str, Any]]], list[Outcome]] | None = None) -> None:
        """Produce candidates in order until ``target`` accepted or ``max_attempts`` tried.

        Candidates are ``(id, thunk)``; with ``parallel`` > 1, windows of up to ``parallel`` thunks run on
        threads (the backend must be thread-safe). With ``run_window``, candidates are ``(id, payload)`` and
        each window of up to ``parallel`` is produced by one ``run_window(window)`` call (batched teacher
        calls, no threads). Either way outcomes are recorded in candidate order and the stop rule is applied
        per outcome, so the files hold exactly what a sequential run writes (extra answers of the last window
        are dropped, not recorded).
        """
        batch: list[Outcome] = []
        for outcome in self._produce(candidates, target, max_attempts, batch, parallel, run_window):
            batch.append(outcome)
            if len(batch) >= batch_size:
                self._flush(batch)
            if on_progress:
                on_progress(self.n_accepted + sum(o.example is not None for o in batch),
                            self.n_attempted + len(batch))
        self._flush(batch)

    def _room(self, target: int, max_attempts: int, batch: list[Outcome]) -> int:
        """How many more candidates may still be recorded (0 = stop)."""
        accepted = self.n_accepted + sum(o.example is not None for o in batch)
        attempted = self.n_attempted + len(batch)
        return 0 if accepted >= target else max(0, max_attempts - attempted)

    def _produce(self, candidates: Iterable[tuple[str, Any]], target: int, max_attempts: int,
                 batch: list[Outcome], parallel: int = 1,
                 run_window: Callable[[list[tuple[str, Any]]], list[Outcome]] | None = None) -> Iterator[Outcome]:
        from concurrent.futures import ThreadPoolExecutor

        pending = ((rid, make) for rid, make in candidates if rid not in self.done_ids)
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            while room := self._room(target, max_attempts, batch):
                window = list(itertools.islice(pending, min(max(1, parallel), room)))
                if not window:
                    return
                if run_window is not None:
                    outcomes: Iterable[Outcome] = run_window(window)
                elif len(window) == 1:
                    outcomes = [window[0][1]()]
                else:
                    outcomes = pool.map(lambda candidate: candidate[1](), window)
                for outcome in outcomes:
                    if not self._room(target, max_attempts, batch):
                        return
                    yield outcome

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
            "n_contaminated": count_contaminated(self.rejected_rows),
            "teacher_calls": sum(r["meta"].get("teacher_calls", 0) for r in rows),
            "teacher_prompt_tokens": sum(r["meta"].get("prompt_tokens", 0) for r in rows),
            "teacher_completion_tokens": sum(r["meta"].get("completion_tokens", 0) for r in rows),
        }


# ---- drafting new questions (standard synthesize, ARTE) ----------------------------------------------

def draft_messages(task: Task, seeds: Sequence[Item], rng: random.Random) -> list[Message]:
    """Ask the teacher for one new question in the style of (a shuffled sample of) the seeds."""
    shown = rng.sample(list(seeds), k=min(3, len(seeds)))
    examples = "\n\n".join(f"Question:\n{s.question}\nAnswer: {s.answer}" for s in shown)
    user = (f"{task.description}\n\nHere are example questions with their answers:\n\n{examples}\n\n"
            "Write ONE new question of the same kind and difficulty, different from the examples, in exactly the "
            "same format. Then give its correct answer on a final line 'Answer: <answer>'. "
            "Output only the question and the answer line.")
    return [{"role": "system", "content": "You are an expert writer of exam questions."},
            {"role": "user", "content": user}]


def read_draft(task: Task, text: str, item_id: str, held_out: HeldOut | None = None) -> tuple[Item | None, str]:
    """A drafted question and its key as an Item, or None with the reason the draft is unusable (no key, a stub
    of a question, what the task rejects, e.g. a multiple-choice question without its choices, or a copy of a
    ``held_out`` item: exact or 13-gram overlap, reason ``contaminated: …``)."""
    key = task.extract_answer(text)
    question = rationale_of(text).removeprefix("Question:").strip()
    if not key:
        return None, "unparseable draft (no answer key)"
    if len(question) < 10:
        return None, "unparseable draft (no question)"
    item = Item(id=item_id, question=question, answer=key, source_split="synthetic")
    problem = task.draft_problem(item)
    if problem:
        return None, f"unusable draft: {problem}"
    copied = held_out.match(question) if held_out is not None else None
    return (None, copied) if copied else (item, "")
