"""Standard distillation as a :class:`~arte_edge.methods.base.Method`: the baseline every other method is
compared against. One arm (``data/examples.jsonl``); its teacher cost is in each example's ``meta``."""

from __future__ import annotations

from typing import Any

from arte_edge.errors import ArteError
from arte_edge.methods.base import Method
from arte_edge.progress import log, progress
from arte_edge.runctx import RunContext


class StandardMethod(Method):
    """The teacher answers pool questions (or drafts and answers new ones); the task's checker keeps the right ones."""

    name = "standard"
    summary = "the teacher answers every question; kept when the checker agrees (the baseline)"

    def generate(self, ctx: RunContext) -> dict[str, Any]:
        """Checked teacher examples into data/examples.jsonl; resumes from what the files already hold."""
        from arte_edge.backends import open_chat_model
        from arte_edge.methods.common import DurableCollector
        from arte_edge.methods.standard.generation import GenerationSettings, generate
        from arte_edge.tasks.decontam import HeldOut

        recipe, gen = ctx.recipe, ctx.recipe.generate
        if gen.questions == "synthesize" and ctx.task.kind == "code":
            raise ArteError("generate.questions: 'synthesize' needs answer-checked tasks; code tasks need unit "
                            "tests, use 'pool' (or method: persd)")
        collector = DurableCollector(ctx.run.examples_path, ctx.run.rejected_path)
        if collector.n_accepted >= gen.n_examples or collector.n_attempted >= gen.max_attempts:
            log(f"generate: {collector.n_accepted} examples already in {ctx.run.examples_path}")
            return collector.totals()
        pool, seeds = ctx.split("train_pool"), ctx.split("seeds")
        if gen.questions == "pool" and not pool:
            raise ArteError("splits.train_pool: is 0 but generate.questions is 'pool'; give the teacher questions")
        if gen.questions == "synthesize" and not seeds:
            raise ArteError("splits.seeds: is 0 but generate.questions is 'synthesize'; show the teacher ≥ 1 seed")
        settings = GenerationSettings(teacher_name=recipe.teacher.model, seed=recipe.seed,
                                      temperature=gen.temperature, question_temperature=gen.question_temperature,
                                      max_tokens=gen.max_tokens, answer_followup=gen.answer_followup,
                                      held_out=HeldOut(ctx.split("eval")) if gen.questions == "synthesize" else None)
        teacher = open_chat_model(recipe.teacher, seed=recipe.seed)
        try:
            with progress(f"generate ({gen.questions}, teacher {recipe.teacher.model})", gen.n_examples) as advance:
                seen = [collector.n_accepted]
                advance(collector.n_accepted)

                def on_progress(accepted: int, attempted: int) -> None:
                    advance(accepted - seen[0], f"generate: {accepted} kept / {attempted} tried")
                    seen[0] = accepted

                totals = generate(teacher, ctx.task, pool=pool, seeds=seeds, mode=gen.questions,
                                  collector=collector, settings=settings, target=gen.n_examples,
                                  max_attempts=gen.max_attempts, batch_size=gen.batch_size, on_progress=on_progress)
        finally:
            teacher.close()
        if totals["n_examples"] == 0:
            raise ArteError(f"generate: the teacher produced no example that passed the checker "
                            f"({totals['n_rejected']} rejected, reasons in {ctx.run.rejected_path}); "
                            "try a stronger teacher or more generate.max_attempts")
        return totals


METHOD = StandardMethod()
