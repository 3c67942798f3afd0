"""ARTE step 4, the pairs: what DPO learns to prefer.

Question level: on the drafting prompt, chosen from the top and rejected from the bottom quantile of ŝ_q.
Rationale level: on the plain step-by-step prompt, each draft's best-ŝ_r rationale against its worst (a rationale
cut before its answer line is scored too, and is usually the worst). A candidate pair whose scores differ by less
than ``arte.min_score_gap`` (a fraction of D_pref) forms no pair and is counted: one D_pref question's difference is
one greedy answer flipping, not a preference.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from arte_edge.backends.base import Message
from arte_edge.methods.arte.config import ArteConfig
from arte_edge.methods.arte.preferences import demonstration, is_cut
from arte_edge.methods.arte.prompts import rationale_prompt
from arte_edge.rundir import stable_id
from arte_edge.tasks.base import Task

_TOLERANCE = 1e-9  # scores are fractions of D_pref: 0.3 - 0.15 must count as a gap of 0.15


def gap_verdict(chosen: float, rejected: float, min_gap: float) -> str:
    """``"pair"`` when ``chosen`` beats ``rejected`` by at least ``min_gap``, ``"small"`` when it beats it by less,
    ``"none"`` when it does not beat it."""
    gap = chosen - rejected
    if gap <= _TOLERANCE:
        return "none"
    return "pair" if gap >= min_gap - _TOLERANCE else "small"


def question_pairs(drafts: Sequence[dict[str, Any]], q_scores: dict[str, float], n_pairs: int, quantile: float,
                   prompt: list[Message], seed: int, min_gap: float = 0.0) -> tuple[list[dict[str, Any]], int]:
    """Pairs (chosen from the top, rejected from the bottom ``quantile`` by ŝ_q) on the drafting prompt, and the
    number of (top, bottom) candidates skipped because ŝ_q differs by less than ``min_gap`` (but differs)."""
    scored = sorted((d for d in drafts if d["id"] in q_scores), key=lambda d: (-q_scores[d["id"]], d["index"]))
    k = max(1, round(len(scored) * quantile))
    top, bottom = scored[:k], scored[-k:]
    verdicts = [(a, b, gap_verdict(q_scores[a["id"]], q_scores[b["id"]], min_gap)) for a in top for b in bottom]
    combos = [(a, b) for a, b, v in verdicts if v == "pair"]
    random.Random(f"qpairs/{seed}").shuffle(combos)
    pairs = [{"id": stable_id("qpair", a["id"], b["id"]), "kind": "question", "prompt": prompt,
              "chosen": [{"role": "assistant", "content": a["text"]}],
              "rejected": [{"role": "assistant", "content": b["text"]}],
              "chosen_score": q_scores[a["id"]], "rejected_score": q_scores[b["id"]]} for a, b in combos[:n_pairs]]
    return pairs, sum(v == "small" for _, _, v in verdicts)


def rationale_pairs(task: Task, drafts: Sequence[dict[str, Any]], rationales: Sequence[dict[str, Any]],
                    scores: Sequence[dict[str, Any]], n_pairs: int,
                    cfg: ArteConfig) -> tuple[list[dict[str, Any]], int]:
    """Per draft: best-ŝ_r rationale vs worst, on the plain step-by-step prompt, when they differ by at least
    ``cfg.min_score_gap``; returns the pairs and the number of drafts skipped for a smaller (non-zero) gap.

    Every scored rationale takes part, one cut before its answer line too (its text as written is the completion).
    When there are more candidates than ``n_pairs``, the drafts with the largest score gap are kept.
    """
    score_of = {s["id"]: s["score"] for s in scores}
    by_draft: dict[str, list[dict[str, Any]]] = {}
    for r in rationales:
        if r["id"] in score_of:
            by_draft.setdefault(r["draft_id"], []).append(r)
    pairs, small = [], 0
    for d in drafts:
        rs = sorted(by_draft.get(d["id"], []), key=lambda r: (-score_of[r["id"]], r["style"]))
        verdict = gap_verdict(score_of[rs[0]["id"]], score_of[rs[-1]["id"]], cfg.min_score_gap) \
            if len(rs) >= 2 else "none"
        small += verdict == "small"
        if verdict != "pair":
            continue
        best, worst = rs[0], rs[-1]
        pairs.append({"id": stable_id("rpair", best["id"], worst["id"]), "kind": "rationale",
                      "prompt": rationale_prompt(task, d["question"], cfg),
                      "chosen": [{"role": "assistant", "content": demonstration(best)}],
                      "rejected": [{"role": "assistant", "content": demonstration(worst)}],
                      "chosen_score": score_of[best["id"]], "rejected_score": score_of[worst["id"]],
                      "chosen_cut": is_cut(best), "rejected_cut": is_cut(worst)})
    pairs.sort(key=lambda p: -(p["chosen_score"] - p["rejected_score"]))
    return pairs[:n_pairs], small
