"""ARTE step 5 with one teacher: its examples, drafted, answered and checked (or, with ``arte.alignment:
select``, chosen from the elicited drafts by the student's scores).

Each teacher drafts questions with the fixed drafting prompt (T = ``arte.question_temperature``) and answers them
with the plain step-by-step prompt (T=0); attempt i samples with the same seed for every teacher, so datasets
differ only in the teacher. An example is kept when its answer agrees with the drafted key. Rows, kept or not,
go to ``align/datasets/<name>.jsonl`` durably.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arte_edge.backends.base import ChatModel, Completion, SamplingParams
from arte_edge.methods.arte.preferences import question_scores
from arte_edge.methods.arte.prompts import TEACHER_WINDOW, draft_prompt, rationale_prompt
from arte_edge.methods.common import chat_seeded, completion_cost, read_draft, training_example, training_target
from arte_edge.progress import progress
from arte_edge.runctx import RunContext
from arte_edge.rundir import JsonlAppender, read_jsonl, stable_id
from arte_edge.tasks.base import Item, Task
from arte_edge.tasks.decontam import HeldOut


def example_from(task: Task, question: str, key: str, completion: str, record_id: str,
                 meta: dict[str, Any]) -> dict[str, Any] | None:
    """A training example when ``completion`` answers ``question`` with ``key``; None otherwise."""
    item = Item(id=f"{task.name}/arte-{record_id}", question=question, answer=key, source_split="synthetic")
    check = task.check(item, completion)
    if not check.correct:
        return None
    return training_example(task, item, training_target(task, completion, check), record_id, meta)


def regenerate(teacher: ChatModel, task: Task, seeds: Sequence[Item], ctx: RunContext, name: str,
               path: Path) -> list[dict[str, Any]]:
    """Step 5 with one teacher: draft (T=question_temperature), answer with the plain prompt (T=0), check.

    Rows (kept or not) go to ``path`` durably; attempt i uses the same sampling seed for every teacher.
    Attempts run in windows of ``TEACHER_WINDOW``: one batched call drafts the window, one answers its
    parseable drafts. Stops at ``generate.n_examples`` kept or ``generate.max_attempts`` tried; rows past the
    n-th kept example of the last window are not recorded, so the file holds what a one-at-a-time run writes.
    """
    gen = ctx.recipe.generate
    rows = {r["id"]: r for r in read_jsonl(path)}
    out = JsonlAppender(path)
    with progress(f"generate: {name} teacher", gen.n_examples) as advance:
        advance(_n_kept(rows))
        for start in range(0, gen.max_attempts, TEACHER_WINDOW):
            if _n_kept(rows) >= gen.n_examples:
                break
            indices = [i for i in range(start, min(start + TEACHER_WINDOW, gen.max_attempts))
                       if _regen_id(ctx, name, i) not in rows]
            new = _regenerate_window(teacher, task, seeds, ctx, name, indices)
            room = gen.n_examples - _n_kept(rows)
            recorded = []
            for row in new:
                if room <= 0:
                    break
                recorded.append(row)
                room -= row["example"] is not None
            out.write_batch(recorded)
            rows.update({r["id"]: r for r in recorded})
            advance(sum(r["example"] is not None for r in recorded))
    return sorted(rows.values(), key=lambda r: r["index"])


def _n_kept(rows: dict[str, dict[str, Any]]) -> int:
    return sum(r["example"] is not None for r in rows.values())


def _regen_id(ctx: RunContext, name: str, index: int) -> str:
    return stable_id("arte/regen", name, index, ctx.recipe.seed, ctx.method_config.question_temperature,
                     ctx.recipe.generate.max_tokens)


def _regenerate_window(teacher: ChatModel, task: Task, seeds: Sequence[Item], ctx: RunContext, name: str,
                       indices: Sequence[int]) -> list[dict[str, Any]]:
    """Rows for attempts ``indices``: their drafts in one batched call, then their answers in another."""
    cfg, gen, seed = ctx.method_config, ctx.recipe.generate, ctx.recipe.seed
    drafts = chat_seeded(teacher, [draft_prompt(task, seeds)] * len(indices),
                         SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.question_temperature),
                         [seed * 100_003 + 50_000 + i for i in indices])
    held_out = HeldOut(ctx.split("eval"))
    read = {i: read_draft(task, d.text, _regen_id(ctx, name, i), held_out) if d.ok else
            (None, f"teacher error: {d.error}")
            for i, d in zip(indices, drafts, strict=True)}
    items = {i: item for i, (item, _) in read.items()}
    asked = [i for i in indices if items[i] is not None]
    answers = dict(zip(asked, teacher.chat_batch([rationale_prompt(task, items[i].question, cfg) for i in asked],
                                                 SamplingParams(max_tokens=gen.max_tokens, temperature=0.0,
                                                                seed=seed)) if asked else [], strict=True))
    rows = []
    for i, draft in zip(indices, drafts, strict=True):
        rid, item, answer = _regen_id(ctx, name, i), items[i], answers.get(i)
        calls = [draft] + ([answer] if answer is not None else [])
        example, reason = None, read[i][1]
        if item is not None and answer is not None:
            meta = {"method": "arte", "dataset": name, "teacher": ctx.recipe.teacher.model, **completion_cost(*calls),
                    "drafted_key": item.answer}
            example = example_from(task, item.question, item.answer, answer.text, rid, meta) if answer.ok else None
            reason = "" if example else rationale_rejection(task, answer)
        rows.append({"id": rid, "index": i, "example": example, "reason": reason, **completion_cost(*calls)})
    return rows


def rationale_rejection(task: Task, answer: Completion) -> str:
    """Why a regenerated rationale was not kept, with the fix when it is a token budget."""
    if not answer.ok:
        return f"teacher error: {answer.error}"
    if task.extract_answer(answer.text) is None:
        if answer.finish_reason == "length":
            return "rationale cut at generate.max_tokens before its answer line (raise generate.max_tokens)"
        return "rationale without an answer line"
    return "rationale disagrees with the drafted key"


def select_dataset(ctx: RunContext, name: str, teacher: ChatModel, path: Path) -> list[dict[str, Any]]:
    """``arte.alignment: select``: examples from the elicited drafts, chosen by the student's scores."""
    task, gen = ctx.task, ctx.recipe.generate
    drafts = [d for d in read_jsonl(ctx.run.root / "align" / "drafts.jsonl") if d["ok"]]
    rationales = read_jsonl(ctx.run.root / "align" / "rationales.jsonl")
    scores = {s["id"]: s["score"] for s in read_jsonl(ctx.run.root / "align" / "scores.jsonl")}
    q_scores = question_scores(read_jsonl(ctx.run.root / "align" / "scores.jsonl"))
    if name in ("full", "question-only"):
        drafts.sort(key=lambda d: (-q_scores.get(d["id"], -1.0), d["index"]))
    else:
        drafts.sort(key=lambda d: d["index"])
    done = {r["id"]: r for r in read_jsonl(path)}
    out = JsonlAppender(path)
    for i, d in enumerate(drafts):
        if sum(r["example"] is not None for r in done.values()) >= gen.n_examples:
            break
        rid = stable_id("arte/select", name, d["id"])
        if rid in done:
            continue
        meta = {"method": "arte", "dataset": name, "alignment": "select", "teacher": ctx.recipe.teacher.model}
        if name == "question-only":
            c = teacher.chat(rationale_prompt(task, d["question"], ctx.method_config),
                             SamplingParams(max_tokens=gen.max_tokens, temperature=0.0, seed=ctx.recipe.seed))
            cost = completion_cost(c)
            example = example_from(task, d["question"], d["key"], c.text, rid, {**meta, **cost}) if c.ok else None
        else:  # best-scored rationale that agrees with the key (already paid for in elicitation)
            cost = completion_cost()
            mine = sorted((r for r in rationales if r["draft_id"] == d["id"] and r["id"] in scores),
                          key=lambda r: (-scores[r["id"]], r["style"]))
            best = next((r for r in mine if r["agrees_with_key"]), None)
            example = example_from(task, d["question"], d["key"], best["text"], rid, {**meta, **cost}) if best else None
        row = {"id": rid, "index": i, "example": example, "reason": "" if example else "no checked rationale", **cost}
        out.write_batch([row])
        done[rid] = row
    return sorted(done.values(), key=lambda r: r["index"])

