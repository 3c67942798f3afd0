"""Stage `merge`: the whole student at ``student/merged`` (LoRA folded into the fp32 base, checked by logits)."""

from __future__ import annotations

from typing import Any

from arte_edge.runctx import RunContext


def run(ctx: RunContext) -> dict[str, Any]:
    """Merge the run's adapter into its base student (or copy a fully fine-tuned model)."""
    from arte_edge import models
    from arte_edge.training.student import ensure_merged

    stats = ensure_merged(models.hf_folder(ctx.recipe.student.model), ctx.run.student_dir, ctx.recipe.train.threads)
    return {"merged": str(ctx.run.merged_dir.relative_to(ctx.run.root)), **stats}
