"""Accuracy summaries of scored rows: Wilson intervals, flexible accuracy, answer rate, paired test vs a reference."""

from __future__ import annotations

from typing import Any

from arte_edge.stats import accuracy_summary, mcnemar_p


def summarise(rows_by_artifact: dict[str, list[dict[str, Any]]], reference: str | None) -> dict[str, Any]:
    """Accuracy, interval and paired p-value vs ``reference`` for each artifact."""
    out: dict[str, Any] = {}
    ref = [r["correct"] for r in rows_by_artifact.get(reference, [])] if reference else []
    for name, rows in rows_by_artifact.items():
        flags = [r["correct"] for r in rows]
        summary: dict[str, Any] = accuracy_summary(flags)
        # Rows written before flexible extraction existed count as their strict verdict.
        flexible = accuracy_summary([r.get("correct_flexible", r["correct"]) for r in rows])
        summary.update({f"{k}_flexible": flexible[k] for k in ("accuracy", "ci_low", "ci_high")})
        summary["answered"] = round(sum(r.get("predicted") is not None for r in rows) / max(1, len(rows)), 4)
        summary["mean_completion_tokens"] = round(sum(r["completion_tokens"] for r in rows) / max(1, len(rows)), 1)
        if ref and name != reference and len(ref) == len(flags):
            summary[f"mcnemar_p_vs_{reference}"] = round(mcnemar_p(flags, ref), 4)
        out[name] = summary
    return out
