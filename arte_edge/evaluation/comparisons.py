"""Arms of a comparison against a reference arm, on the same held-out items, with honest statistics.

For each arm (the method's main student and each variant) against the reference (standard distillation when the
method has such an arm, else the untrained student): the accuracy difference with a paired bootstrap 95% interval,
the exact McNemar p-value and that p adjusted by Holm over the whole family of comparisons, and the smallest
difference this many items could have detected at 80% power (given the discordance seen). Rows are paired by item
id from ``eval/<artifact>.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arte_edge.rundir import RunDir, read_jsonl
from arte_edge.stats import holm, paired_comparison


def item_flags(run: RunDir, artifact: str) -> dict[str, bool]:
    """``{item_id: correct}`` of one scored artifact (empty when it was not scored)."""
    path = run.eval_rows_path(artifact)
    return {r["item_id"]: bool(r["correct"]) for r in read_jsonl(path)} if path.exists() else {}


def compare_arms(run: RunDir, arms: Sequence[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """One comparison per arm other than ``reference`` (arms: dicts with ``label``, ``artifact``, ``teacher_calls``).

    Holm's adjustment runs over every comparison made here (the family the report tests)."""
    ref = item_flags(run, reference)
    ref_arm = next((a for a in arms if a["artifact"] == reference), None)
    out: list[dict[str, Any]] = []
    for arm in arms:
        flags = item_flags(run, arm["artifact"])
        shared = [i for i in ref if i in flags]
        if arm["artifact"] == reference or not shared:
            continue
        a, b = [flags[i] for i in shared], [ref[i] for i in shared]
        out.append({"label": arm["label"], "artifact": arm["artifact"], "reference": reference,
                    "teacher_calls": arm.get("teacher_calls"),
                    "reference_teacher_calls": (ref_arm or {}).get("teacher_calls"), **paired_comparison(a, b)})
    for row, adjusted in zip(out, holm([r["p"] for r in out]), strict=True):
        row["p_holm"] = adjusted
    return out
