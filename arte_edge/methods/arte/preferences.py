"""ARTE step 3: the student's preferences.

ŝ_r = fraction of D_pref the student answers correctly (greedy) with (q, r) as the one-shot demonstration;
ŝ_q = mean ŝ_r of the question's rationales. Every rationale the teacher wrote is scored (the paper): one cut at
``arte.max_tokens`` or ending without a parseable answer line is a demonstration without an answer line, and
usually a poor one, so it tends to be the rejected side of a pair. Only a failed teacher call (no text) is not
scored. Which student answers, and in which artifact, is :mod:`arte_edge.methods.arte.students`; how it answers
fast is :mod:`arte_edge.methods.arte.scorer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.methods.arte.files import durable_map
from arte_edge.methods.arte.prompts import shot_prefix
from arte_edge.methods.common import rationale_of
from arte_edge.progress import progress
from arte_edge.tasks.base import Item, Task

if TYPE_CHECKING:
    from arte_edge.methods.arte.scorer import DemoScorer


def scoreable(rationale: dict[str, Any]) -> bool:
    """Whether the student scores ``rationale``: every one the teacher wrote (cut or without an answer line too),
    not a failed teacher call."""
    return bool(rationale["ok"] or (not rationale.get("error") and rationale.get("text", "").strip()))


def is_cut(rationale: dict[str, Any]) -> bool:
    """A rationale cut at ``arte.max_tokens`` before its answer line."""
    return not rationale["ok"] and rationale.get("finish_reason") == "length"


def demonstration(rationale: dict[str, Any]) -> str:
    """The assistant turn ``rationale`` gives as a demonstration (and as a DPO completion): its training target
    when it has an answer line, else its text as written (cut or unfinished: no answer line)."""
    return rationale["target"] if rationale["ok"] else rationale_of(rationale["text"])


def score_rationales(scorer: DemoScorer, task: Task, drafts: Sequence[dict[str, Any]],
                     rationales: Sequence[dict[str, Any]], dpref: Sequence[Item], path: Path) -> list[dict[str, Any]]:
    """ŝ_r per :func:`scoreable` rationale: mean correctness of the student on D_pref with (q, r) as the one shot
    (r as :func:`demonstration`: a cut rationale is a demonstration without an answer line)."""
    done, out = durable_map(path)
    question_of = {d["id"]: d["question"] for d in drafts}
    usable = [r for r in rationales if scoreable(r)]
    dpref_prompts = [task.user_prompt(i) for i in dpref]
    with progress(f"align: student scores ({scorer.name}, |D_pref|={len(dpref)})", len(usable)) as advance:
        advance(sum(r["id"] in done for r in usable))
        for r in usable:
            if r["id"] in done:
                continue
            prefix = shot_prefix(task, [(question_of[r["draft_id"]], demonstration(r))])
            texts = scorer.answer(prefix, dpref_prompts)
            flags = [task.check(item, text).correct for item, text in zip(dpref, texts, strict=True)]
            row = {"id": r["id"], "draft_id": r["draft_id"], "style": r["style"], "score": sum(flags) / len(flags),
                   "answer_line": bool(r["ok"]), "cut": is_cut(r),
                   "correct": dict(zip([i.id for i in dpref], flags, strict=True))}
            out.write_batch([row])
            done[r["id"]] = row
            advance(1)
    return [done[r["id"]] for r in usable]


def question_scores(scores: Sequence[dict[str, Any]]) -> dict[str, float]:
    """ŝ_q: the mean ŝ_r of each draft's scored rationales."""
    by_draft: dict[str, list[float]] = {}
    for s in scores:
        by_draft.setdefault(s["draft_id"], []).append(s["score"])
    return {d: sum(v) / len(v) for d, v in by_draft.items()}
