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
from dataclasses import dataclass, field
from typing import Any

from arte_edge.backends.base import ChatModel, Completion, Message, SamplingParams
from arte_edge.methods.common import (
    DurableCollector,
    Outcome,
    chat_seeded,
    chat_then,
    completion_cost,
    draft_messages,
    read_draft,
    teacher_messages,
    teacher_window,
    training_example,
    training_target,
)
from arte_edge.rundir import stable_id
from arte_edge.tasks.base import Item, Task
from arte_edge.tasks.decontam import HeldOut


@dataclass(frozen=True)
class GenerationSettings:
    """What the standard method needs from the recipe."""

    teacher_name: str
    seed: int
    temperature: float
    question_temperature: float
    max_tokens: int
    answer_followup: bool = True
    held_out: HeldOut | None = field(default=None, compare=False, repr=False)  # drafts copying these are dropped


ANSWER_FOLLOWUP = "Now write only your final answer line, exactly in the form 'Answer: <answer>'."


def answer_window(teacher: ChatModel, task: Task, jobs: Sequence[tuple[str, Item, dict[str, Any]]],
                  settings: GenerationSettings) -> list[Outcome]:
    """Answer every ``(record_id, item, extra_meta)`` job with batched teacher calls; one Outcome each.

    A completion that ended on its own but gave no parseable answer gets one follow-up turn asking for the
    answer line alone (two-stage answer extraction, as in zero-shot CoT): small teachers often reason
    correctly and then forget the format. Truncated completions are not rescued (their rationale is cut).
    Greedy answers go through one batched call, follow-ups continuing in place where the backend can
    (:func:`chat_then`); sampled ones keep ``settings.seed`` each.
    """
    params = SamplingParams(max_tokens=settings.max_tokens, temperature=settings.temperature, seed=settings.seed)
    messages = [teacher_messages(task, item) for _, item, _ in jobs]

    def rescue(i: int, completion: Completion) -> list[Message] | None:
        if (settings.answer_followup and completion.ok and task.kind != "code" and completion.finish_reason == "stop"
                and task.extract_answer(completion.text) is None):
            return [*messages[i], {"role": "assistant", "content": completion.text},
                    {"role": "user", "content": ANSWER_FOLLOWUP}]
        return None

    answered = chat_then(teacher, messages, params, rescue,
                         SamplingParams(max_tokens=24, temperature=0.0, seed=settings.seed))
    return [_judge(task, job, settings, first, followup)
            for job, (first, followup) in zip(jobs, answered, strict=True)]


def _judge(task: Task, job: tuple[str, Item, dict[str, Any]], settings: GenerationSettings, completion: Completion,
           followup: Completion | None) -> Outcome:
    """The checked Outcome of one teacher answer (plus its follow-up turn, when there was one)."""
    record_id, item, extra_meta = job
    calls = [completion] + ([followup] if followup is not None else [])
    text = completion.text
    if followup is not None and followup.ok and task.extract_answer(followup.text) is not None:
        text = f"{text.rstrip()}\n{followup.text.strip()}"
    meta = {"method": "standard", "teacher": settings.teacher_name, **completion_cost(*calls), **extra_meta}
    if followup is not None:
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


def pool_candidates(task: Task, pool: Sequence[Item], settings: GenerationSettings) -> Iterator[tuple[str, Item]]:
    """One candidate ``(record_id, item)`` per train-pool item, in the recorded split order."""
    for item in pool:
        record_id = stable_id("standard/pool", item.id, settings.teacher_name, settings.seed,
                              settings.temperature, settings.max_tokens, settings.answer_followup)
        yield record_id, item


def synthesize_candidates(settings: GenerationSettings) -> Iterator[tuple[str, int]]:
    """Endless stream of ``(record_id, index)`` draft-then-answer candidates, each reproducible from its index."""
    index = 0
    while True:
        yield stable_id("standard/synthesize", index, settings.teacher_name, settings.seed,
                        settings.question_temperature, settings.temperature), index
        index += 1


def draft_and_answer_window(teacher: ChatModel, task: Task, seeds: Sequence[Item], settings: GenerationSettings,
                            window: Sequence[tuple[str, int]]) -> list[Outcome]:
    """Draft a question for every ``(record_id, index)`` (one batched call; draft i samples with seed
    ``seed·100003 + i``), then answer the usable drafts together; unusable drafts are rejected as such."""
    params = SamplingParams(max_tokens=settings.max_tokens, temperature=settings.question_temperature)
    prompts = [draft_messages(task, seeds, random.Random(f"{settings.seed}/{index}")) for _, index in window]
    drafts = chat_seeded(teacher, prompts, params, [settings.seed * 100_003 + index for _, index in window])
    read = [read_draft(task, d.text, f"{task.name}/synthetic-{rid}", settings.held_out) if d.ok else (None, "")
            for (rid, _), d in zip(window, drafts, strict=True)]
    items = [item for item, _ in read]
    jobs = [(rid, item, {"source": "synthesize", "drafted_key": item.answer})
            for (rid, _), item in zip(window, items, strict=True) if item is not None]
    answered = iter(answer_window(teacher, task, jobs, settings))
    outcomes = []
    for (rid, _), draft, (item, why) in zip(window, drafts, read, strict=True):
        if item is None:
            outcomes.append(_unusable_draft(task, settings, rid, draft, why))
            continue
        outcome = next(answered)
        for record in (outcome.example, outcome.rejected):
            if record is not None:  # the draft call counts toward the teacher budget too
                record["meta"]["teacher_calls"] += 1
                record["meta"]["prompt_tokens"] += draft.prompt_tokens
                record["meta"]["completion_tokens"] += draft.completion_tokens
                record["meta"]["question"] = item.question
        outcomes.append(outcome)
    return outcomes


def _unusable_draft(task: Task, settings: GenerationSettings, record_id: str, draft: Completion,
                    why: str) -> Outcome:
    meta = {"method": "standard", "teacher": settings.teacher_name, **completion_cost(draft)}
    reason = f"teacher error: {draft.error}" if not draft.ok else why
    placeholder = Item(id=f"{task.name}/synthetic-{record_id}", question="", answer="")
    return Outcome(record_id, None, _rejection(record_id, placeholder, meta, reason, draft.text))


def generate(teacher: ChatModel, task: Task, *, pool: Sequence[Item], seeds: Sequence[Item], mode: str,
             collector: DurableCollector, settings: GenerationSettings, target: int, max_attempts: int,
             batch_size: int, on_progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Fill ``collector`` with checked teacher examples; returns counts and teacher cost.

    Candidates are produced in windows (:func:`teacher_window`), each window through batched teacher calls
    (llama.cpp batched decoding, concurrent requests for an OpenAI-compatible server).
    """
    candidates: Iterator[tuple[str, Any]]
    if mode == "pool":
        candidates = pool_candidates(task, pool, settings)

        def run_window(window: list[tuple[str, Any]]) -> list[Outcome]:
            return answer_window(teacher, task, [(rid, item, {}) for rid, item in window], settings)
    else:
        candidates = synthesize_candidates(settings)

        def run_window(window: list[tuple[str, Any]]) -> list[Outcome]:
            return draft_and_answer_window(teacher, task, seeds, settings, window)
    collector.run(candidates, target=target, max_attempts=max_attempts, batch_size=batch_size,
                  on_progress=on_progress, parallel=teacher_window(teacher), run_window=run_window)
    return collector.totals()
