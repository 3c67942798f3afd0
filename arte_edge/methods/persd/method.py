"""PERsD as a :class:`~arte_edge.methods.base.Method`: the student → teacher loop writes the main arm (task →
refined code) and its comparison arms (PERsD-refine, StanD and InpD at an equal teacher budget; PERsD-combined and
stand-full, StanD on the whole pool, at their own larger cost); the held-out table (pass@1 on ``persd.eval_task``,
with and without multi-step inference, each model against StanD) comes after the evaluate and variants stages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from arte_edge.errors import ArteError
from arte_edge.methods.base import Method
from arte_edge.methods.persd.config import PersdConfig
from arte_edge.methods.persd.heldout_run import heldout_evaluation
from arte_edge.methods.persd.loop import run_loop
from arte_edge.methods.persd.records import LoopSettings

if TYPE_CHECKING:
    from arte_edge.runctx import RunContext
    from arte_edge.tasks.base import Item


def settings_from(ctx: RunContext) -> LoopSettings:
    """Loop settings from the recipe (teacher temperature and max_tokens come from ``generate:``)."""
    recipe, cfg = ctx.recipe, ctx.method_config
    return LoopSettings(
        student_name=recipe.student.model, teacher_name=recipe.teacher.model, seed=recipe.seed,
        student_temperature=cfg.student_temperature, top_p=cfg.top_p, student_max_tokens=cfg.student_max_tokens,
        teacher_temperature=recipe.generate.temperature, teacher_max_tokens=recipe.generate.max_tokens,
        refine_mode=cfg.refine_mode, error_max_chars=cfg.error_max_chars, error_tests=cfg.error_tests,
        test_timeout_s=cfg.test_timeout_s, budget=cfg.teacher_budget, variants=tuple(cfg.variants),
        batch_size=recipe.generate.batch_size)


def task_pool(ctx: RunContext) -> list[Item]:
    """The train pool: recipe.task's train_pool split, then every item of ``persd.pool_extra_tasks``."""
    from arte_edge.tasks import get_task

    cfg = ctx.method_config
    if cfg.eval_task in cfg.pool_extra_tasks:
        raise ArteError(f"persd.eval_task: {cfg.eval_task!r} is also in persd.pool_extra_tasks; the evaluation "
                        "task must stay held out (remove it from pool_extra_tasks)")
    pool = list(ctx.split("train_pool"))
    for name in cfg.pool_extra_tasks:
        extra = get_task(name)
        if extra.kind != ctx.task.kind:
            raise ArteError(f"persd.pool_extra_tasks: {name!r} is a {extra.kind} task but task {ctx.recipe.task!r} "
                            f"is {ctx.task.kind}; use tasks of one kind")
        pool += extra.load()
    if not pool:
        raise ArteError("splits.train_pool: is 0 and persd.pool_extra_tasks is empty; give the student tasks")
    return pool


class PersdMethod(Method):
    """Personalised distillation: the teacher fixes the student's own failing attempts, checked by their tests."""

    name = "persd"
    summary = "the teacher refines the student's failing attempts; kept when the tests pass (PERsD)"
    config_model = PersdConfig
    standard_arm = "stand"  # StanD at equal budget: the paired reference (stand-full, the whole pool, is an extra row)

    def generate(self, ctx: RunContext) -> dict[str, Any]:
        """The loop over the pool, writing the main and variant datasets; resumes from the logs."""
        from arte_edge.backends import open_chat_model
        from arte_edge.progress import log

        recipe = ctx.recipe
        settings = settings_from(ctx)
        pool = task_pool(ctx)

        def on_progress(phase: str, accepted: int, attempted: int) -> None:
            if attempted % max(1, settings.batch_size) == 0:
                log(f"persd {phase}: {accepted} kept / {attempted} done")

        totals = run_loop(
            lambda: open_chat_model(recipe.student, seed=recipe.seed, name=f"student:{recipe.student.model}"),
            lambda: open_chat_model(recipe.teacher, seed=recipe.seed), ctx.task, pool, ctx.run.root, settings,
            on_progress)
        log(f"persd: {totals['n_student_failed']} student failures of {totals['n_student_attempts']} attempts; "
            f"{totals['n_examples']} refinements kept; teacher calls per variant {totals['teacher_calls']}")
        if totals["n_examples"] == 0:
            raise ArteError(f"generate: PERsD kept no refinement ({totals['n_student_failed']} student failures, "
                            f"{totals['n_rejected']} rejected, reasons in {ctx.run.rejected_path}); use a larger "
                            "pool (splits.train_pool) or a stronger teacher")
        return totals

    def evaluate_extra(self, ctx: RunContext, rows_by_artifact: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        """Held-out pass@1 (greedy, multi-step, n samples) of base, merged and every artifact (and any variant
        already trained), after the evaluate stage."""
        return heldout_evaluation(ctx, include_variants=True)

    def after_variants(self, ctx: RunContext) -> dict[str, Any]:
        """Adds each variant's merged student to the held-out table, after the variants stage (cached rows of the
        other models are reused)."""
        return heldout_evaluation(ctx, include_variants=True)


METHOD = PersdMethod()
