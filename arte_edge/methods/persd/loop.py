"""The student → teacher loop, for code tasks with unit tests (MBPP, user JSONL tasks) and answer-checked tasks
(GSM8K):

1. the student attempts every train-pool task once (T=0.3, top-p 0.95);
2. its code runs against the task's tests in the sandbox (answer tasks: the answer is checked); passes are dropped;
3. the teacher rectifies each failure given the task, the student's code and the bounded error (``nl`` mode:
   natural-language feedback first, then the fix);
4. the refinement is tested again; only passing ones are kept.

The from-scratch teacher solutions are made here too, each task at most once whichever arms share it: StanD's
(the first B pool tasks), InpD's (the failed tasks), stand-full's (every pool task) and PERsD-combined's gold (the
tasks whose refinement passed, known once the refinements are in). :mod:`.datasets` turns the logs into data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from arte_edge.backends.base import ChatModel, Completion, SamplingParams
from arte_edge.errors import ArteError
from arte_edge.methods.common import Outcome, chat_all, completion_cost, teacher_window
from arte_edge.methods.persd.datasets import write_datasets
from arte_edge.methods.persd.judging import Judgement, cut, shown_attempt, stop_regex_for, truncate_at_stop
from arte_edge.methods.persd.prompts import student_attempt_messages, teacher_direct_messages, teacher_refine_messages
from arte_edge.methods.persd.records import LoopPaths, LoopSettings, attempt_id, direct_id, item_seed, refine_id
from arte_edge.rundir import read_jsonl
from arte_edge.tasks.base import Item, Task

Progress = Callable[[str, int, int], None]


def _student_params(s: LoopSettings, task: Task, item: Item) -> SamplingParams:
    return SamplingParams(max_tokens=s.student_max_tokens, temperature=s.student_temperature, top_p=s.top_p,
                          seed=item_seed(s.seed, item.id), stop_regex=stop_regex_for(task))


def _teacher_params(s: LoopSettings, task: Task, nl_feedback: bool = False) -> SamplingParams:
    return SamplingParams(max_tokens=s.teacher_max_tokens, temperature=s.teacher_temperature, seed=s.seed,
                          stop_regex=stop_regex_for(task, nl_feedback))


def attempt_outcome(student: ChatModel, task: Task, item: Item, s: LoopSettings, record_id: str) -> Outcome:
    """The student's attempt: a failure goes on to the teacher (accepted), a pass is dropped (rejected)."""
    params = _student_params(s, task, item)
    completion = student.chat(student_attempt_messages(task, item), params)
    completion = replace(completion, text=truncate_at_stop(completion.text, params.stop_regex))
    verdict = s.judge(task, item, completion.text) if completion.ok else Judgement(
        False, None, cut(f"generation error: {completion.error}", s.error_max_chars))
    meta = {"item_id": item.id, "student": s.student_name, "student_tokens": completion.completion_tokens}
    if verdict.passed:
        return Outcome(record_id, None, {"id": record_id, "reason": "student passed (dropped)",
                                         "completion": completion.text[:2000], "meta": meta})
    record = {"id": record_id, "item_id": item.id, "completion": completion.text,
              "attempt": shown_attempt(verdict, completion.text), "error": verdict.error, "meta": meta}
    return Outcome(record_id, record, None)


def _teacher_record(record_id: str, item: Item, completion: Completion, verdict: Judgement, s: LoopSettings,
                    kind: str, extra: dict[str, Any]) -> Outcome:
    meta = {"item_id": item.id, "kind": kind, "teacher": s.teacher_name, **completion_cost(completion), **extra}
    if verdict.passed:
        return Outcome(record_id, {"id": record_id, "item_id": item.id, "completion": completion.text,
                                   "answer": verdict.answer, "meta": meta}, None)
    return Outcome(record_id, None, {"id": record_id, "reason": f"{kind} failed: {verdict.error}",
                                     "completion": completion.text[:2000], "meta": meta})


def refine_window(teacher: ChatModel, task: Task, jobs: Sequence[tuple[str, Item, dict[str, Any]]],
                  s: LoopSettings) -> list[Outcome]:
    """Refinements of ``(record_id, item, attempt)`` jobs through batched teacher calls, each re-checked."""
    messages = [teacher_refine_messages(task, item, a["attempt"], a["error"], s.refine_mode) for _, item, a in jobs]
    params = _teacher_params(s, task, nl_feedback=s.refine_mode == "nl")
    completions = chat_all(teacher, messages, params)
    return [_teacher_outcome(rid, task, item, c, params, s, "refine", {"attempt_id": a["id"]})
            for (rid, item, a), c in zip(jobs, completions, strict=True)]


def direct_window(teacher: ChatModel, task: Task, jobs: Sequence[tuple[str, Item]], s: LoopSettings) -> list[Outcome]:
    """From-scratch teacher solutions of ``(record_id, item)`` jobs through batched calls, each checked."""
    params = _teacher_params(s, task)
    completions = chat_all(teacher, [teacher_direct_messages(task, item) for _, item in jobs], params)
    return [_teacher_outcome(rid, task, item, c, params, s, "direct", {})
            for (rid, item), c in zip(jobs, completions, strict=True)]


def _teacher_outcome(record_id: str, task: Task, item: Item, completion: Completion, params: SamplingParams,
                     s: LoopSettings, kind: str, extra: dict[str, Any]) -> Outcome:
    completion = replace(completion, text=truncate_at_stop(completion.text, params.stop_regex))
    verdict = s.judge(task, item, completion.text) if completion.ok else Judgement(
        False, None, f"teacher error: {completion.error}")
    return _teacher_record(record_id, item, completion, verdict, s, kind, extra)


def run_loop(open_student: Callable[[], ChatModel], open_teacher: Callable[[], ChatModel], task: Task,
             pool: Sequence[Item], root: Path, settings: LoopSettings,
             on_progress: Progress | None = None) -> dict[str, Any]:
    """Run the PERsD loop over ``pool`` into ``root``/data and return counts and teacher cost per variant.

    The student is closed before the teacher is opened (one model in memory at a time). Resumable: records
    already logged are not produced again.
    """
    paths, s = LoopPaths(Path(root)), settings
    by_id = {item.id: item for item in pool}
    if len(by_id) != len(pool):
        raise ArteError("persd: the task pool has duplicate item ids; give every item a unique 'id'")
    failures = _student_phase(open_student, task, pool, paths, s, on_progress)
    budget = s.budget if s.budget is not None else len(failures)
    refine_targets = failures[:budget]
    if refine_targets or _direct_items(pool, refine_targets, budget, s.variants, []):
        teacher = open_teacher()
        try:
            _teacher_phase(teacher, task, pool, refine_targets, budget, paths, s, on_progress)
        finally:
            teacher.close()
    return write_datasets(task, pool, paths, s, budget)


def _progress(on_progress: Progress | None, phase: str) -> Callable[[int, int], None] | None:
    return (lambda accepted, attempted: on_progress(phase, accepted, attempted)) if on_progress else None


def _student_phase(open_student: Callable[[], ChatModel], task: Task, pool: Sequence[Item], paths: LoopPaths,
                   s: LoopSettings, on_progress: Progress | None) -> list[dict[str, Any]]:
    attempts = paths.collector("attempts")
    target = s.budget if s.budget is not None else len(pool) + 1
    ids = [attempt_id(s, item) for item in pool]
    if attempts.n_accepted < target and not set(ids) <= attempts.done_ids:
        student = open_student()
        try:
            candidates = ((rid, lambda item=item, rid=rid: attempt_outcome(student, task, item, s, rid))
                          for item, rid in zip(pool, ids, strict=True))
            attempts.run(candidates, target=target, max_attempts=len(pool), batch_size=s.batch_size,
                         on_progress=_progress(on_progress, "student attempts"))
        finally:
            student.close()
    order = {rid: i for i, rid in enumerate(ids)}
    return sorted((r for r in attempts.accepted_rows if r["id"] in order), key=lambda r: order[r["id"]])


def _direct_items(pool: Sequence[Item], refine_targets: list[dict[str, Any]], budget: int,
                  variants: Sequence[str], refined: Sequence[Item]) -> list[Item]:
    """The tasks the teacher solves from scratch, each once: InpD's failed tasks, StanD's first ``budget`` pool
    tasks, stand-full's whole pool, then PERsD-combined's gold (``refined``: tasks whose refinement passed)."""
    by_id = {item.id: item for item in pool}
    wanted: list[Item] = []
    if "inpd" in variants:
        wanted += [by_id[a["item_id"]] for a in refine_targets]
    if "stand" in variants:
        wanted += pool[:budget]
    if "stand-full" in variants:
        wanted += pool
    if "persd-combined" in variants:
        wanted += refined
    return list({item.id: item for item in wanted}.values())


def _teacher_phase(teacher: ChatModel, task: Task, pool: Sequence[Item], refine_targets: list[dict[str, Any]],
                   budget: int, paths: LoopPaths, s: LoopSettings, on_progress: Progress | None) -> None:
    window = teacher_window(teacher)
    by_id = {item.id: item for item in pool}
    refinements = paths.collector("refinements")
    refinements.run(((refine_id(s, a["id"]), a) for a in refine_targets), target=len(refine_targets) + 1,
                    max_attempts=len(refinements.done_ids) + len(refine_targets), batch_size=s.batch_size,
                    on_progress=_progress(on_progress, "refinements"), parallel=window,
                    run_window=lambda w: refine_window(teacher, task, [(rid, by_id[a["item_id"]], a) for rid, a in w],
                                                       s))
    kept = {r["id"] for r in read_jsonl(paths.log("refinements"))}
    refined = [by_id[a["item_id"]] for a in refine_targets if refine_id(s, a["id"]) in kept]
    direct_items = _direct_items(pool, refine_targets, budget, s.variants, refined)
    direct = paths.collector("direct")
    direct.run(((direct_id(s, item), item) for item in direct_items), target=len(direct_items) + 1,
               max_attempts=len(direct.done_ids) + len(direct_items), batch_size=s.batch_size,
               on_progress=_progress(on_progress, "teacher direct"), parallel=window,
               run_window=lambda w: direct_window(teacher, task, w, s))
