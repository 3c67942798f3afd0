"""ARTE steps 1–4 in order, from the preference set to the DPO-aligned teachers (the ``align`` stage).

1. D_pref (:mod:`.dpref`): the most discriminating preference questions by a 2PL IRT fit.
2. Elicitation (:mod:`.elicitation`): the teacher drafts questions, then one rationale per reasoning style.
3. Preferences (:mod:`.preferences`): the student's one-shot accuracy on D_pref with each rationale as the demo.
4. Pairs (:mod:`.pairs`) and DPO (:mod:`.alignment`): question and rationale pairs, one DPO run per requested
   dataset (full / question-only / rationale-only), merged and exported to GGUF.

Everything lands in ``align/`` as JSONL/JSON; every loop writes through a durable appender keyed by
:func:`stable_id`, so a killed run resumes without losing or repeating work. ``arte-edge align`` runs this alone
(:func:`run_align`); generation calls :func:`ensure_aligned` itself (the aligned teacher writes the training data),
after which the ``align`` stage only summarises.
"""

from __future__ import annotations

import json
from typing import Any

from arte_edge.backends.base import ChatModel
from arte_edge.errors import ArteError
from arte_edge.methods.arte import students
from arte_edge.methods.arte.alignment import DPO_SETS, build_aligned_teacher, check_alignment_possible, needed_teachers
from arte_edge.methods.arte.dpref import preference_set
from arte_edge.methods.arte.elicitation import elicit_drafts, elicit_rationales
from arte_edge.methods.arte.files import StepTimer, write_jsonl
from arte_edge.methods.arte.fingerprint import retire_stale_steps
from arte_edge.methods.arte.pairs import question_pairs, rationale_pairs
from arte_edge.methods.arte.preferences import is_cut, question_scores, score_rationales, scoreable
from arte_edge.methods.arte.prompts import draft_prompt
from arte_edge.methods.arte.report import write_report_section
from arte_edge.progress import log
from arte_edge.runctx import RunContext
from arte_edge.rundir import atomic_write_json, read_jsonl
from arte_edge.tasks.decontam import HeldOut


def ensure_aligned(ctx: RunContext, teacher: ChatModel | None = None) -> dict[str, Any]:
    """Steps 1–4 (idempotent): D_pref, elicitation, scores, pairs, and one aligned teacher per needed dataset.

    ``teacher`` (the original one) may be passed in to share a loaded model with regeneration.
    Returns the summary written to ``align/summary.json``.
    """
    from arte_edge.backends import open_chat_model

    check_alignment_possible(ctx)
    cfg, recipe = ctx.method_config, ctx.recipe
    student = students.student_artifact(ctx)  # the one student file: IRT respondent (step 1) and ŝ_r (step 3)
    if moved := retire_stale_steps(ctx.run.root / "align", recipe, students.identity(student)):
        log(f"align: the recipe or the student artifact changed; moved {', '.join(moved)} to "
            f"{ctx.run.root / 'align' / 'stale'}, redoing them")
    timer = StepTimer(ctx.run.path("align", "timings.json"))
    dpref, dpref_info = preference_set(ctx, timer, student)
    own = teacher is None
    teacher = teacher or open_chat_model(recipe.teacher, seed=recipe.seed)
    try:
        with timer.step("2_elicit"):
            seeds = ctx.split("seeds")
            drafts = elicit_drafts(teacher, ctx.task, seeds, cfg, recipe.seed, ctx.run.path("align", "drafts.jsonl"),
                                   "elicit", HeldOut(ctx.split("eval")))
            usable = [d for d in drafts if d["ok"]]
            rationales = elicit_rationales(teacher, ctx.task, usable, cfg, recipe.seed,
                                           ctx.run.path("align", "rationales.jsonl"))
    finally:
        if own:
            teacher.close()
    if not usable:
        raise ArteError(f"align: the teacher wrote no parseable question draft ({len(drafts)} tried, "
                        f"see {ctx.run.path('align', 'drafts.jsonl')}); use a stronger teacher")
    scores_path = ctx.run.path("align", "scores.jsonl")
    atomic_write_json(ctx.run.path("align", "student.json"), student)
    with timer.step("3_preferences"):
        if len(read_jsonl(scores_path)) < sum(scoreable(r) for r in rationales):
            scorer = students.open_student(ctx, student)
            try:
                score_rationales(scorer, ctx.task, usable, rationales, dpref, scores_path)
            finally:
                scorer.close()
        scores = read_jsonl(scores_path)
    q_scores = question_scores(scores)
    qp, q_small = question_pairs(usable, q_scores, cfg.question_pairs, cfg.quantile, draft_prompt(ctx.task, seeds),
                                 recipe.seed, cfg.min_score_gap)
    rp, r_small = rationale_pairs(ctx.task, usable, rationales, scores, cfg.rationale_pairs, cfg)
    write_jsonl(ctx.run.path("align", "pairs.jsonl"), qp + rp)
    teachers: dict[str, Any] = {}
    if cfg.alignment == "dpo":
        for name in needed_teachers(cfg):
            with timer.step(f"4_dpo_{name}"):
                chosen = [p for p in qp + rp if p["kind"] in DPO_SETS[name]]
                teachers[name] = build_aligned_teacher(ctx, name, chosen)
    summary = {
        "alignment": cfg.alignment, "dpref": {k: v for k, v in dpref_info.items() if k != "items"},
        "student": {**student, "irt_respondent": bool(dpref_info.get("student", {}).get("respondents"))},
        "n_drafts_tried": len(drafts), "n_drafts_usable": len(usable),
        "n_drafts_unparseable": len(drafts) - len(usable), "n_rationales": len(rationales),
        "n_rationales_unparseable": sum(not r["ok"] for r in rationales),
        "n_rationales_cut": sum(is_cut(r) for r in rationales),
        "n_rationales_scored": sum(scoreable(r) for r in rationales),
        "n_rationales_scored_without_answer": sum(scoreable(r) and not r["ok"] for r in rationales),
        "n_rationales_agreeing_with_key": sum(r["agrees_with_key"] for r in rationales),
        "mean_rationale_score": round(sum(s["score"] for s in scores) / max(1, len(scores)), 4),
        "question_score_range": [min(q_scores.values(), default=0), max(q_scores.values(), default=0)],
        "n_question_pairs": len(qp), "n_rationale_pairs": len(rp), "min_score_gap": cfg.min_score_gap,
        "n_question_pairs_small_gap": q_small, "n_rationale_pairs_small_gap": r_small,
        "n_rationale_pairs_cut_rejected": sum(p["rejected_cut"] for p in rp),
        "n_rationale_pairs_cut_chosen": sum(p["chosen_cut"] for p in rp),
        "teacher_calls": sum(d["teacher_calls"] for d in drafts) + sum(r["teacher_calls"] for r in rationales),
        "teacher_prompt_tokens": sum(d["prompt_tokens"] for d in drafts) + sum(r["prompt_tokens"] for r in rationales),
        "teacher_completion_tokens": sum(d["completion_tokens"] for d in drafts)
        + sum(r["completion_tokens"] for r in rationales),
        "teachers": {n: {k: v for k, v in t.items() if k != "metrics"} | {"dpo": _short_metrics(t["metrics"])}
                     for n, t in teachers.items()},
        "seconds": timer.seconds,
    }
    atomic_write_json(ctx.run.path("align", "summary.json"), summary)
    return summary


def _short_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "log"}


def run_align(ctx: RunContext) -> dict[str, Any]:
    """The ``align`` stage: steps 1–4 (a no-op apart from the summary when generation already ran them)."""
    summary = ensure_aligned(ctx)
    sections = ctx.run.root / "report" / "sections" / "arte.json"
    datasets = json.loads(sections.read_text()).get("datasets") if sections.exists() else None
    write_report_section(ctx, summary, datasets)
    return {"summary": "align/summary.json", "n_question_pairs": summary["n_question_pairs"],
            "n_rationale_pairs": summary["n_rationale_pairs"], "alignment": summary["alignment"],
            "student": summary["student"]["kind"] if summary["student"] else None}
