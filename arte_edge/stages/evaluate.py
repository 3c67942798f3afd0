"""Stage `evaluate`: accuracy of the base student and of every artifact on the same held-out items.

Per-item predictions go to ``eval/<artifact>.jsonl`` (resumable); summaries with 95% Wilson intervals, a paired
McNemar test against the base student, the answer histogram and the comparison with the best trivial baseline
(chance, constant answer, format-only: :mod:`arte_edge.evaluation.baselines`) to ``eval/summary.json``; the
baselines themselves to ``eval/baselines.json``.
"""

from __future__ import annotations

from typing import Any

from arte_edge.artifacts import Artifact, as_gguf, content_key, list_artifacts, open_artifact
from arte_edge.evaluation.baselines import FORMAT_ONLY, annotate, baselines_record, trivial_baselines
from arte_edge.evaluation.reuse import ScoredRows, adopt_rows, adoption
from arte_edge.evaluation.scoring import batch1_check, decoding_of, eval_params, evaluate_model, format_demos
from arte_edge.evaluation.summary import summarise
from arte_edge.progress import log
from arte_edge.runctx import RunContext
from arte_edge.rundir import atomic_write_json


def run(ctx: RunContext, artifacts: list[Artifact] | None = None) -> dict[str, Any]:
    """Evaluate every artifact of the run (and the base student) on the held-out split."""
    cfg = ctx.recipe.evaluate
    items = ctx.split("eval")
    params = eval_params(ctx.task, cfg.max_tokens)
    chosen = artifacts if artifacts is not None else list_artifacts(ctx, include_base=cfg.include_base)
    plan, same_as = in_eval_runtime(ctx, chosen)
    demos = format_demos(ctx.task, ctx.split("seeds"))
    jobs = [(a, a.name, ()) for a in plan]
    base = next((a for a in plan if a.role == "base"), None)
    if cfg.format_baseline and base is not None and demos and ctx.task.kind != "code":
        jobs.append((base, FORMAT_ONLY, tuple(demos)))  # the format-only baseline: same model, seeds shown
    rows_by_artifact: dict[str, list[dict[str, Any]]] = {}
    decoding: dict[str, dict[str, Any]] = {}
    scored = method_scored_rows(ctx)
    for artifact, name, shown in jobs:
        model = open_artifact(artifact, ctx.run.root, threads=cfg.threads, device_faithful=True,
                              n_ctx=ctx.recipe.student.n_ctx, hf_batch_size=cfg.batch_size)
        try:
            key = content_key(artifact, ctx.run.root, params.max_tokens, decoding_of(model), *shown)
            adopted = None if shown else adopt_rows(model, params, [i.id for i in items],
                                                   ctx.run.eval_rows_path(name), key, scored)
            if adopted:
                log(f"{name}: held-out rows adopted from {adopted} (the same file, runtime and decoding)")
            rows_by_artifact[name] = evaluate_model(model, ctx.task, items, ctx.run.eval_rows_path(name), params,
                                                    label=name, demos=shown, key=key)
            decoding[name] = {"decoding": decoding_of(model), **adoption(rows_by_artifact[name])}
            if decoding[name]["decoding"] != "batch 1":  # fp32 reference rows: batched, checked against batch 1
                decoding[name]["batch1_check"] = batch1_check(model, ctx.task, items, rows_by_artifact[name], params,
                                                              shown, cache=ctx.run.eval_batch1_path(name), key=key)
        finally:
            model.close()
    rows_by_artifact.update({alias: rows_by_artifact[name] for alias, name in same_as.items()})
    reference = "base" if "base" in rows_by_artifact else None
    summary = summarise(rows_by_artifact, reference)
    opened = {name: a for a, name, _ in jobs}
    for name, row in summary.items():  # the runtime each row was scored in
        row.update(format=opened[same_as.get(name, name)].format, quant=opened[same_as.get(name, name)].quant,
                   **decoding.get(same_as.get(name, name), {}))
    baselines = trivial_baselines(ctx.task, items, rows_by_artifact.get(FORMAT_ONLY))
    annotate(summary, rows_by_artifact, baselines, ctx.recipe.report.max_answer_share)
    atomic_write_json(ctx.run.eval_baselines_path, baselines_record(ctx.task, items, baselines))
    atomic_write_json(ctx.run.eval_summary_path, summary)
    outputs = {"summary": "eval/summary.json", "n_eval": len(items),
               "accuracy": {k: round(v["accuracy"], 4) for k, v in summary.items()}}
    return {**outputs, **method_evaluation(ctx, rows_by_artifact)}


def in_eval_runtime(ctx: RunContext, chosen: list[Artifact]) -> tuple[list[Artifact], dict[str, str]]:
    """The artifacts to open, and ``{alias: name}`` for rows that are another row's file.

    Without ``evaluate.quant`` every artifact runs in its own runtime. With it, the HF students (base, merged) run
    as GGUFs of that type; when the merged student reuses the exported ``gguf-<type>`` file, that export's row is
    the merged row (same file, same runtime), not a second evaluation.
    """
    quant = ctx.recipe.evaluate.quant
    if not quant:
        return list(chosen), {}
    root, cfg = ctx.run.root, ctx.recipe
    plan = [as_gguf(a, root, quant, verify=cfg.export.verify, threads=cfg.evaluate.threads) if a.format == "hf"
            else a for a in chosen]
    merged_file = next((a.resolve(root) for a in plan if a.role == "merged"), None)
    same_as = {a.name: "merged" for a in plan if a.role == "export" and a.resolve(root) == merged_file}
    return [a for a in plan if a.name not in same_as], same_as


def method_scored_rows(ctx: RunContext) -> list[ScoredRows]:
    """Rows the method scored itself with files the run ships (ELAD's curve points), for adoption."""
    from arte_edge.methods.registry import get_method

    return get_method(ctx.recipe.method).scored_rows(ctx)


def method_evaluation(ctx: RunContext, rows_by_artifact: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """A method's own extra evaluation (e.g. PERsD's pass@k and multi-step inference)."""
    from arte_edge.methods.registry import get_method

    return get_method(ctx.recipe.method).evaluate_extra(ctx, rows_by_artifact) or {}
