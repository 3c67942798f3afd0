"""The method protocol: what a way of making training data declares, and what the stages call.

A *method* (standard distillation, ARTE, PERsD, ELAD, or your own) turns a task, a teacher and a student into
training data. It is a package under ``arte_edge/methods/`` with one object implementing :class:`Method`, named in
:mod:`arte_edge.methods.registry`. The stages know nothing else about it:

- ``config_model``: the pydantic model of the recipe section named after the method (``arte:``, ``persd:``, …),
  holding only the method's own fields; ``None`` when it has none. The recipe loader validates that section with
  it and hands the frozen result to the method as ``ctx.method_config``.
- ``extra_stages``: stages the method adds (ARTE: ``align``), run by :meth:`run_extra_stage`.
- ``standard_arm``: the name of the variant arm that is standard distillation at equal teacher cost (ARTE's
  ``unaligned``, PERsD's ``stand``): the report compares every arm against it (else against the untrained student).
- :meth:`check_recipe`: problems between its section and the rest of the recipe, found at load time.
- :meth:`generate`: writes the main arm to ``data/examples.jsonl`` and each comparison arm (baselines, ablations)
  to ``data/variants/<arm>/examples.jsonl`` with its teacher cost; returns a JSON-able summary.
- :meth:`trained_students`: arms the method already trained itself (ELAD trains while it selects), as
  ``{arm: work folder}`` laid out like :func:`arte_edge.training.student.train_and_merge` leaves it; the train and
  variants stages reuse those instead of training again. ``"main"`` names the main arm.
- :meth:`scored_rows`: held-out rows the method already scored with a model file it hands on (ELAD's curve
  points); the evaluate stage adopts them when its artifact is the same file run the same way.
- :meth:`evaluate_extra`, :meth:`after_variants`: a method's own evaluation (PERsD's pass@k on HumanEval).
- :meth:`refresh_report`: re-renders the method's Markdown section(s) under ``report/sections/`` (the report
  appends every section found there; ``arte-edge report`` calls this first).

Every arm goes through the same train → merge → export → evaluate path, so arms differ only in their data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pydantic import BaseModel

    from arte_edge.config import Recipe
    from arte_edge.evaluation.reuse import ScoredRows
    from arte_edge.runctx import RunContext


class Method:
    """Base class of every method; the defaults are what a method without the feature does."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    config_model: ClassVar[type[BaseModel] | None] = None
    extra_stages: ClassVar[tuple[str, ...]] = ()
    standard_arm: ClassVar[str | None] = None  # the variant arm that is standard distillation (the reference)

    def check_recipe(self, recipe: Recipe) -> list[str]:
        """Problems between the method's section and the rest of the recipe (each naming its key), reported with
        every other validation error. Default: none."""
        return []

    def generate(self, ctx: RunContext) -> dict[str, Any]:
        """Write the training data of every arm; return a summary (counts, teacher cost)."""
        raise NotImplementedError

    def run_extra_stage(self, stage: str, ctx: RunContext) -> dict[str, Any]:
        """Run one of :attr:`extra_stages`."""
        raise NotImplementedError(f"method {self.name} has no stage {stage!r}")

    def trained_students(self, ctx: RunContext) -> dict[str, Path]:
        """``{arm: work folder}`` of students this method already trained with the recipe's ``train`` settings."""
        return {}

    def scored_rows(self, ctx: RunContext) -> list[ScoredRows]:
        """Held-out rows this method already scored while it worked, with the model file that answered them (see
        :mod:`arte_edge.evaluation.reuse`); the evaluate stage adopts them for a byte-identical artifact run the
        same way instead of decoding again. Default: none."""
        return []

    def evaluate_extra(self, ctx: RunContext, rows_by_artifact: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        """The method's own evaluation after the evaluate stage (merged into that stage's outputs)."""
        return {}

    def after_variants(self, ctx: RunContext) -> dict[str, Any]:
        """The method's own evaluation of the variant students, after the variants stage."""
        return {}

    def refresh_report(self, root: Path) -> None:
        """Re-render the method's report section(s) in ``root/report/sections/`` from the run directory's files
        (so ``arte-edge report`` shows them as this version renders them). Default: sections stay as written."""
