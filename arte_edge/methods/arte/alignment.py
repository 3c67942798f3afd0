"""ARTE step 4, the aligned teachers: DPO on the pairs, merge, and export to GGUF for a llama.cpp teacher.

One aligned teacher per dataset that needs one (``full``: question + rationale pairs; ``question-only``,
``rationale-only``: one level), each in ``align/teachers/<name>/`` (adapter, merged model, GGUF, ``metrics.json``),
every part resumable on its own. The DPO trainer is :mod:`arte_edge.training.dpo`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.methods.arte.config import ArteConfig, dpo_settings
from arte_edge.progress import log
from arte_edge.runctx import RunContext

DPO_SETS = {"full": ("question", "rationale"), "question-only": ("question",), "rationale-only": ("rationale",)}


def check_alignment_possible(ctx: RunContext) -> None:
    """DPO needs the teacher's weights: refuse an API-only teacher up front with the fix."""
    if ctx.method_config.alignment == "dpo" and ctx.recipe.teacher.backend == "openai":
        raise ArteError("arte.alignment: 'dpo' needs local teacher weights but teacher.backend is openai; "
                        "set arte.alignment: select (keep the student-preferred drafts and rationales) or use a "
                        "llama_cpp/transformers teacher")


def needed_teachers(cfg: ArteConfig) -> list[str]:
    """The aligned teachers the requested datasets need (the unaligned one needs none)."""
    wanted = [cfg.ablation, *cfg.variants]
    return [n for n in DPO_SETS if n in wanted]


def aligned_teacher_dir(ctx: RunContext, name: str) -> Path:
    """``align/teachers/<name>/``: adapter, merged model, GGUF and metrics of one aligned teacher."""
    return ctx.run.path("align", "teachers", name, ".keep").parent


def build_aligned_teacher(ctx: RunContext, name: str, pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """DPO on ``pairs``, merge (LoRA), and export to GGUF for llama.cpp teachers; resumable per step."""
    from arte_edge import models
    from arte_edge.training.dpo import train_dpo
    from arte_edge.training.merge import materialize

    cfg, recipe = ctx.method_config, ctx.recipe
    dpo = dpo_settings(cfg.dpo, recipe.train)
    base = models.hf_folder(recipe.teacher.model)
    work = aligned_teacher_dir(ctx, name)
    adapter, merged = work / "adapter", work / "merged"
    if not (work / "metrics.json").exists():
        if not pairs:
            raise ArteError("align: no DPO pairs (every rationale scored the same); raise arte.n_drafts or "
                            "splits.preference, or use arte.alignment: select")
        train_dpo(base, pairs, adapter, dpo, recipe.seed)
    if not (merged / "config.json").exists():
        materialize(base, adapter, merged, dpo.threads)
    out: dict[str, Any] = {"merged": str(merged), "metrics": json.loads((work / "metrics.json").read_text())}
    if recipe.teacher.backend == "llama_cpp":
        out["gguf"] = str(export_teacher(merged, work, cfg, dpo.threads))
    return out


def unaligned_teacher(ctx: RunContext) -> dict[str, Any]:
    """The original teacher through the aligned teachers' own path: its dequantised fp32 HF folder (what DPO
    starts from; merging a zero adapter changes nothing) exported by :func:`export_teacher` to the same GGUF type,
    in ``align/teachers/unaligned/``. So the unaligned and aligned teachers differ only by DPO, not by runtime
    numerics (the bundled GGUF is another quantisation)."""
    from arte_edge import models

    cfg, recipe = ctx.method_config, ctx.recipe
    base = models.hf_folder(recipe.teacher.model)
    out: dict[str, Any] = {"merged": str(base)}
    if recipe.teacher.backend == "llama_cpp":
        out["gguf"] = str(export_teacher(base, aligned_teacher_dir(ctx, "unaligned"), cfg,
                                         dpo_settings(cfg.dpo, recipe.train).threads))
    return out


def export_teacher(merged: Path, work: Path, cfg: ArteConfig, threads: int) -> Path:
    """The aligned teacher as a verified GGUF of ``cfg.teacher_quant`` (fast generation through llama.cpp)."""
    from arte_edge.export.gguf import artifact_name, export_gguf
    from arte_edge.formats import normalize_qtype

    final = work / artifact_name("teacher", normalize_qtype(cfg.teacher_quant))
    if not final.exists():
        export_gguf(merged, work, [cfg.teacher_quant], "teacher", progress=log, verify=cfg.verify_export,
                    threads=threads)
    return final
