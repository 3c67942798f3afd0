"""Stage `train`: fine-tune the student on data/examples.jsonl (see :mod:`arte_edge.training`).

The adapter goes to ``student/adapter``; checkpoints to ``student/checkpoints/<key>``, keyed by the settings, data
and base model that produce them: an unchanged recipe resumes after a crash, a changed one trains afresh.
"""

from __future__ import annotations

from typing import Any

from arte_edge.errors import ArteError
from arte_edge.runctx import RunContext
from arte_edge.rundir import read_jsonl


def run(ctx: RunContext) -> dict[str, Any]:
    """Train the student's adapter on the run's examples."""
    from arte_edge import models
    from arte_edge.methods.registry import get_method
    from arte_edge.progress import log
    from arte_edge.training.student import adopt_trained, ensure_trained

    examples = read_jsonl(ctx.run.examples_path)
    if not examples:
        raise ArteError(f"{ctx.run.examples_path}: no training examples; run the generate stage first")
    base_dir = models.hf_folder(ctx.recipe.student.model)
    recipe = ctx.recipe
    already = get_method(recipe.method).trained_students(ctx).get("main")
    if already and adopt_trained(already, ctx.run.student_dir, base_dir, examples, recipe.train, recipe.seed):
        log(f"train: method {recipe.method} already trained this student ({already}); not training it again")
    student = ensure_trained(base_dir, examples, ctx.run.student_dir, recipe.train, recipe.seed)
    return {"adapter": str(student.adapter.relative_to(ctx.run.root)), "n_train": len(examples),
            "base": str(base_dir), "key": student.key, "reused": student.reused, **student.stats}
