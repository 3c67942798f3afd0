"""ELAD as a :class:`~arte_edge.methods.base.Method`: the active loop writes ELAD's dataset (main arm) and each
baseline's (``data/variants/<name>/``), and hands the students it trained on them to the train and variants stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arte_edge.config import Recipe
from arte_edge.evaluation.reuse import ScoredRows
from arte_edge.methods.base import Method
from arte_edge.methods.elad.config import EladConfig
from arte_edge.runctx import RunContext


class EladMethod(Method):
    """Explanation-guided active distillation under a teacher-call budget (arXiv 2402.13098), with its baselines."""

    name = "elad"
    summary = ("active distillation under a teacher-call budget: EGSS selects, the teacher revises the student's "
               "steps (CLEAR); baselines at the same budget")
    config_model = EladConfig
    standard_arm = "standard"  # random questions + the teacher's own explanation at the same budget

    def check_recipe(self, recipe: Recipe) -> list[str]:
        """The validation stop rule needs a validation split (no silent fall-back to the held-out items)."""
        if recipe.method_config.stop_metric == "validation" and recipe.splits.preference == 0:
            return ["elad.stop_metric: 'validation' needs a validation split but splits.preference is 0; set "
                    "splits.preference (e.g. 50) or elad.stop_metric: none (watching the held-out items would bias "
                    "the reported accuracy)"]
        return []

    def generate(self, ctx: RunContext) -> dict[str, Any]:
        """Run (or resume) the active loop; write the datasets, ``elad/curve.jsonl`` and the report section."""
        from arte_edge.methods.elad.datasets import generate_datasets

        return generate_datasets(ctx)

    def trained_students(self, ctx: RunContext) -> dict[str, Path]:
        """The work folders of ELAD's final student (``"main"``) and of each baseline's, trained by the loop."""
        from arte_edge.methods.elad.datasets import trained_students

        return trained_students(ctx.run.root, ctx.method_config)

    def scored_rows(self, ctx: RunContext) -> list[ScoredRows]:
        """Every curve point scored as a GGUF (``elad.student_quant``) whose file is still on disk: the base
        student's and each strategy's last round, which the evaluate stage would otherwise decode again."""
        from arte_edge.methods.elad.datasets import scored_rows

        return scored_rows(ctx)

    def refresh_report(self, root: Path) -> None:
        """Re-render ``report/sections/elad.md`` and the curve plot from ``elad/curve.jsonl`` (when the run has one)."""
        from arte_edge.methods.elad.report import refresh_report

        refresh_report(root)


METHOD = EladMethod()
