"""The models that answer D_pref: the student whose preferences ARTE collects (step 3), in the artifact the
recipe names, and the IRT respondents that pick D_pref (step 1). Tests replace :func:`student_scorer` and
:func:`irt_scorers` here; the steps call them through this module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.backends.base import SamplingParams
from arte_edge.progress import log
from arte_edge.runctx import RunContext

if TYPE_CHECKING:
    from arte_edge.methods.arte.scorer import DemoScorer


def student_scorer(ctx: RunContext) -> tuple[DemoScorer, dict[str, Any]]:
    """The student that answers D_pref, and a record of which artifact it is."""
    from arte_edge import models
    from arte_edge.evaluation.scoring import eval_params

    cfg, spec = ctx.method_config, ctx.recipe.student
    params = eval_params(ctx.task, cfg.student_max_tokens)
    if cfg.preference_student == "fp32":
        from arte_edge.backends.hf import HFChat
        from arte_edge.methods.arte.scorer import ChatModelScorer

        folder = models.hf_folder(spec.model)
        return (ChatModelScorer(HFChat(folder, threads=spec.threads, name="student-fp32"), params),
                {"kind": "fp32", "path": str(folder)})
    if cfg.student_gguf:
        path = Path(cfg.student_gguf)
    elif cfg.student_quant:
        path = student_in_quant(ctx, cfg.student_quant)
    else:
        path = models.gguf_path(spec.model)
    return gguf_scorer(path, ctx, params), {"kind": "gguf", "path": str(path), "sha256": models.sha256_of(path)}


def student_in_quant(ctx: RunContext, qtype: str) -> Path:
    """The student exported from its HF folder to GGUF ``qtype`` (verified), cached in ``align/student/``."""
    from arte_edge import models
    from arte_edge.export.gguf import cached_gguf

    return cached_gguf(models.hf_folder(ctx.recipe.student.model), ctx.run.path("align", "student", ".keep").parent,
                       qtype, "student", log, verify=ctx.method_config.verify_export,
                       threads=ctx.recipe.student.threads)


def gguf_scorer(path: Path, ctx: RunContext, params: SamplingParams) -> DemoScorer:
    """A prefix-reuse llama.cpp scorer for ``path`` with the recipe's settings."""
    from arte_edge.methods.arte.scorer import PrefixReuseScorer

    return PrefixReuseScorer(path, threads=ctx.recipe.student.threads, batch=ctx.method_config.score_batch,
                             max_tokens=params.max_tokens, stop_regex=params.stop_regex)


def irt_scorers(ctx: RunContext) -> dict[str, Callable[[], DemoScorer]]:
    """``{name: opener}`` of the IRT respondent models (default: the student and a local teacher)."""
    from arte_edge import models
    from arte_edge.evaluation.scoring import eval_params

    names = ctx.method_config.irt_scorers
    if names is None:
        names = [ctx.recipe.student.model] + ([ctx.recipe.teacher.model] if ctx.recipe.teacher.backend != "openai"
                                              else [])
    params = eval_params(ctx.task, ctx.method_config.student_max_tokens)
    return {n: (lambda n=n: gguf_scorer(models.gguf_path(n), ctx, params)) for n in dict.fromkeys(names)}
