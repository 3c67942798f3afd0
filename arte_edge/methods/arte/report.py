"""ARTE's section of the report: ``report/sections/arte.md`` and ``arte.json`` (D_pref, counts, DPO metrics,
the student that answered D_pref, the datasets written and the wall time of every step)."""

from __future__ import annotations

import json
from typing import Any

from arte_edge.runctx import RunContext
from arte_edge.rundir import atomic_write_json, atomic_write_text


def write_report_section(ctx: RunContext, summary: dict[str, Any], datasets: dict[str, Any] | None = None) -> None:
    """``report/sections/arte.md`` and ``arte.json``: D_pref, counts, DPO metrics, student, wall times."""
    timings = ctx.run.path("align", "timings.json")
    if timings.exists():  # every step's time, regeneration included (steps 1-4 alone when only `align` ran)
        summary = {**summary, "seconds": json.loads(timings.read_text())}
    data = {"align": summary, "datasets": datasets or {}}
    atomic_write_json(ctx.run.path("report", "sections", "arte.json"), data)
    d = summary["dpref"]
    lines = ["## ARTE: aligning the teacher with the student's preferences", "",
             f"- D_pref: {len(d['selected'])} of {d['n_candidates']} preference questions, selected by "
             f"**{d['method']}**" + (f" (2PL IRT over {d['n_respondents']} respondents: "
                                     f"{', '.join(d['respondents'])})" if d["method"] == "irt" else "") + ".",
             f"- Student answering D_pref{student_role(summary['student'])}: {student_line(summary['student'])}.",
             f"- Drafts: {summary['n_drafts_usable']} usable of {summary['n_drafts_tried']} "
             f"({summary['n_drafts_unparseable']} unusable: no key, no question or no choices; dropped); "
             f"rationales: {summary['n_rationales']} "
             f"({summary['n_rationales_unparseable']} without a parseable answer, "
             f"{summary.get('n_rationales_cut', 0)} of them cut at arte.max_tokens; "
             f"{summary['n_rationales_agreeing_with_key']} agree with the drafted key)." + scored_line(summary),
             f"- Mean ŝ_r {summary['mean_rationale_score']:.3f}; ŝ_q range {summary['question_score_range']}.",
             f"- Pairs: {summary['n_question_pairs']} question-level, {summary['n_rationale_pairs']} rationale-level; "
             f"alignment: **{summary['alignment']}**." + gap_line(summary), ""]
    if summary["teachers"]:
        lines += ["| aligned teacher | pairs | steps | loss | reward margin (last) | reward accuracy (last) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, t in summary["teachers"].items():
            m = t["dpo"]
            lines.append(f"| {name} | {m['n_pairs']} | {m['steps']} | {m['train_loss']} | "
                         f"{m.get('rewards_margins_last', '–')} | {m.get('rewards_accuracies_last', '–')} |")
        lines.append("")
    if datasets:
        lines += ["| dataset | examples (after the cut) | checked examples | drafts tried | teacher calls |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {n} | {v['n_examples']} | {v.get('n_checked', '–')} | {v.get('attempts', '–')} | "
                  f"{v['teacher_calls']} |" for n, v in datasets.items()]
        lines += ["", "`unaligned` is standard distillation: the same teacher, drafting prompt, seeds and checks, "
                  "without DPO; its teacher calls exclude elicitation. Every dataset is cut to the same size.", ""]
    lines += ["| step | seconds |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in summary["seconds"].items()]
    atomic_write_text(ctx.run.path("report", "sections", "arte.md"), "\n".join(lines) + "\n")


def student_role(student: dict[str, Any]) -> str:
    """What the student artifact answered for: the IRT fit and ŝ_r, or ŝ_r alone (D_pref picked without it)."""
    return " (IRT respondent and ŝ_r, one artifact)" if student.get("irt_respondent") else " (ŝ_r)"


def student_line(student: dict[str, Any]) -> str:
    """The student artifact: kind, path and content (sha256 of a GGUF, file count of an HF folder)."""
    content = f"sha256 {student['sha256']}" if "sha256" in student else \
        f"{len(student['files'])} files by size and mtime" if "files" in student else "content not recorded"
    return f"**{student['kind']}** `{student['path']}` ({content})"


def scored_line(summary: dict[str, Any]) -> str:
    """How many rationales the student scored, those without an answer line (cut ones) included."""
    if "n_rationales_scored" not in summary:  # a summary written before every rationale was scored
        return " Rationales without an answer were dropped."
    return (f" The student scored {summary['n_rationales_scored']}, {summary['n_rationales_scored_without_answer']} "
            "of them as a demonstration without an answer line; only checked rationales can become training data.")


def gap_line(summary: dict[str, Any]) -> str:
    """Candidates skipped for a score gap below ``arte.min_score_gap``, and pairs with a cut side."""
    if "min_score_gap" not in summary:
        return ""
    return (f" Minimum score gap {summary['min_score_gap']:g} of D_pref: {summary['n_question_pairs_small_gap']} "
            f"question-pair candidates and {summary['n_rationale_pairs_small_gap']} rationale pairs skipped for a "
            f"smaller gap; rationale pairs with a cut side: {summary['n_rationale_pairs_cut_rejected']} rejected, "
            f"{summary['n_rationale_pairs_cut_chosen']} chosen.")
