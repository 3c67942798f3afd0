"""The generate step of ELAD: run the active loop for ELAD and each baseline at the same budget, then write the
datasets (ELAD's → data/examples.jsonl, each baseline's → data/variants/<name>/), the curve and the report section."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.backends.base import ChatModel
from arte_edge.errors import ArteError
from arte_edge.methods.elad.annotation import Annotator, resolve_checker
from arte_edge.methods.elad.config import EladConfig
from arte_edge.methods.elad.loop import LoopEnv, Strategy, StrategyRun, run_loop, strategies_for
from arte_edge.methods.elad.report import curve_rows, write_report
from arte_edge.methods.elad.students import (
    StudentOpener,
    Trainer,
    default_trainer,
    point_key,
    student_openers,
)
from arte_edge.rundir import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from arte_edge.evaluation.reuse import ScoredRows
    from arte_edge.runctx import RunContext

def _setup_text(ctx: RunContext, env: LoopEnv) -> str:
    cfg, recipe = env.cfg, ctx.recipe
    checker = ("the task's checker against the gold answer (the pool stays unlabelled for selection; only the "
               "revision check sees gold)" if env.annotator.checker == "gold"
               else f"teacher self-consistency ({cfg.consistency_samples} independent answers, majority must agree)")
    if cfg.stop_metric == "none":
        val = "every strategy runs all its rounds (nothing is watched)"
    elif cfg.stop_metric == "eval":
        val = "the rule watches held-out accuracy (biases the last point)"
    else:
        val = f"the rule watches the validation split (the `preference` split, n={len(env.val_items)})"
    cand = cfg.candidates_per_round or "all remaining"
    runtime = "in fp32 (torch)"
    if cfg.student_quant and cfg.device_faithful_eval:
        runtime = (f"as a GGUF {cfg.student_quant.upper()} in llama.cpp (scored one sequence at a time, as the "
                   "device and the Artifacts table do)")
    elif cfg.student_quant:
        runtime = (f"as a GGUF {cfg.student_quant.upper()} in llama.cpp, 8 sequences decoded together for speed (the "
                   "Artifacts table decodes one at a time, as the device does; batching changes float rounding, so "
                   "the same model's accuracy there can differ by a few items)")
    return (f"Task **{ctx.task.name}**, student `{recipe.student.model}`, teacher `{recipe.teacher.model}`. Budget "
            f"B = {cfg.budget} teacher calls per strategy, up to R = {cfg.rounds} rounds of b = {cfg.batch_size} "
            f"questions from a pool of {len(env.pool)}; {cand} candidates scored per round; EGSS λ = {cfg.lambda_} "
            f"(intra: {cfg.intra_measure} over ≤ {cfg.max_prefixes} step prefixes; inter: entropy of "
            f"N = {cfg.n_samples} samples at T = {cfg.sample_temperature}). Revisions checked by {checker}; parse "
            f"failures and still-wrong revisions are counted and dropped. The student is re-trained from the base "
            f"each round on all data kept so far; it runs {runtime}. Held-out n = {len(env.eval_items)}, accuracy "
            "with 95% Wilson "
            f"interval. Stopping rule: {cfg.stop_metric}, patience {cfg.patience}, min Δ {cfg.min_delta_pt} pt: {val}.")


def write_outputs(ctx: RunContext, env: LoopEnv, strategies: Sequence[Strategy],
                  last: dict[str, dict[str, Any]]) -> int:
    """ELAD's final data → data/examples.jsonl; each baseline's → data/variants/<name>/ (+ cost.json)."""
    n_elad = 0
    for s in strategies:
        row = last.get(s.name, {})
        state = StrategyRun(env, s).state(row.get("round", 0))
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in state.examples)
        if s.name == "elad":
            atomic_write_text(ctx.run.examples_path, text)
            n_elad = len(state.examples)
            continue
        out = ctx.run.root / "data" / "variants" / s.name
        atomic_write_text(out / "examples.jsonl", text)
        atomic_write_json(out / "cost.json", {**state.spent(), "n_examples": len(state.examples),
                                              "rounds": row.get("round", 0), "stop_reason": row.get("stop_reason")})
    return n_elad


def curve_eval_mode(cfg: EladConfig) -> str:
    """The runtime and batch mode curve points are scored in (part of their cache key)."""
    if not cfg.student_quant:
        return "fp32 torch, batched"
    return f"{cfg.student_quant} llama.cpp, " + ("one sequence at a time" if cfg.device_faithful_eval else "batched")


def generate_datasets(ctx: RunContext, *, teacher: ChatModel | None = None,
                      open_student: StudentOpener | None = None, trainer: Trainer | None = None) -> dict[str, Any]:
    """Run the ELAD active loop and each baseline at the same budget; write datasets, curve, report section.

    ``teacher``, ``open_student`` and ``trainer`` replace the recipe's models (tests inject fakes).
    """
    from arte_edge import models
    from arte_edge.backends import open_chat_model
    from arte_edge.evaluation.scoring import eval_params

    recipe, cfg = ctx.recipe, ctx.method_config
    if ctx.task.kind == "code":
        raise ArteError("method: elad needs an answer-checked task (numeric or multiple_choice), not a code task; "
                        "use method: persd for code")
    pool = ctx.split("train_pool")
    if not pool:
        raise ArteError("splits.train_pool: is 0 but method elad selects from that pool; set splits.train_pool")
    eval_items = ctx.split("eval")[: cfg.eval_size or None]
    val_items = ctx.split("preference")[: cfg.validation_size or None] if cfg.stop_metric == "validation" else []
    base_dir = models.hf_folder(recipe.student.model)
    scoring, evaluation = student_openers(recipe, ctx.run.root)
    own_teacher = teacher is None
    teacher = teacher or open_chat_model(recipe.teacher, seed=recipe.seed)
    try:
        annotator = Annotator(teacher, ctx.task, cfg, resolve_checker(cfg, pool), recipe.teacher.model, recipe.seed)
        env = LoopEnv(root=ctx.run.root, task=ctx.task, cfg=cfg, pool=pool, eval_items=eval_items,
                      val_items=val_items, base_dir=base_dir, annotator=annotator,
                      open_student=open_student or scoring,
                      open_eval_student=None if open_student else evaluation,
                      train=trainer or default_trainer(base_dir, recipe),
                      eval_params=eval_params(ctx.task, recipe.evaluate.max_tokens), seed=recipe.seed,
                      eval_mode=curve_eval_mode(cfg))
        strategies = strategies_for(cfg)
        last = run_loop(env, strategies)
    finally:
        if own_teacher:
            teacher.close()
    n_elad = write_outputs(ctx, env, strategies, last)
    write_report(ctx.run.root, _setup_text(ctx, env), cfg)
    if n_elad == 0:
        raise ArteError(f"generate: no CLEAR revision passed the checker (see {env.elad_dir / 'elad'}"
                        "/rejected.jsonl); try a stronger teacher or a larger elad.budget")
    spent = StrategyRun(env, strategies[0]).state(last["elad"].get("round", 0)).spent()
    return {"n_examples": n_elad, **spent, "curve": "elad/curve.jsonl",
            "report_section": "report/sections/elad.md", "plot": "report/elad_curve.png",
            "strategies": {k: {"rounds": v.get("round"), "teacher_calls": v.get("teacher_calls"),
                               "accuracy": v.get("accuracy"), "stop_reason": v.get("stop_reason")}
                           for k, v in last.items()}}


def trained_students(root: Path, cfg: EladConfig) -> dict[str, Path]:
    """``{arm: work folder}`` of the students the loop already trained: ``"main"`` for ELAD, the baseline's name
    for each ``data/variants/<name>/`` arm.

    Each is the student of the strategy's last curve point, which :func:`default_trainer` trained (into
    ``round-r/``, by :func:`~arte_edge.training.student.train_and_merge`) on the strategy's examples of rounds ≤
    that point's round: exactly the dataset :func:`write_outputs` writes for the arm (a round that kept nothing
    reuses the previous student, trained on the same examples). Strategies without a trained student in the run
    directory (none kept yet, or a trainer that leaves no ``training.json``) are left out.
    """
    last = {row["strategy"]: row for row in curve_rows(root)}  # sorted by round: the last row wins
    elad_dir = (root / "elad").resolve()
    out: dict[str, Path] = {}
    for strategy in strategies_for(cfg):
        row = last.get(strategy.name)
        if row is None:
            continue
        model_dir = Path(row["model_dir"])
        work = (model_dir if model_dir.is_absolute() else root / model_dir).parent
        if model_dir.name == "merged" and work.resolve().is_relative_to(elad_dir) and (work / "training.json").exists():
            out["main" if strategy.name == "elad" else strategy.name] = work
    return out


def scored_rows(ctx: RunContext) -> list[ScoredRows]:
    """The held-out rows of every curve point scored as a GGUF of the same items and decoding as the evaluate stage,
    with how they were decoded (the file's SHA-256, batch mode, threads, context: the point's ``scored_with``), for
    :mod:`arte_edge.evaluation.reuse`. Points scored before that record existed are not offered."""
    from arte_edge.evaluation.reuse import ScoredRows
    from arte_edge.evaluation.scoring import eval_params

    recipe, cfg, root = ctx.recipe, ctx.method_config, ctx.run.root
    params, out = eval_params(ctx.task, recipe.evaluate.max_tokens), []
    for row in curve_rows(root):
        record = row.get("scored_with")
        if not row.get("eval_file") or not row.get("model_dir") or not record:
            continue
        model_dir = Path(row["model_dir"])
        model_dir = model_dir if model_dir.is_absolute() else root / model_dir
        if not model_dir.exists():
            continue
        # only rows scored under this recipe's evaluation settings count (the key the loop writes them under)
        out.append(ScoredRows(source=str(Path(row["eval_file"]).parent), sha256=record["sha256"],
                              rows=root / row["eval_file"], batch_size=record["batch_size"],
                              threads=record["threads"], n_ctx=record["n_ctx"], params=params,
                              row_key=point_key(model_dir, curve_eval_mode(cfg), params)))
    return out
