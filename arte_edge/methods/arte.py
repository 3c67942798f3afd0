"""ARTE (arXiv 2406.19227): training data from a teacher aligned with the student's preferences.

Stage order: the pipeline runs `generate` before `align`, but ARTE's data comes from the *aligned* teacher.
So :func:`generate_datasets` runs steps 1–4 itself (``stages.align.ensure_aligned``, idempotent: a no-op when
``align/`` already holds them, e.g. after ``arte-edge align``), then step 5: regeneration. The later `align`
stage only rewrites the summary. No stage reordering is needed.

Datasets (same drafting prompt, same sampling seeds, so they differ only in what ARTE changes):
- ``full`` (ARTE): teacher DPO-aligned on question + rationale pairs; questions at T=1, rationales at T=0.
- ``question-only`` / ``rationale-only``: teachers aligned on one pair level only (ablations).
- ``unaligned``: the original teacher through the same drafting and rationale prompts (standard distillation
  from the seeds, the paper's "unaligned teacher").
With ``arte.alignment: select`` (teachers behind an API) nothing is trained: ``full`` keeps the top-ŝ_q drafts
with their best-ŝ_r rationale, ``question-only`` the top drafts with the plain T=0 rationale, ``rationale-only``
the drafts in order with their best rationale. Every kept example passed the task checker (the rationale's
answer agrees with the drafted key). All datasets are cut to the same size before training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arte_edge.backends.base import ChatModel, Completion, SamplingParams
from arte_edge.errors import ArteError
from arte_edge.progress import log, progress
from arte_edge.rundir import JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl, stable_id
from arte_edge.stages.context import StageContext
from arte_edge.tasks.base import Item, Task


def example_from(task: Task, question: str, key: str, completion: str, record_id: str,
                 meta: dict[str, Any]) -> dict[str, Any] | None:
    """A training example when ``completion`` answers ``question`` with ``key``; None otherwise."""
    from arte_edge.methods.common import training_example, training_target

    item = Item(id=f"{task.name}/arte-{record_id}", question=question, answer=key, source_split="synthetic")
    check = task.check(item, completion)
    if not check.correct:
        return None
    return training_example(task, item, training_target(task, completion, check), record_id, meta)


def regenerate(teacher: ChatModel, task: Task, seeds: Sequence[Item], ctx: StageContext, name: str,
               path: Path) -> list[dict[str, Any]]:
    """Step 5 with one teacher: draft (T=question_temperature), answer with the plain prompt (T=0), check.

    Rows (kept or not) go to ``path`` durably; attempt i uses the same sampling seed for every teacher.
    Attempts run in windows of ``TEACHER_WINDOW``: one batched call drafts the window, one answers its
    parseable drafts. Stops at ``generate.n_examples`` kept or ``generate.max_attempts`` tried; rows past the
    n-th kept example of the last window are not recorded, so the file holds what a one-at-a-time run writes.
    """
    from arte_edge.stages.align import TEACHER_WINDOW

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


def _regen_id(ctx: StageContext, name: str, index: int) -> str:
    return stable_id("arte/regen", name, index, ctx.recipe.seed, ctx.recipe.arte.question_temperature,
                     ctx.recipe.generate.max_tokens)


def _regenerate_window(teacher: ChatModel, task: Task, seeds: Sequence[Item], ctx: StageContext, name: str,
                       indices: Sequence[int]) -> list[dict[str, Any]]:
    """Rows for attempts ``indices``: their drafts in one batched call, then their answers in another."""
    from arte_edge.methods.common import chat_seeded
    from arte_edge.methods.standard import read_draft
    from arte_edge.stages.align import cost_of, draft_prompt, rationale_prompt

    cfg, gen, seed = ctx.recipe.arte, ctx.recipe.generate, ctx.recipe.seed
    drafts = chat_seeded(teacher, [draft_prompt(task, seeds)] * len(indices),
                         SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.question_temperature),
                         [seed * 100_003 + 50_000 + i for i in indices])
    read = {i: read_draft(task, d.text, _regen_id(ctx, name, i)) if d.ok else (None, f"teacher error: {d.error}")
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
            meta = {"method": "arte", "dataset": name, "teacher": ctx.recipe.teacher.model, **cost_of(*calls),
                    "drafted_key": item.answer}
            example = example_from(task, item.question, item.answer, answer.text, rid, meta) if answer.ok else None
            reason = "" if example else _rationale_rejection(task, answer)
        rows.append({"id": rid, "index": i, "example": example, "reason": reason, **cost_of(*calls)})
    return rows


def _rationale_rejection(task: Task, answer: Completion) -> str:
    """Why a regenerated rationale was not kept, with the fix when it is a token budget."""
    if not answer.ok:
        return f"teacher error: {answer.error}"
    if task.extract_answer(answer.text) is None:
        if answer.finish_reason == "length":
            return "rationale cut at generate.max_tokens before its answer line (raise generate.max_tokens)"
        return "rationale without an answer line"
    return "rationale disagrees with the drafted key"


def select_dataset(ctx: StageContext, name: str, teacher: ChatModel, path: Path) -> list[dict[str, Any]]:
    """``arte.alignment: select``: examples from the elicited drafts, chosen by the student's scores."""
    from arte_edge.stages.align import cost_of, question_scores, rationale_prompt

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
            c = teacher.chat(rationale_prompt(task, d["question"], ctx.recipe.arte),
                             SamplingParams(max_tokens=gen.max_tokens, temperature=0.0, seed=ctx.recipe.seed))
            cost = cost_of(c)
            example = example_from(task, d["question"], d["key"], c.text, rid, {**meta, **cost}) if c.ok else None
        else:  # best-scored rationale that agrees with the key (already paid for in elicitation)
            cost = cost_of()
            mine = sorted((r for r in rationales if r["draft_id"] == d["id"] and r["id"] in scores),
                          key=lambda r: (-scores[r["id"]], r["style"]))
            best = next((r for r in mine if r["agrees_with_key"]), None)
            example = example_from(task, d["question"], d["key"], best["text"], rid, {**meta, **cost}) if best else None
        row = {"id": rid, "index": i, "example": example, "reason": "" if example else "no checked rationale", **cost}
        out.write_batch([row])
        done[rid] = row
    return sorted(done.values(), key=lambda r: r["index"])


def _open_teacher(ctx: StageContext, name: str, aligned: dict[str, Any]) -> ChatModel:
    """The teacher that writes dataset ``name``: the original one, or its DPO-aligned version."""
    from arte_edge.backends import open_chat_model

    recipe = ctx.recipe
    if name == "unaligned" or recipe.arte.alignment == "select":
        return open_chat_model(recipe.teacher, seed=recipe.seed)
    info = aligned["teachers"][name]
    if "gguf" in info:
        from arte_edge.backends.llamacpp import LlamaCppChat

        return LlamaCppChat(info["gguf"], threads=recipe.teacher.threads, n_ctx=recipe.teacher.n_ctx,
                            seed=recipe.seed, name=f"{recipe.teacher.model}+arte-{name}")
    from arte_edge.backends.hf import HFChat

    return HFChat(info["merged"], threads=recipe.teacher.threads, name=f"{recipe.teacher.model}+arte-{name}")


def build_dataset(ctx: StageContext, name: str, aligned: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (kept and dropped) of one dataset, produced or resumed under ``align/datasets/<name>.jsonl``."""
    path = ctx.run.path("align", "datasets", f"{name}.jsonl")
    teacher = _open_teacher(ctx, name, aligned)
    try:
        if ctx.recipe.arte.alignment == "select" and name != "unaligned":
            return select_dataset(ctx, name, teacher, path)
        return regenerate(teacher, ctx.task, ctx.split("seeds"), ctx, name, path)
    finally:
        teacher.close()


def _dataset_cost(ctx: StageContext, name: str, rows: list[dict[str, Any]], aligned: dict[str, Any]) -> dict[str, int]:
    """Teacher cost of a dataset: its own calls plus elicitation for every student-aware dataset."""
    own = {k: sum(r.get(k, 0) for r in rows) for k in ("teacher_calls", "prompt_tokens", "completion_tokens")}
    if name == "unaligned":
        return own
    return {"teacher_calls": own["teacher_calls"] + aligned["teacher_calls"],
            "prompt_tokens": own["prompt_tokens"] + aligned["teacher_prompt_tokens"],
            "completion_tokens": own["completion_tokens"] + aligned["teacher_completion_tokens"]}


def write_datasets(ctx: StageContext, rows_by_name: dict[str, list[dict[str, Any]]], main: str,
                   aligned: dict[str, Any]) -> dict[str, Any]:
    """Write the main dataset and the variants, all cut to the same number of examples."""
    kept = {n: [r["example"] for r in rows if r["example"] is not None] for n, rows in rows_by_name.items()}
    n = min(len(v) for v in kept.values())
    if n == 0:
        empty = [k for k, v in kept.items() if not v]
        where = ctx.run.root / "align" / "datasets"
        raise ArteError(f"generate: dataset(s) {', '.join(empty)} have no checked example (see {where}); "
                        "raise generate.max_attempts or use a stronger teacher")
    info = {}
    for name, examples in kept.items():
        target = ctx.run.examples_path if name == main else ctx.run.path("data", "variants", name, "examples.jsonl")
        atomic_write_text(target, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples[:n]))
        cost = _dataset_cost(ctx, name, rows_by_name[name], aligned)
        if name != main:
            atomic_write_json(target.parent / "cost.json", cost)
        info[name] = {"n_examples": n, "n_checked": len(examples), "attempts": len(rows_by_name[name]), **cost}
    if len({len(v) for v in kept.values()}) > 1:
        log(f"generate: datasets cut to {n} examples each (checked: "
            f"{', '.join(f'{k}={len(v)}' for k, v in kept.items())})")
    return info


def generate_datasets(ctx: StageContext) -> dict[str, Any]:
    """ARTE steps 1–5: align the teacher (if not done yet), then write the main dataset and the variants."""
    from arte_edge.stages.align import ensure_aligned, write_report_section

    cfg = ctx.recipe.arte
    aligned = ensure_aligned(ctx)
    names = list(dict.fromkeys([cfg.ablation, *cfg.variants]))
    rows_by_name = {}
    import time

    timings_path = ctx.run.path("align", "timings.json")
    for name in names:
        start = time.perf_counter()
        rows_by_name[name] = build_dataset(ctx, name, aligned)
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        timings[f"5_regenerate_{name}"] = round(timings.get(f"5_regenerate_{name}", 0.0)
                                                + time.perf_counter() - start, 2)
        atomic_write_json(timings_path, timings)
    info = write_datasets(ctx, rows_by_name, cfg.ablation, aligned)
    aligned["seconds"] = json.loads(timings_path.read_text())
    write_report_section(ctx, aligned, info)
    main = info[cfg.ablation]
    return {"n_examples": main["n_examples"], "teacher_calls": main["teacher_calls"],
            "teacher_prompt_tokens": main["prompt_tokens"], "teacher_completion_tokens": main["completion_tokens"],
            "main_dataset": cfg.ablation, "datasets": info, "alignment": cfg.alignment}
