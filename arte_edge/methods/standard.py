"""Standard distillation: the teacher answers everything; answers are checked before they become data.

Two sources of questions:
- ``pool``: the teacher answers the train-pool questions; a completion is kept only when the task's checker
  accepts it against the gold answer.
- ``synthesize``: the teacher drafts a new question (with its answer key) from the seed questions, then
  answers it step by step at temperature 0; kept only when that answer agrees with the drafted key.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from arte_edge.backends.base import ChatModel, Message, SamplingParams
from arte_edge.methods.common import (
    DurableCollector,
    Outcome,
    completion_cost,
    rationale_of,
    teacher_messages,
    training_example,
    training_target,
)
from arte_edge.rundir import stable_id
from arte_edge.tasks.base import Item, Task


@dataclass(frozen=True)
class GenerationSettings:
    """What the standard method needs from the recipe."""

    teacher_name: str
    seed: int
    temperature: float
    question_temperature: float
    max_tokens: int
    answer_followup: bool = True


ANSWER_FOLLOWUP = "Now write only your final answer line, exactly in the form 'Answer: <answer>'."


def answer_with_teacher(teacher: ChatModel, task: Task, item: Item, settings: GenerationSettings,
                        record_id: str, extra_meta: dict[str, Any] | None = None) -> Outcome:
    """Ask the teacher to answer ``item``; accept the completion only if the checker passes it.

    A completion that ended on its own but gave no parseable answer gets one follow-up turn asking for the
    answer line alone (two-stage answer extraction, as in zero-shot CoT): small teachers often reason
    correctly and then forget the format. Truncated completions are not rescued (their rationale is cut).
    """
    params = SamplingParams(max_tokens=settings.max_tokens, temperature=settings.temperature,
                            seed=settings.seed)
    messages = teacher_messages(task, item)
    completion = teacher.chat(messages, params)
    calls = [completion]
    text = completion.text
    if (settings.answer_followup and completion.ok and task.kind != "code" and completion.finish_reason == "stop"
            and task.extract_answer(text) is None):
        followup = teacher.chat([*messages, {"role": "assistant", "content": text},
                                 {"role": "user", "content": ANSWER_FOLLOWUP}],
                                SamplingParams(max_tokens=24, temperature=0.0, seed=settings.seed))
        calls.append(followup)
        if followup.ok and task.extract_answer(followup.text) is not None:
            text = f"{text.rstrip()}\n{followup.text.strip()}"
    meta = {"method": "standard", "teacher": settings.teacher_name, **completion_cost(*calls),
            **(extra_meta or {})}
    if len(calls) > 1:
        meta["answer_followup"] = True
    if not completion.ok:
        return Outcome(record_id, None, _rejection(record_id, item, meta, f"teacher error: {completion.error}", ""))
    check = task.check(item, text)
    if not check.correct:
        return Outcome(record_id, None, _rejection(record_id, item, meta, check.reason, text))
    example = training_example(task, item, training_target(task, text, check), record_id, meta)
    return Outcome(record_id, example, None)


def _rejection(record_id: str, item: Item, meta: dict[str, Any], reason: str, text: str) -> dict[str, Any]:
    return {"id": record_id, "reason": reason or "rejected by checker", "completion": text[:2000],
            "meta": {"item_id": item.id, **meta}}


def pool_candidates(teacher: ChatModel, task: Task, pool: Sequence[Item],
                    settings: GenerationSettings) -> Iterator[tuple[str, Callable[[], Outcome]]]:
    """One candidate per train-pool item, in the recorded split order."""
    for item in pool:
        record_id = stable_id("standard/pool", item.id, settings.teacher_name, settings.seed,
                              settings.temperature, settings.max_tokens, settings.answer_followup)
        yield record_id, (lambda item=item, rid=record_id: answer_with_teacher(teacher, task, item, settings, rid))


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


def parse_draft(task: Task, text: str, item_id: str) -> Item | None:
    """A drafted question and its key as an Item, or None when the draft is not usable."""
    key = task.extract_answer(text)
    question = rationale_of(text).removeprefix("Question:").strip()
    if not key or len(question) < 10:
        return None
    return Item(id=item_id, question=question, answer=key, source_split="synthetic")


def synthesize_candidates(teacher: ChatModel, task: Task, seeds: Sequence[Item],
                          settings: GenerationSettings) -> Iterator[tuple[str, Callable[[], Outcome]]]:
    """Endless stream of draft-then-answer candidates, each reproducible from its index."""
    index = 0
    while True:
        record_id = stable_id("standard/synthesize", index, settings.teacher_name, settings.seed,
                              settings.question_temperature, settings.temperature)
        yield record_id, (lambda i=index, rid=record_id: _draft_and_answer(teacher, task, seeds, settings, i, rid))
        index += 1


def _draft_and_answer(teacher: ChatModel, task: Task, seeds: Sequence[Item], settings: GenerationSettings,
                      index: int, record_id: str) -> Outcome:
    rng = random.Random(f"{settings.seed}/{index}")
    params = SamplingParams(max_tokens=settings.max_tokens, temperature=settings.question_temperature,
                            seed=settings.seed * 100_003 + index)
    draft = teacher.chat(draft_messages(task, seeds, rng), params)
    item = parse_draft(task, draft.text, f"{task.name}/synthetic-{record_id}") if draft.ok else None
    if item is None:
        meta = {"method": "standard", "teacher": settings.teacher_name, **completion_cost(draft)}
        reason = f"teacher error: {draft.error}" if not draft.ok else "unparseable draft (no question or answer key)"
        placeholder = Item(id=f"{task.name}/synthetic-{record_id}", question="", answer="")
        return Outcome(record_id, None, _rejection(record_id, placeholder, meta, reason, draft.text))
    outcome = answer_with_teacher(teacher, task, item, settings, record_id,
                                  {"source": "synthesize", "drafted_key": item.answer})
    for record in (outcome.example, outcome.rejected):
        if record is not None:  # the draft call counts toward the teacher budget too
            record["meta"]["teacher_calls"] += 1
            record["meta"]["prompt_tokens"] += draft.prompt_tokens
            record["meta"]["completion_tokens"] += draft.completion_tokens
            record["meta"]["question"] = item.question
    return outcome


def generate(teacher: ChatModel, task: Task, *, pool: Sequence[Item], seeds: Sequence[Item], mode: str,
             collector: DurableCollector, settings: GenerationSettings, target: int, max_attempts: int,
             batch_size: int, on_progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Fill ``collector`` with checked teacher examples; returns counts and teacher cost."""
    if mode == "pool":
        candidates = pool_candidates(teacher, task, pool, settings)
    else:
        candidates = synthesize_candidates(teacher, task, seeds, settings)
    # Concurrent only where the backend declares it (OpenAIChat.parallel); in-process models are not thread-safe.
    collector.run(candidates, target=target, max_attempts=max_attempts, batch_size=batch_size,
                  on_progress=on_progress, parallel=int(getattr(teacher, "parallel", 1) or 1))
    return collector.totals()
