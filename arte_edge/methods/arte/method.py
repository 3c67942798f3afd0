"""ARTE as a :class:`~arte_edge.methods.base.Method`: one extra stage (``align``, steps 1–4) and generation by
the aligned teachers (step 5). Reads its recipe section as ``ctx.method_config`` (:class:`.config.ArteConfig`)."""

from __future__ import annotations

from typing import Any

from arte_edge.methods.arte.config import ArteConfig
from arte_edge.methods.base import Method
from arte_edge.runctx import RunContext


class ArteMethod(Method):
    """ARTE (arXiv 2406.19227): the teacher, DPO-aligned with the student's preferences, writes the data."""

    name = "arte"
    summary = ("the student's one-shot accuracy with each teacher draft is the preference signal; the teacher is "
               "DPO-aligned on it, then writes the data (ablations: unaligned, question-only, rationale-only)")
    config_model = ArteConfig
    extra_stages = ("align",)
    standard_arm = "unaligned"  # the unaligned teacher's data: standard distillation

    def generate(self, ctx: RunContext) -> dict[str, Any]:
        """Steps 1–5: align the teacher (if not done yet), then write the main dataset and the variants."""
        from arte_edge.methods.arte.datasets import generate_datasets

        return generate_datasets(ctx)

    def run_extra_stage(self, stage: str, ctx: RunContext) -> dict[str, Any]:
        """``align``: steps 1–4 and the report section (a summary only when generation already ran them)."""
        if stage != "align":
            return super().run_extra_stage(stage, ctx)
        from arte_edge.methods.arte.align import run_align

        return run_align(ctx)


METHOD = ArteMethod()
