"""Stage `generate`: the recipe's method writes the training data of every arm (see methods/base.py); the gold
answer histogram of each arm's data is recorded, with a warning when one answer dominates."""

from __future__ import annotations

from typing import Any

from arte_edge.methods.registry import get_method
from arte_edge.progress import log
from arte_edge.runctx import RunContext
from arte_edge.rundir import read_jsonl
from arte_edge.tasks.balance import label_histogram

DOMINANT_SHARE = 0.5  # one gold answer on more than this share of an arm's examples is worth a warning


def run(ctx: RunContext) -> dict[str, Any]:
    """Generate training data with the recipe's method; resumes from what the files already hold."""
    outputs = get_method(ctx.recipe.method).generate(ctx)
    arms = {"main": ctx.run.examples_path, **{p.parent.name: p for p in ctx.run.variant_example_files()}}
    histograms = {arm: label_histogram(read_jsonl(path)) for arm, path in arms.items() if path.exists()}
    for arm, counts in histograms.items():
        total = sum(counts.values())
        top, n = next(iter(counts.items()), (None, 0))
        if ctx.task.kind == "multiple_choice" and total >= 8 and n / total > DOMINANT_SHARE:
            log(f"generate: warning: {n} of {total} examples of arm {arm} answer {top}; a student trained on them "
                f"may learn to answer {top} whatever the question (the report flags such a collapse)")
    return {**outputs, "label_histograms": histograms}
