"""The models that answer D_pref questions: the student whose preferences ARTE collects and the IRT respondents.

One student artifact for the whole method: :func:`student_artifact` is the only place that chooses it (the file
``arte.student_gguf`` names, the student exported to ``arte.student_quant``, the student's own GGUF, or the fp32 HF
student), and :func:`open_student` the only place that opens it (same runtime, same greedy decoding). The student's
IRT respondent (step 1, picks D_pref) and the preference scorer ŝ_r (step 3) both go through them, so D_pref is
picked by the very artifact whose preferences it then measures. The record names the file and its content
(sha256 for a GGUF, each file's size and mtime for an HF folder); :func:`identity` is what caches are keyed by.
Tests replace these functions here; the steps call them through this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.backends.base import SamplingParams
from arte_edge.errors import ArteError
from arte_edge.progress import log
from arte_edge.runctx import RunContext
from arte_edge.rundir import stable_id

if TYPE_CHECKING:
    from arte_edge.methods.arte.scorer import DemoScorer


def describe(kind: str, path: Path) -> dict[str, Any]:
    """The record of one student artifact: its kind, path and content (sha256 and size of a GGUF; the size and
    mtime of every file of an fp32 HF folder)."""
    from arte_edge import models

    if kind == "fp32":
        from arte_edge.export.gguf import source_record

        return {"kind": "fp32", "path": str(path), "files": source_record(path)["files"]}
    return {"kind": "gguf", "path": str(path), "sha256": models.sha256_of(path), "size_bytes": path.stat().st_size}


def identity(student: dict[str, Any]) -> dict[str, Any]:
    """What the artifact's results are keyed by: its content, not where it lies (a moved run keeps its cache)."""
    return {k: v for k, v in student.items() if k != "path"}


def artifact_key(student: dict[str, Any]) -> str:
    """A short content key of the artifact (part of the ids of the student's IRT rows)."""
    return stable_id("arte/student", identity(student))


def student_artifact(ctx: RunContext) -> dict[str, Any]:
    """The one student artifact that answers D_pref questions, for the IRT fit and for ŝ_r, as a record."""
    from arte_edge import models

    cfg, spec = ctx.method_config, ctx.recipe.student
    if cfg.preference_student == "fp32":
        return describe("fp32", models.hf_folder(spec.model))
    if cfg.student_gguf:
        path = Path(cfg.student_gguf)
    elif cfg.student_quant:
        path = student_in_quant(ctx, cfg.student_quant)
    else:
        path = models.gguf_path(spec.model)
    return describe("gguf", path)


def open_student(ctx: RunContext, student: dict[str, Any]) -> DemoScorer:
    """The scorer over ``student`` (greedy, the task's answer-line stop, ``arte.student_max_tokens``); refuses a
    file whose content changed since it was chosen (results keyed by the old one would be mixed with new ones)."""
    from arte_edge.evaluation.scoring import eval_params

    path = Path(student["path"])
    if describe(student["kind"], path) != student:
        raise ArteError(f"{path}: the student artifact changed since this run chose it; rerun to rescore with it")
    params = eval_params(ctx.task, ctx.method_config.student_max_tokens)
    if student["kind"] == "fp32":
        from arte_edge.backends.hf import HFChat
        from arte_edge.methods.arte.scorer import ChatModelScorer

        return ChatModelScorer(HFChat(path, threads=ctx.recipe.student.threads, name="student-fp32"), params)
    return gguf_scorer(path, ctx, params)


def student_scorer(ctx: RunContext) -> tuple[DemoScorer, dict[str, Any]]:
    """The student that answers D_pref (:func:`open_student` of :func:`student_artifact`), and its record."""
    student = student_artifact(ctx)
    return open_student(ctx, student), student


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


def is_student(ctx: RunContext, name: str, student: dict[str, Any]) -> bool:
    """Whether IRT respondent ``name`` is the student (its model name in the recipe, or the artifact's path)."""
    return name in (ctx.recipe.student.model, student["path"])


def irt_scorers(ctx: RunContext, student: dict[str, Any]) -> dict[str, Callable[[], DemoScorer]]:
    """``{name: opener}`` of the IRT respondent models (default: the student and a local teacher). The student
    answers as ``student``, the artifact that scores ŝ_r; other models as their own GGUF."""
    from arte_edge import models
    from arte_edge.evaluation.scoring import eval_params

    names = ctx.method_config.irt_scorers
    if names is None:
        names = [ctx.recipe.student.model] + ([ctx.recipe.teacher.model] if ctx.recipe.teacher.backend != "openai"
                                              else [])
    params = eval_params(ctx.task, ctx.method_config.student_max_tokens)
    return {n: ((lambda: open_student(ctx, student)) if is_student(ctx, n, student)
                else (lambda n=n: gguf_scorer(models.gguf_path(n), ctx, params))) for n in dict.fromkeys(names)}
