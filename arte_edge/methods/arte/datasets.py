"""ARTE's datasets: every requested one produced by its teacher, cut to the same size and written as the run's
training data (main dataset in ``data/examples.jsonl``, comparison ones in ``data/variants/<name>/``).

Datasets (same drafting prompt, same sampling seeds, so they differ only in what ARTE changes):
- ``full`` (ARTE): teacher DPO-aligned on question + rationale pairs; questions at T=1, rationales at T=0.
- ``question-only`` / ``rationale-only``: teachers aligned on one pair level only (ablations).
- ``unaligned``: the original teacher through the same drafting and rationale prompts (standard distillation
  from the seeds, the paper's "unaligned teacher").
With ``arte.alignment: select`` (teachers behind an API) nothing is trained: ``full`` keeps the top-ŝ_q drafts
with their best-ŝ_r rationale, ``question-only`` the top drafts with the plain T=0 rationale, ``rationale-only``
the drafts in order with their best rationale. Every kept example passed the task checker (the rationale's
answer agrees with the drafted key). All datasets are cut to the same size before training.

Stage order: the pipeline runs ``generate`` before ``align``, but ARTE's data comes from the *aligned* teacher.
So :func:`generate_datasets` runs steps 1–4 itself (:func:`~arte_edge.methods.arte.align.ensure_aligned`,
idempotent: a no-op when ``align/`` already holds them, e.g. after ``arte-edge align``), then step 5. The later
``align`` stage only rewrites the summary. No stage reordering is needed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from arte_edge.backends.base import ChatModel
from arte_edge.errors import ArteError
from arte_edge.methods.arte.align import ensure_aligned
from arte_edge.methods.arte.alignment import unaligned_teacher
from arte_edge.methods.arte.files import write_jsonl
from arte_edge.methods.arte.regeneration import regenerate, select_dataset
from arte_edge.methods.arte.report import write_report_section
from arte_edge.progress import log
from arte_edge.runctx import RunContext
from arte_edge.rundir import atomic_write_json, read_jsonl
from arte_edge.tasks.decontam import count_contaminated


def _open_teacher(ctx: RunContext, name: str, aligned: dict[str, Any]) -> ChatModel:
    """The teacher that writes dataset ``name``: the original one or its DPO-aligned version, both through the same
    fp32 → GGUF export (so datasets differ by DPO only, not by the runtime's numerics)."""
    from arte_edge.backends import open_chat_model

    recipe = ctx.recipe
    if ctx.method_config.alignment == "select":  # one teacher for every dataset
        return open_chat_model(recipe.teacher, seed=recipe.seed)
    info = unaligned_teacher(ctx) if name == "unaligned" else aligned["teachers"][name]
    if "gguf" in info:
        from arte_edge.backends.llamacpp import LlamaCppChat

        return LlamaCppChat(info["gguf"], threads=recipe.teacher.threads, n_ctx=recipe.teacher.n_ctx,
                            seed=recipe.seed, name=f"{recipe.teacher.model}+arte-{name}")
    from arte_edge.backends.hf import HFChat

    return HFChat(info["merged"], threads=recipe.teacher.threads, name=f"{recipe.teacher.model}+arte-{name}")


def build_dataset(ctx: RunContext, name: str, aligned: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (kept and dropped) of one dataset, produced or resumed under ``align/datasets/<name>.jsonl``."""
    path = ctx.run.path("align", "datasets", f"{name}.jsonl")
    teacher = _open_teacher(ctx, name, aligned)
    try:
        if ctx.method_config.alignment == "select" and name != "unaligned":
            return select_dataset(ctx, name, teacher, path)
        return regenerate(teacher, ctx.task, ctx.split("seeds"), ctx, name, path)
    finally:
        teacher.close()


def _dataset_cost(ctx: RunContext, name: str, rows: list[dict[str, Any]], aligned: dict[str, Any]) -> dict[str, int]:
    """Teacher cost of a dataset: its own calls plus elicitation for every student-aware dataset."""
    own = {k: sum(r.get(k, 0) for r in rows) for k in ("teacher_calls", "prompt_tokens", "completion_tokens")}
    if name == "unaligned":
        return own
    return {"teacher_calls": own["teacher_calls"] + aligned["teacher_calls"],
            "prompt_tokens": own["prompt_tokens"] + aligned["teacher_prompt_tokens"],
            "completion_tokens": own["completion_tokens"] + aligned["teacher_completion_tokens"]}


def write_datasets(ctx: RunContext, rows_by_name: dict[str, list[dict[str, Any]]], main: str,
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
        write_jsonl(target, examples[:n])
        cost = _dataset_cost(ctx, name, rows_by_name[name], aligned)
        if name != main:
            atomic_write_json(target.parent / "cost.json", cost)
        info[name] = {"n_examples": n, "n_checked": len(examples), "attempts": len(rows_by_name[name]),
                      "n_contaminated": count_contaminated(rows_by_name[name]), **cost}
    if len({len(v) for v in kept.values()}) > 1:
        log(f"generate: datasets cut to {n} examples each (checked: "
            f"{', '.join(f'{k}={len(v)}' for k, v in kept.items())})")
    return info


def generate_datasets(ctx: RunContext) -> dict[str, Any]:
    """ARTE steps 1–5: align the teacher (if not done yet), then write the main dataset and the variants."""
    cfg = ctx.method_config
    aligned = ensure_aligned(ctx)
    names = list(dict.fromkeys([cfg.ablation, *cfg.variants]))
    rows_by_name = {}
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
            "main_dataset": cfg.ablation, "datasets": info, "alignment": cfg.alignment,
            "n_contaminated": sum(d["n_contaminated"] for d in info.values())
            + count_contaminated(read_jsonl(ctx.run.path("align", "drafts.jsonl")))}
