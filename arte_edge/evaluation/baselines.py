"""Trivial baselines on the same held-out items, and what a model's answers look like.

A gain counts only against the best trivial baseline on the same items:
- **chance**: multiple choice, the mean of 1/k over the items (k = that item's number of choices);
- **constant answer**: the single answer that scores best on these very items (for multiple choice, the best
  letter; otherwise the most frequent gold answer). Chosen with the gold answers in hand, so it is an upper
  bound on any constant a model could have learned: a model at or below it has shown nothing;
- **format only**: the untrained student shown k seed demonstrations (scored by the evaluate stage as the
  artifact ``base-fewshot``): what learning the answer format alone buys.

The answer histogram of every model (and of the gold answers) shows a collapse that a score hides: a student that
gives one answer to most items is flagged and never recommended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from arte_edge.tasks.base import Item, Task

NO_ANSWER = "(none)"
FORMAT_ONLY = "base-fewshot"  # the artifact name of the format-only baseline
DEFAULT_MAX_ANSWER_SHARE = 0.6  # a model giving one answer to more than this share of items has collapsed


def chance_accuracy(task: Task, items: Sequence[Item]) -> float | None:
    """Expected accuracy of a uniform random choice (multiple choice only; None for other kinds)."""
    if task.kind != "multiple_choice" or not items:
        return None
    counts = [len(task.item_choices(item)) or len(task.letters) for item in items]  # type: ignore[attr-defined]
    return sum(1.0 / k for k in counts) / len(counts)


def constant_baseline(task: Task, items: Sequence[Item]) -> dict[str, Any] | None:
    """The best single answer on ``items``: ``{"answer", "accuracy", "correct": per-item flags}`` (None if no item).

    Code tasks have no constant answer (None)."""
    if not items or task.kind == "code":
        return None
    if task.kind == "multiple_choice":
        candidates = sorted({letter for item in items for letter in _letters(task, item)})
    else:
        candidates = [answer for answer, _ in Counter(item.answer for item in items).most_common()]
    best = max(candidates, key=lambda c: (sum(item.answer == c for item in items), -candidates.index(c)))
    correct = [item.answer == best for item in items]
    return {"answer": best, "accuracy": sum(correct) / len(items), "correct": correct}


def _letters(task: Task, item: Item) -> str:
    n = len(task.item_choices(item)) if hasattr(task, "item_choices") else 0
    return "ABCDEFGHIJ"[:n] if n else getattr(task, "letters", "ABCDE")


def answer_histogram(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How often each answer was given (``(none)`` for no parseable answer), most frequent first."""
    counts = Counter(NO_ANSWER if r.get("predicted") is None else str(r["predicted"]) for r in rows)
    return dict(counts.most_common())


def gold_histogram(items: Sequence[Item]) -> dict[str, int]:
    """How often each gold answer occurs on ``items``, most frequent first."""
    return dict(Counter(item.answer for item in items).most_common())


def collapse(rows: Sequence[dict[str, Any]], max_share: float = DEFAULT_MAX_ANSWER_SHARE) -> dict[str, Any]:
    """The most frequent answer and its share of all outputs; ``collapsed`` when the share exceeds ``max_share``.

    Unanswered outputs do not count as an answer (a model that mostly fails to answer is caught by *answered*).
    """
    answered = [str(r["predicted"]) for r in rows if r.get("predicted") is not None]
    if not rows or not answered:
        return {"top_answer": None, "top_share": 0.0, "collapsed": False}
    answer, count = Counter(answered).most_common(1)[0]
    share = count / len(rows)
    return {"top_answer": answer, "top_share": round(share, 4), "collapsed": share > max_share}


def trivial_baselines(task: Task, items: Sequence[Item],
                      format_only: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every trivial baseline on ``items`` and the best of them (by accuracy), with its per-item flags
    where it has them (constant, format-only) for paired tests."""
    out: dict[str, Any] = {}
    chance = chance_accuracy(task, items)
    if chance is not None:
        out["chance"] = {"accuracy": chance}
    constant = constant_baseline(task, items)
    if constant is not None:
        out["constant"] = constant
    if format_only:
        flags = [bool(r["correct"]) for r in format_only]
        out["format_only"] = {"accuracy": sum(flags) / len(flags), "correct": flags}
    if out:
        best = max(out, key=lambda k: out[k]["accuracy"])
        out["best"] = {"name": best, **out[best]}
    return out


def against_baseline(correct: Sequence[bool], baselines: dict[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """A model's per-item results against the best trivial baseline: the margin (points), a test, and whether it
    beats it (higher and significant). Paired exact McNemar where the baseline has per-item results (constant,
    format-only); a one-sided exact binomial test against the chance rate otherwise."""
    from scipy.stats import binomtest

    from arte_edge.stats import mcnemar_p

    best = baselines.get("best")
    if not best or not correct:
        return {"baseline": None, "margin_pt": None, "p": None, "beats": None}
    accuracy = sum(correct) / len(correct)
    if "correct" in best and len(best["correct"]) == len(correct):
        p = mcnemar_p(list(correct), list(best["correct"]))
        test = "McNemar (paired)"
    else:
        p = float(binomtest(sum(correct), len(correct), best["accuracy"], alternative="greater").pvalue)
        test = "binomial vs chance"
    return {"baseline": best["name"], "baseline_accuracy": best["accuracy"],
            "margin_pt": round(100 * (accuracy - best["accuracy"]), 2), "p": round(p, 4), "test": test,
            "beats": accuracy > best["accuracy"] and p < alpha}


def annotate(summary: dict[str, dict[str, Any]], rows_by_artifact: dict[str, list[dict[str, Any]]],
             baselines: dict[str, Any], max_share: float = DEFAULT_MAX_ANSWER_SHARE) -> None:
    """Add to each artifact's summary row its answer histogram, collapse verdict and comparison with the best
    trivial baseline (in place)."""
    for name, row in summary.items():
        rows = rows_by_artifact.get(name, [])
        row["answer_histogram"] = answer_histogram(rows)
        row.update(collapse(rows, max_share))
        row["vs_baseline"] = against_baseline([bool(r["correct"]) for r in rows], baselines)


def baselines_record(task: Task, items: Sequence[Item], baselines: dict[str, Any]) -> dict[str, Any]:
    """What ``eval/baselines.json`` holds: n, every baseline's accuracy (per-item results of the constant and
    format-only ones too) and the gold answer histogram."""
    return {"n": len(items), "kind": task.kind, "gold_histogram": gold_histogram(items),
            **{k: v for k, v in baselines.items()}}
