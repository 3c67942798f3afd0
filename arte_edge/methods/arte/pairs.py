"""ARTE step 4, the pairs: what DPO learns to prefer.

Question level: on the drafting prompt, chosen from the top and rejected from the bottom quantile of ŝ_q.
Rationale level: on the plain step-by-step prompt, each draft's best-ŝ_r rationale against its worst.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from arte_edge.backends.base import Message
from arte_edge.methods.arte.config import ArteConfig
from arte_edge.methods.arte.prompts import rationale_prompt
from arte_edge.rundir import stable_id
from arte_edge.tasks.base import Task


def question_pairs(drafts: Sequence[dict[str, Any]], q_scores: dict[str, float], n_pairs: int, quantile: float,
                   prompt: list[Message], seed: int) -> list[dict[str, Any]]:
    """Pairs (chosen from the top, rejected from the bottom ``quantile`` by ŝ_q) on the drafting prompt."""
    scored = sorted((d for d in drafts if d["id"] in q_scores), key=lambda d: (-q_scores[d["id"]], d["index"]))
    k = max(1, round(len(scored) * quantile))
    top, bottom = scored[:k], scored[-k:]
    combos = [(a, b) for a in top for b in bottom if q_scores[a["id"]] > q_scores[b["id"]]]
    random.Random(f"qpairs/{seed}").shuffle(combos)
    return [{"id": stable_id("qpair", a["id"], b["id"]), "kind": "question", "prompt": prompt,
             "chosen": [{"role": "assistant", "content": a["text"]}],
             "rejected": [{"role": "assistant", "content": b["text"]}],
             "chosen_score": q_scores[a["id"]], "rejected_score": q_scores[b["id"]]} for a, b in combos[:n_pairs]]


def rationale_pairs(task: Task, drafts: Sequence[dict[str, Any]], rationales: Sequence[dict[str, Any]],
                    scores: Sequence[dict[str, Any]], n_pairs: int, cfg: ArteConfig) -> list[dict[str, Any]]:
    """Per draft: best-ŝ_r rationale vs worst (only when they differ), on the plain step-by-step prompt.

    When there are more candidates than ``n_pairs``, the drafts with the largest score gap are kept.
    """
    score_of = {s["id"]: s["score"] for s in scores}
    by_draft: dict[str, list[dict[str, Any]]] = {}
    for r in rationales:
        if r["id"] in score_of:
            by_draft.setdefault(r["draft_id"], []).append(r)
    pairs = []
    for d in drafts:
        rs = sorted(by_draft.get(d["id"], []), key=lambda r: (-score_of[r["id"]], r["style"]))
        if len(rs) < 2 or score_of[rs[0]["id"]] <= score_of[rs[-1]["id"]]:
            continue
        best, worst = rs[0], rs[-1]
        pairs.append({"id": stable_id("rpair", best["id"], worst["id"]), "kind": "rationale",
                      "prompt": rationale_prompt(task, d["question"], cfg),
                      "chosen": [{"role": "assistant", "content": best["target"]}],
                      "rejected": [{"role": "assistant", "content": worst["target"]}],
                      "chosen_score": score_of[best["id"]], "rejected_score": score_of[worst["id"]]})
    pairs.sort(key=lambda p: -(p["chosen_score"] - p["rejected_score"]))
    return pairs[:n_pairs]
