"""PERsD: personalised distillation (Chen et al., EMNLP 2023, arXiv 2310.18628).

The loop, for code tasks with unit tests (MBPP, user JSONL tasks) and answer-checked tasks (GSM8K):
1. the student attempts every train-pool task once (T=0.3, top-p 0.95);
2. its code runs against the task's tests in the sandbox (answer tasks: the answer is checked); passes are dropped;
3. the teacher rectifies each failure given the task, the student's code and the bounded error (``nl`` mode:
   natural-language feedback first, then the fix);
4. the refinement is tested again; only passing ones are kept.

Datasets (all at the same teacher budget B, in calls):
- ``persd`` (main, data/examples.jsonl): task → refined code;
- ``persd-refine``: task + student code + error → refined code (the multi-step inference prompt);
- ``persd-combined``: both (shares persd's teacher calls);
- ``stand``: the teacher solves the first B pool tasks from scratch (standard distillation);
- ``inpd``: the teacher solves from scratch the B tasks the student failed (input-personalised only).

Every model call's record goes to an append-only log under data/persd/ via :class:`DurableCollector`, keyed by a
hash of what produced it, so a killed run resumes with nothing lost or duplicated; the datasets themselves are
rebuilt (atomically) from the logs at the end of every run.

Held-out evaluation (HumanEval pass@1, multi-step inference) lives in :mod:`arte_edge.methods.persd_eval`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.backends.base import ChatModel, Completion, SamplingParams
from arte_edge.errors import ArteError
from arte_edge.methods.common import (
    DurableCollector,
    Outcome,
    chat_all,
    completion_cost,
    rationale_of,
    teacher_window,
    training_example,
)
from arte_edge.methods.persd_prompts import (
    refine_inference_messages,
    student_attempt_messages,
    teacher_direct_messages,
    teacher_refine_messages,
)
from arte_edge.rundir import atomic_write_json, atomic_write_text, stable_id
from arte_edge.tasks.base import Item, Task

if TYPE_CHECKING:
    from arte_edge.sandbox import SandboxResult
    from arte_edge.stages.context import StageContext

MAIN = "persd"
ALL_VARIANTS = ("persd-refine", "persd-combined", "stand", "inpd")
NO_CODE = "no code found (expected a ```python block)"
_FEEDBACK_HEADER = re.compile(
    r"^\s*(step\s*[12]\s*:?\s*)?(feedback|rectified code)\s*:?\s*(mistakes in the code)?\s*:?", re.I | re.M)


# ---------------------------------------------------------------- judging one answer

@dataclass(frozen=True)
class Judgement:
    """Whether a completion passes, what was tested (code, or the predicted answer), and the bounded error."""

    passed: bool
    answer: str | None
    error: str


def _cut(text: str, max_chars: int) -> str:
    """``text`` in at most ``max_chars``, cut in the middle so a long assert keeps its ``(got ...)`` tail."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    tail = max_chars // 3
    head = max_chars - tail - 5
    return f"{text[:head].rstrip()} ... {text[-tail:].lstrip()}"


def format_error(result: SandboxResult, max_chars: int = 300, n_tests: int = 1) -> str:
    """The error shown to the teacher/student: the first ``n_tests`` distinct failures, each ≤ ``max_chars``.

    An equality assert reads ``AssertionError: assert f(2) == 4 (got 5)`` (input, output, expected); any other
    failure reads ``<Type>: <message>`` followed by the test it happened in.
    """
    lines: list[str] = []
    seen: set[str] = set()
    for outcome in result.outcomes:
        if outcome.passed or outcome.error in seen:
            continue
        seen.add(outcome.error)
        error = outcome.error or "failed"
        if not error.startswith("AssertionError: assert"):
            first_line = outcome.test.strip().splitlines()[0] if outcome.test.strip() else ""
            if first_line and first_line not in error and not error.startswith(("SyntaxError", "IndentationError")):
                error = f"{error} (in test: {first_line})"
        lines.append(_cut(error, max_chars))
        if len(lines) >= n_tests:
            break
    return "\n".join(lines) or _cut(result.error or "tests failed", max_chars)


def run_item_tests(task: Task, item: Item, code: str, tests: Sequence[str], timeout_s: float) -> SandboxResult:
    """Run ``tests`` on ``code`` the way the task's checker does (HumanEval prompt first, MBPP setup after)."""
    from arte_edge.sandbox import run_tests

    program = task.program(item, code) if hasattr(task, "program") else code
    if item.setup_code and item.setup_code.strip():
        program = f"{program}\n\n{item.setup_code.strip()}"
    return run_tests(program, list(tests), timeout_s=timeout_s)


def judge(task: Task, item: Item, text: str, *, tests: Sequence[str] | None = None, timeout_s: float = 5.0,
          error_max_chars: int = 300, error_tests: int = 1) -> Judgement:
    """Test (code) or check (answer tasks) one completion; never raises for anything the completion does.

    ``tests`` defaults to all of the item's tests. Answer tasks never reveal the gold answer in the error.
    """
    if task.kind != "code":
        check = task.check(item, text)
        if check.correct:
            return Judgement(True, check.predicted, "")
        error = (f"The final answer {check.predicted} is incorrect." if check.predicted is not None
                 else f"No final answer found ({check.reason}).")
        return Judgement(False, check.predicted, _cut(error, error_max_chars))
    from arte_edge.tasks.extract import extract_code

    code = extract_code(text)
    if code is None:
        return Judgement(False, None, NO_CODE)
    chosen = list(item.tests if tests is None else tests)
    if not chosen:
        raise ArteError(f"{item.id}: code item has no tests to check against; give it a 'tests' list")
    result = run_item_tests(task, item, code, chosen, timeout_s)
    return Judgement(result.passed, code, "" if result.passed else format_error(result, error_max_chars, error_tests))


def shown_attempt(judgement: Judgement, text: str) -> str:
    """What the refine prompts show as the student's attempt: the tested code, else the raw completion."""
    return judgement.answer if judgement.answer is not None and judgement.answer.strip() else text.strip()


def split_feedback(text: str) -> str:
    """The natural-language feedback of an nl-mode refinement: the text before its code block, headers removed."""
    before = text.split("```", 1)[0]
    body = _FEEDBACK_HEADER.sub("", before).strip()
    return body[:800].strip()


def target_of(task: Task, judgement: Judgement, text: str, *, with_feedback: bool) -> str:
    """The assistant message to learn from an accepted teacher completion (the exact code that passed)."""
    feedback = split_feedback(text) if with_feedback else ""
    if task.kind == "code":
        return task.target(feedback, judgement.answer or "")
    rationale = rationale_of(text)
    if not with_feedback:
        rationale = re.sub(r"(?is)^\s*feedback\s*:.*?(\n\s*\n|$)", "", rationale, count=1).strip()
    return task.target(rationale, judgement.answer or "")


# ---------------------------------------------------------------- the loop

@dataclass(frozen=True)
class LoopSettings:
    """Everything the loop needs (from the recipe); part of every record id, so a change never reuses records."""

    student_name: str
    teacher_name: str
    seed: int = 0
    student_temperature: float = 0.3
    top_p: float = 0.95
    student_max_tokens: int = 384
    teacher_temperature: float = 0.0
    teacher_max_tokens: int = 512
    refine_mode: str = "code"
    error_max_chars: int = 300
    error_tests: int = 1
    test_timeout_s: float = 5.0
    budget: int | None = None
    variants: tuple[str, ...] = ALL_VARIANTS
    batch_size: int = 8

    def judge(self, task: Task, item: Item, text: str) -> Judgement:
        """:func:`judge` with this run's timeout and error bounds."""
        return judge(task, item, text, timeout_s=self.test_timeout_s, error_max_chars=self.error_max_chars,
                     error_tests=self.error_tests)


@dataclass(frozen=True)
class LoopPaths:
    """The logs of one run (under data/persd/) and where the datasets go."""

    root: Path

    def log(self, name: str) -> Path:
        return self.root / "data" / "persd" / f"{name}.jsonl"

    @property
    def examples(self) -> Path:
        return self.root / "data" / "examples.jsonl"

    @property
    def rejected(self) -> Path:
        return self.root / "data" / "rejected.jsonl"

    def variant(self, name: str) -> Path:
        return self.root / "data" / "variants" / name / "examples.jsonl"

    @property
    def costs(self) -> Path:
        return self.root / "data" / "persd" / "costs.json"


def item_seed(seed: int, item_id: str) -> int:
    """A per-item sampling seed, so an attempt is reproducible whatever was sampled before it."""
    return int(stable_id("persd/seed", seed, item_id), 16) % (2**31 - 1)


# A complete fenced code block: decoding stops there (small models add long explanations after the code).
CODE_DONE = r"```[ \t]*(?:python3?|py)?[ \t]*\n[\s\S]*?\n[ \t]*```"


def stop_regex_for(task: Task, nl_feedback: bool = False) -> str | None:
    """Where decoding may stop: after the first complete code block (code), after the answer line (others).

    None for nl-mode refinements, whose feedback may quote code before the fixed block.
    """
    if nl_feedback:
        return None
    if task.kind == "code":
        return CODE_DONE
    from arte_edge.stages.evaluate import ANSWER_DONE

    return ANSWER_DONE


def truncate_at_stop(text: str, stop_regex: str | None) -> str:
    """``text`` up to the end of the first ``stop_regex`` match: every backend is judged on the same text, whether
    it stopped decoding there (llama.cpp, ONNX) or generated on (transformers)."""
    match = re.search(stop_regex, text) if stop_regex else None
    return text[: match.end()] if match else text


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
        False, None, _cut(f"generation error: {completion.error}", s.error_max_chars))
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


def _collector(paths: LoopPaths, name: str) -> DurableCollector:
    return DurableCollector(paths.log(name), paths.log(f"{name}_rejected"))


def attempt_id(s: LoopSettings, item: Item) -> str:
    """Record id of the student's attempt at ``item``."""
    return stable_id("persd/attempt", item.id, s.student_name, s.seed, s.student_temperature, s.top_p,
                     s.student_max_tokens, s.test_timeout_s, s.error_max_chars, s.error_tests)


def refine_id(s: LoopSettings, attempt_record_id: str) -> str:
    """Record id of the teacher's refinement of one attempt."""
    return stable_id("persd/refine", attempt_record_id, s.teacher_name, s.refine_mode, s.teacher_temperature,
                     s.teacher_max_tokens, s.seed)


def direct_id(s: LoopSettings, item: Item) -> str:
    """Record id of the teacher's from-scratch solution of ``item``."""
    return stable_id("persd/direct", item.id, s.teacher_name, s.teacher_temperature, s.teacher_max_tokens, s.seed,
                     s.test_timeout_s)


def run_loop(open_student: Callable[[], ChatModel], open_teacher: Callable[[], ChatModel], task: Task,
             pool: Sequence[Item], root: Path, settings: LoopSettings,
             on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
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
    direct_items = _direct_items(pool, refine_targets, budget, s.variants)
    if refine_targets or direct_items:
        teacher = open_teacher()
        try:
            _teacher_phase(teacher, task, by_id, refine_targets, direct_items, paths, s, on_progress)
        finally:
            teacher.close()
    return write_datasets(task, pool, paths, s, budget)


def _progress(on_progress: Callable[[str, int, int], None] | None, phase: str) -> Callable[[int, int], None] | None:
    return (lambda accepted, attempted: on_progress(phase, accepted, attempted)) if on_progress else None


def _student_phase(open_student: Callable[[], ChatModel], task: Task, pool: Sequence[Item], paths: LoopPaths,
                   s: LoopSettings, on_progress: Callable[[str, int, int], None] | None) -> list[dict[str, Any]]:
    attempts = _collector(paths, "attempts")
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
                  variants: Sequence[str]) -> list[Item]:
    by_id = {item.id: item for item in pool}
    chosen: list[Item] = []
    if "inpd" in variants:
        chosen += [by_id[a["item_id"]] for a in refine_targets]
    if "stand" in variants:
        chosen += [item for item in pool[:budget] if item not in chosen]
    return chosen


def _teacher_phase(teacher: ChatModel, task: Task, by_id: dict[str, Item], refine_targets: list[dict[str, Any]],
                   direct_items: list[Item], paths: LoopPaths, s: LoopSettings,
                   on_progress: Callable[[str, int, int], None] | None) -> None:
    window = teacher_window(teacher)
    refinements = _collector(paths, "refinements")
    refinements.run(((refine_id(s, a["id"]), a) for a in refine_targets), target=len(refine_targets) + 1,
                    max_attempts=len(refinements.done_ids) + len(refine_targets), batch_size=s.batch_size,
                    on_progress=_progress(on_progress, "refinements"), parallel=window,
                    run_window=lambda w: refine_window(teacher, task, [(rid, by_id[a["item_id"]], a) for rid, a in w],
                                                       s))
    direct = _collector(paths, "direct")
    direct.run(((direct_id(s, item), item) for item in direct_items), target=len(direct_items) + 1,
               max_attempts=len(direct.done_ids) + len(direct_items), batch_size=s.batch_size,
               on_progress=_progress(on_progress, "teacher direct"), parallel=window,
               run_window=lambda w: direct_window(teacher, task, w, s))


# ---------------------------------------------------------------- datasets from the logs

def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rows}


def _cost(records: list[dict[str, Any]]) -> dict[str, int]:
    return {"teacher_calls": sum(r["meta"].get("teacher_calls", 0) for r in records),
            "prompt_tokens": sum(r["meta"].get("prompt_tokens", 0) for r in records),
            "completion_tokens": sum(r["meta"].get("completion_tokens", 0) for r in records)}


def _accepted_judgement(record: dict[str, Any]) -> Judgement:
    return Judgement(True, record.get("answer"), "")


def build_datasets(task: Task, pool: Sequence[Item], paths: LoopPaths, s: LoopSettings,
                   budget: int) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, int]],
                                         list[dict[str, Any]]]:
    """Every variant's examples and teacher cost, derived from the logs only (so reruns are idempotent)."""
    from arte_edge.rundir import read_jsonl

    by_item = {item.id: item for item in pool}
    attempt_ids = {attempt_id(s, item) for item in pool}
    failures = [r for r in read_jsonl(paths.log("attempts")) if r["id"] in attempt_ids]
    order = {item.id: i for i, item in enumerate(pool)}
    targets = sorted(failures, key=lambda r: order[r["item_id"]])[:budget]
    ok_ref = _by_id(read_jsonl(paths.log("refinements")))
    bad_ref = _by_id(read_jsonl(paths.log("refinements_rejected")))
    ok_dir, bad_dir = _by_id(read_jsonl(paths.log("direct"))), _by_id(read_jsonl(paths.log("direct_rejected")))
    persd, refine, ref_records = [], [], []
    for attempt in targets:
        rid = refine_id(s, attempt["id"])
        record = ok_ref.get(rid) or bad_ref.get(rid)
        if record is None:
            continue
        ref_records.append(record)
        if rid not in ok_ref:
            continue
        item, verdict = by_item[attempt["item_id"]], _accepted_judgement(record)
        meta = {"method": "persd", "source": rid, "refine_mode": s.refine_mode}
        persd.append(training_example(task, item, target_of(task, verdict, record["completion"], with_feedback=False),
                                      stable_id(MAIN, rid), meta))
        messages = [*refine_inference_messages(task, item, attempt["attempt"], attempt["error"]),
                    {"role": "assistant", "content": target_of(task, verdict, record["completion"],
                                                               with_feedback=s.refine_mode == "nl")}]
        refine.append({"id": stable_id("persd-refine", rid), "messages": messages,
                       "meta": {"item_id": item.id, "method": "persd-refine", "source": rid}})
    datasets = {MAIN: persd, "persd-refine": refine, "persd-combined": persd + refine}
    costs = {name: _cost(ref_records) for name in datasets}
    groups = {"inpd": [by_item[a["item_id"]] for a in targets], "stand": list(pool[:budget])}
    for name, items in groups.items():
        records = [ok_dir.get(direct_id(s, i)) or bad_dir.get(direct_id(s, i)) for i in items]
        records = [r for r in records if r is not None]
        costs[name] = _cost(records)
        datasets[name] = [
            training_example(task, by_item[r["item_id"]],
                             target_of(task, _accepted_judgement(r), r["completion"], with_feedback=False),
                             stable_id(name, r["id"]), {"method": name, "source": r["id"]})
            for r in records if r["id"] in ok_dir]
    rejected = [r for r in [*bad_ref.values(), *bad_dir.values()]]
    return datasets, costs, rejected


def write_datasets(task: Task, pool: Sequence[Item], paths: LoopPaths, s: LoopSettings, budget: int) -> dict[str, Any]:
    """Write data/examples.jsonl (PERsD), each variant's examples.jsonl + cost.json, and return the totals."""
    import json

    from arte_edge.rundir import read_jsonl

    datasets, costs, rejected = build_datasets(task, pool, paths, s, budget)
    _write_jsonl(paths.examples, datasets[MAIN])
    _write_jsonl(paths.rejected, rejected)
    for name in s.variants:
        _write_jsonl(paths.variant(name), datasets[name])
        atomic_write_text(paths.variant(name).parent / "cost.json", json.dumps(costs[name]) + "\n")
    counts = {name: len(rows) for name, rows in datasets.items() if name == MAIN or name in s.variants}
    atomic_write_json(paths.costs, {name: {"n_examples": counts[name], **costs[name]} for name in counts})
    n_failed = len(read_jsonl(paths.log("attempts")))
    n_passed = len(read_jsonl(paths.log("attempts_rejected")))
    made = len(read_jsonl(paths.log("refinements"))) + len(read_jsonl(paths.log("refinements_rejected")))
    made += len(read_jsonl(paths.log("direct"))) + len(read_jsonl(paths.log("direct_rejected")))
    return {
        "n_examples": counts[MAIN], "n_rejected": len(rejected), "teacher_calls": costs[MAIN]["teacher_calls"],
        "teacher_prompt_tokens": costs[MAIN]["prompt_tokens"],
        "teacher_completion_tokens": costs[MAIN]["completion_tokens"],
        "teacher_budget": budget, "teacher_calls_made": made, "n_pool": len(pool),
        "n_student_attempts": n_failed + n_passed, "n_student_passed": n_passed, "n_student_failed": n_failed,
        "variants": {name: {"n_examples": counts[name], **costs[name]} for name in counts if name != MAIN},
        **{f"n_{name.replace('-', '_')}": counts[name] for name in counts},
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    import json

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------- pipeline entry points

def settings_from(ctx: StageContext) -> LoopSettings:
    """Loop settings from the recipe (teacher temperature and max_tokens come from ``generate:``)."""
    recipe, cfg = ctx.recipe, ctx.recipe.persd
    return LoopSettings(
        student_name=recipe.student.model, teacher_name=recipe.teacher.model, seed=recipe.seed,
        student_temperature=cfg.student_temperature, top_p=cfg.top_p, student_max_tokens=cfg.student_max_tokens,
        teacher_temperature=recipe.generate.temperature, teacher_max_tokens=recipe.generate.max_tokens,
        refine_mode=cfg.refine_mode, error_max_chars=cfg.error_max_chars, error_tests=cfg.error_tests,
        test_timeout_s=cfg.test_timeout_s, budget=cfg.teacher_budget, variants=tuple(cfg.variants),
        batch_size=recipe.generate.batch_size)


def task_pool(ctx: StageContext) -> list[Item]:
    """The train pool: recipe.task's train_pool split, then every item of ``persd.pool_extra_tasks``."""
    from arte_edge.tasks import get_task

    cfg = ctx.recipe.persd
    if cfg.eval_task in cfg.pool_extra_tasks:
        raise ArteError(f"persd.eval_task: {cfg.eval_task!r} is also in persd.pool_extra_tasks; the evaluation "
                        "task must stay held out (remove it from pool_extra_tasks)")
    pool = list(ctx.split("train_pool"))
    for name in cfg.pool_extra_tasks:
        extra = get_task(name)
        if extra.kind != ctx.task.kind:
            raise ArteError(f"persd.pool_extra_tasks: {name!r} is a {extra.kind} task but task {ctx.recipe.task!r} "
                            f"is {ctx.task.kind}; use tasks of one kind")
        pool += extra.load()
    if not pool:
        raise ArteError("splits.train_pool: is 0 and persd.pool_extra_tasks is empty; give the student tasks")
    return pool


def generate_datasets(ctx: StageContext) -> dict[str, Any]:
    """Stage `generate` for method persd: the loop over the pool, writing the main and variant datasets."""
    from arte_edge.backends import open_chat_model
    from arte_edge.progress import log

    recipe = ctx.recipe
    settings = settings_from(ctx)
    pool = task_pool(ctx)

    def on_progress(phase: str, accepted: int, attempted: int) -> None:
        if attempted % max(1, settings.batch_size) == 0:
            log(f"persd {phase}: {accepted} kept / {attempted} done")

    totals = run_loop(lambda: open_chat_model(recipe.student, seed=recipe.seed, name=f"student:{recipe.student.model}"),
                      lambda: open_chat_model(recipe.teacher, seed=recipe.seed), ctx.task, pool, ctx.run.root,
                      settings, on_progress)
    log(f"persd: {totals['n_student_failed']} student failures of {totals['n_student_attempts']} attempts; "
        f"{totals['n_examples']} refinements kept; teacher calls per variant {totals['teacher_calls']}")
    if totals["n_examples"] == 0:
        raise ArteError(f"generate: PERsD kept no refinement ({totals['n_student_failed']} student failures, "
                        f"{totals['n_rejected']} rejected, reasons in {ctx.run.rejected_path}); use a larger pool "
                        "(splits.train_pool) or a stronger teacher")
    return totals


def evaluate_extra(ctx: StageContext, rows_by_artifact: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Evaluate-stage hook: held-out pass@1 (greedy, multi-step, n samples) of base, merged and every artifact."""
    from arte_edge.methods import persd_eval

    return persd_eval.heldout_evaluation(ctx, include_variants=True)


def after_variants(ctx: StageContext) -> dict[str, Any]:
    """Call after the variants stage: adds each variant's merged student to the held-out table (cached rows
    of the other models are reused)."""
    from arte_edge.methods import persd_eval

    return persd_eval.heldout_evaluation(ctx, include_variants=True)


__all__ = ["LoopSettings", "after_variants", "evaluate_extra", "format_error", "generate_datasets", "judge",
           "run_loop"]
