"""The run's held-out evaluation: every model of the run (base, merged, each exported artifact, each variant)
scored on ``persd.eval_task`` by :mod:`.heldout`, then the summary, each model against StanD (paired bootstrap,
McNemar + Holm, minimum detectable difference) and the report section.

Per-item rows are cached in ``eval/persd/<model>.jsonl``, the summary in ``eval/persd/summary.json``, the report
section in ``report/sections/persd.{md,json}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.backends.base import ChatModel
from arte_edge.methods.persd.heldout import (
    HeldoutSettings,
    cached_heldout_rows,
    evaluate_heldout_model,
    summarise_heldout,
)
from arte_edge.methods.persd.report import compare_with_reference, write_section
from arte_edge.rundir import atomic_write_json
from arte_edge.tasks.base import Item, Task

if TYPE_CHECKING:
    from arte_edge.runctx import RunContext


def heldout_settings(ctx: RunContext) -> HeldoutSettings:
    """Held-out settings from the recipe's ``persd:`` section."""
    cfg = ctx.method_config
    return HeldoutSettings(rounds=cfg.multi_step_rounds, n_samples=cfg.pass_k_samples,
                           sample_temperature=cfg.sample_temperature, top_p=cfg.top_p,
                           max_tokens=cfg.eval_max_tokens, timeout_s=cfg.test_timeout_s,
                           error_max_chars=cfg.error_max_chars, error_tests=cfg.error_tests,
                           batch_size=cfg.eval_batch_size, seed=ctx.recipe.seed, quant=cfg.eval_quant)


def heldout_items(ctx: RunContext) -> tuple[Task, list[Item]]:
    """The held-out task and items: ``persd.eval_task`` (first ``eval_limit``), or the recipe's eval split when
    eval_task is the training task itself (e.g. GSM8K), which keeps it disjoint from the pool."""
    from arte_edge.tasks import get_task

    cfg = ctx.method_config
    if cfg.eval_task == ctx.recipe.task:
        items = ctx.split("eval")
        return ctx.task, items[: cfg.eval_limit] if cfg.eval_limit else items
    task = get_task(cfg.eval_task)
    items = task.load()
    return task, items[: cfg.eval_limit] if cfg.eval_limit else items


def models_to_score(ctx: RunContext, include_variants: bool) -> list[tuple[str, Callable[[], ChatModel]]]:
    """(name, opener) for the base student, the merged student, each exported artifact, and each variant.

    With ``persd.eval_quant`` the base, merged and variant students are opened as GGUFs of that type (exported
    on first use; the exported artifact of that type is the merged row), and every other exported artifact keeps
    its own runtime.
    """
    from arte_edge.artifacts import list_artifacts, open_artifact

    cfg = ctx.method_config
    threads, quant, n_ctx = ctx.recipe.evaluate.threads, cfg.eval_quant, ctx.recipe.student.n_ctx
    out: list[tuple[str, Callable[[], ChatModel]]] = []
    for a in list_artifacts(ctx, include_base=ctx.recipe.evaluate.include_base):
        if quant and a.format == "hf":
            out.append((a.name, lambda a=a: _open_quantized(ctx, a.resolve(ctx.run.root), a.name)))
        elif not (quant and a.name == f"gguf-{quant}"):
            out.append((a.name, lambda a=a: open_artifact(a, ctx.run.root, threads=threads, n_ctx=n_ctx)))
    if include_variants and cfg.eval_variants:
        for name in cfg.variants:
            folder = ctx.run.root / "student" / "variants" / name / "merged"
            if (folder / "config.json").exists():
                out.append((f"variant-{name}", lambda f=folder, n=name: _open_quantized(ctx, f, f"variant-{n}")
                            if quant else _open_hf(f, threads, f"variant-{n}")))
    return out


def _open_hf(folder: Path, threads: int, name: str) -> ChatModel:
    from arte_edge.backends.hf import HFChat

    return HFChat(folder, threads=threads, name=name)


def _open_quantized(ctx: RunContext, folder: Path, name: str) -> ChatModel:
    """``folder`` (an HF model) as a ``persd.eval_quant`` GGUF in llama.cpp (``artifacts.as_gguf``): the merged
    student reuses the export stage's file of that type; the others are exported to ``eval/persd/models/``."""
    from arte_edge.artifacts import Artifact, as_gguf
    from arte_edge.backends.llamacpp import LlamaCppChat

    cfg = ctx.method_config
    role = "merged" if name == "merged" else "variant"
    gguf = as_gguf(Artifact(name, "hf", "fp32", str(folder), role=role), ctx.run.root, str(cfg.eval_quant),
                   verify=ctx.recipe.export.verify, threads=ctx.recipe.evaluate.threads,
                   out_dir=ctx.run.path("eval", "persd", "models", ".keep").parent)
    return LlamaCppChat(Path(gguf.path), threads=ctx.recipe.evaluate.threads, n_ctx=ctx.recipe.student.n_ctx, name=name,
                        batch_size=cfg.eval_batch_size)


def heldout_evaluation(ctx: RunContext, include_variants: bool = True) -> dict[str, Any]:
    """Score every available model of the run on the held-out task and write the report section.

    A model whose rows are all cached is not opened (nor exported) again.
    """
    task, items = heldout_items(ctx)
    s = heldout_settings(ctx)
    results: dict[str, list[dict[str, Any]]] = {}
    for name, opener in models_to_score(ctx, include_variants):
        cached = cached_heldout_rows(ctx.run.path("eval", "persd", f"{name}.jsonl"), s)
        if all(item.id in cached for item in items):
            results[name] = [cached[item.id] for item in items]
            continue
        model = opener()
        try:
            results[name] = evaluate_heldout_model(model, task, items, ctx.run.path("eval", "persd", f"{name}.jsonl"),
                                                   s, label=name)
        finally:
            model.close()
    summary = {name: summarise_heldout(rows, results.get("base")) for name, rows in results.items()}
    atomic_write_json(ctx.run.path("eval", "persd", "summary.json"), summary)
    costs_path = ctx.run.root / "data" / "persd" / "costs.json"
    costs = read_json(costs_path)
    write_section(ctx.run.root, task.name, s, summary, costs, compare_with_reference(results))
    metrics = ("pass1_greedy", "pass1_multistep", "pass1_sampled", "pass1_sampled_multistep")
    return {"persd_heldout": {"task": task.name, "n_items": len(items),
                              **{k: {m: (round(v[m], 4) if v[m] is not None else None) for m in metrics}
                                 | {"student_calls": v["student_calls"]} for k, v in summary.items()}}}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's content, or {} when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else {}
