"""Stage `variants`: train and evaluate each baseline/ablation dataset a method wrote, on the same splits.

A method writes its main dataset to ``data/examples.jsonl`` (trained, merged, exported and benchmarked by the
main stages) and each comparison dataset to ``data/variants/<name>/examples.jsonl``. Here each of those gets
the same LoRA recipe, a merge, and (unless ``variants.evaluate`` is off) the same held-out evaluation (fp32, or the
GGUF type ``evaluate.quant`` like the base and merged students), so the report compares training data and nothing
else. Finished variants are skipped on resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arte_edge.progress import log
from arte_edge.runctx import RunContext
from arte_edge.rundir import RunDir, atomic_write_json, read_jsonl


def variant_datasets(run: RunDir, include: list[str] | None) -> dict[str, Path]:
    """``{name: examples.jsonl}`` for every variant dataset present (optionally filtered)."""
    found = {p.parent.name: p for p in run.variant_example_files()}
    return {k: v for k, v in found.items() if include is None or k in include}


def _teacher_cost(rows: list[dict[str, Any]], meta_path: Path) -> int:
    if meta_path.exists():  # a method may account cost itself (e.g. shared calls across variants)
        return int(json.loads(meta_path.read_text()).get("teacher_calls", 0))
    return sum(r.get("meta", {}).get("teacher_calls", 0) for r in rows)


def run(ctx: RunContext) -> dict[str, Any]:
    """Train → merge → evaluate (unless ``variants.evaluate`` is off) every variant dataset; results go to
    eval/summary.json as variant-<name>."""
    from arte_edge import models
    from arte_edge.artifacts import Artifact, as_gguf, content_key, open_artifact
    from arte_edge.evaluation.baselines import annotate
    from arte_edge.evaluation.reuse import adopt_rows, adoption
    from arte_edge.evaluation.scoring import decoding_of, eval_params, evaluate_model
    from arte_edge.evaluation.summary import summarise
    from arte_edge.methods.registry import get_method
    from arte_edge.training.student import adopt_trained, train_and_merge

    if not ctx.recipe.variants.enabled:
        return {"variants": {}}
    datasets = variant_datasets(ctx.run, ctx.recipe.variants.include)
    base_dir = models.hf_folder(ctx.recipe.student.model)
    items = ctx.split("eval")
    params = eval_params(ctx.task, ctx.recipe.evaluate.max_tokens)
    summary_path = ctx.run.eval_summary_path
    baselines = json.loads(ctx.run.eval_baselines_path.read_text()) if ctx.run.eval_baselines_path.exists() else {}
    already = get_method(ctx.recipe.method).trained_students(ctx)
    method_rows = get_method(ctx.recipe.method).scored_rows(ctx)  # rows the method scored with the same files
    out: dict[str, Any] = {}
    for name, path in datasets.items():
        rows = read_jsonl(path)
        if not rows:
            log(f"variant {name}: empty dataset, skipped")
            continue
        work = ctx.run.variant_student_dir(name)
        if name in already and adopt_trained(already[name], work, base_dir, rows, ctx.recipe.train, ctx.recipe.seed):
            log(f"variant {name}: method {ctx.recipe.method} already trained it; not training it again")
        merged = train_and_merge(base_dir, rows, work, ctx.recipe.train, ctx.recipe.seed).merged
        out[name] = {"n_train": len(rows), "teacher_calls": _teacher_cost(rows, path.parent / "cost.json")}
        if not ctx.recipe.variants.evaluate:
            _forget_accuracy(summary_path, f"variant-{name}")  # a score of an earlier run must not sit beside it
            continue
        variant = Artifact(f"variant-{name}", "hf", "fp32", str(merged), role="variant")
        if ctx.recipe.evaluate.quant:
            variant = as_gguf(variant, ctx.run.root, ctx.recipe.evaluate.quant, verify=ctx.recipe.export.verify,
                              threads=ctx.recipe.evaluate.threads)
        model = open_artifact(variant, ctx.run.root, threads=ctx.recipe.evaluate.threads, device_faithful=True,
                              n_ctx=ctx.recipe.student.n_ctx, hf_batch_size=ctx.recipe.evaluate.batch_size)
        try:
            key = content_key(variant, ctx.run.root, params.max_tokens, decoding_of(model))
            adopted = adopt_rows(model, params, [i.id for i in items], ctx.run.eval_rows_path(f"variant-{name}"), key,
                                 method_rows)
            if adopted:
                log(f"variant {name}: held-out rows adopted from {adopted} (the same file, runtime and decoding)")
            results = evaluate_model(model, ctx.task, items, ctx.run.eval_rows_path(f"variant-{name}"), params,
                                     label=f"variant {name}", key=key)
        finally:
            model.close()
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        base_rows = read_jsonl(ctx.run.eval_rows_path("base"))
        scored = summarise({"base": base_rows, f"variant-{name}": results} if base_rows
                           else {f"variant-{name}": results}, "base" if base_rows else None)
        annotate(scored, {f"variant-{name}": results}, baselines, ctx.recipe.report.max_answer_share)
        summary[f"variant-{name}"] = scored[f"variant-{name}"] | {"format": variant.format, "quant": variant.quant,
                                                                    **adoption(results)}
        atomic_write_json(summary_path, summary)
        out[name]["accuracy"] = round(summary[f"variant-{name}"]["accuracy"], 4)
    return {"variants": out, **_method_after_variants(ctx)}


def _forget_accuracy(summary_path: Path, key: str) -> None:
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.pop(key, None) is not None:
        atomic_write_json(summary_path, summary)


def _method_after_variants(ctx: RunContext) -> dict[str, Any]:
    """A method's own evaluation of the variant students (e.g. PERsD's HumanEval table), when it has one."""
    from arte_edge.methods.registry import get_method

    return get_method(ctx.recipe.method).after_variants(ctx) or {}
