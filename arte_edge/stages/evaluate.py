"""Stage `evaluate`: accuracy of the base student and of every artifact on the same held-out items.

Per-item predictions go to ``eval/<artifact>.jsonl`` (resumable), summaries with 95% Wilson intervals and a
paired McNemar test against the base student to ``eval/summary.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from arte_edge.artifacts import Artifact, as_gguf, content_key, list_artifacts, open_artifact
from arte_edge.backends.base import ChatModel, SamplingParams
from arte_edge.methods.common import answer_messages
from arte_edge.progress import progress
from arte_edge.rundir import JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl
from arte_edge.stages.context import StageContext
from arte_edge.stats import accuracy_summary, mcnemar_p
from arte_edge.tasks.base import Item, Task

# Stop decoding once a complete answer line is followed by more text (small models ramble on).
ANSWER_DONE = r"(?im)^\s*\**\s*(final\s+)?answer\s*\**\s*[:：][^\n]*\S[^\n]*\n"


def eval_params(task: Task, max_tokens: int) -> SamplingParams:
    """Greedy decoding, stopped early once the answer is given (not for code)."""
    return SamplingParams(max_tokens=max_tokens, temperature=0.0,
                          stop_regex=None if task.kind == "code" else ANSWER_DONE)


def evaluate_model(model: ChatModel, task: Task, items: Sequence[Item], out_path, params: SamplingParams,
                   batch_size: int = 8, label: str = "", key: str | None = None) -> list[dict[str, Any]]:
    """Answer and check every item; rows already in ``out_path`` are kept (resume). With ``key`` (see
    ``artifacts.content_key``) only rows written under the same key count: a retrained, re-exported or
    differently run model is scored afresh."""
    written = read_jsonl(out_path)
    rows = {r["item_id"]: r for r in written if key is None or r.get("key") == key}
    if len(rows) < len(written):  # rows of another model or runtime (or duplicates): the file keeps only these
        atomic_write_text(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values()))
    todo = [item for item in items if item.id not in rows]
    appender = JsonlAppender(out_path)
    with progress(f"evaluate {label}", len(items)) as advance:
        advance(len(items) - len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            completions = model.chat_batch([answer_messages(task, item) for item in batch], params)
            new = [_row(task, item, completion) | ({"key": key} if key else {})
                   for item, completion in zip(batch, completions, strict=True)]
            appender.write_batch(new)
            rows.update({r["item_id"]: r for r in new})
            advance(len(batch))
    return [rows[item.id] for item in items]


def _row(task: Task, item: Item, completion) -> dict[str, Any]:
    check = task.check(item, completion.text) if completion.ok else None
    flexible = task.check_flexible(item, completion.text) if completion.ok else None
    return {"item_id": item.id, "correct": bool(check and check.correct),
            "correct_flexible": bool(flexible and flexible.correct),
            "predicted": check.predicted if check else None,
            "reason": check.reason if check else f"generation error: {completion.error}",
            "completion": completion.text, "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens, "seconds": round(completion.seconds, 3)}


def summarise(rows_by_artifact: dict[str, list[dict[str, Any]]], reference: str | None) -> dict[str, Any]:
    """Accuracy, interval and paired p-value vs ``reference`` for each artifact."""
    out: dict[str, Any] = {}
    ref = [r["correct"] for r in rows_by_artifact.get(reference, [])] if reference else []
    for name, rows in rows_by_artifact.items():
        flags = [r["correct"] for r in rows]
        summary: dict[str, Any] = accuracy_summary(flags)
        # Rows written before flexible extraction existed count as their strict verdict.
        flexible = accuracy_summary([r.get("correct_flexible", r["correct"]) for r in rows])
        summary.update({f"{k}_flexible": flexible[k] for k in ("accuracy", "ci_low", "ci_high")})
        summary["answered"] = round(sum(r.get("predicted") is not None for r in rows) / max(1, len(rows)), 4)
        summary["mean_completion_tokens"] = round(sum(r["completion_tokens"] for r in rows) / max(1, len(rows)), 1)
        if ref and name != reference and len(ref) == len(flags):
            summary[f"mcnemar_p_vs_{reference}"] = round(mcnemar_p(flags, ref), 4)
        out[name] = summary
    return out


def run(ctx: StageContext, artifacts: list[Artifact] | None = None) -> dict[str, Any]:
    """Evaluate every artifact of the run (and the base student) on the held-out split."""
    cfg = ctx.recipe.evaluate
    items = ctx.split("eval")
    params = eval_params(ctx.task, cfg.max_tokens)
    chosen = artifacts if artifacts is not None else list_artifacts(ctx, include_base=cfg.include_base)
    plan, same_as = in_eval_runtime(ctx, chosen)
    rows_by_artifact: dict[str, list[dict[str, Any]]] = {}
    for artifact in plan:
        model = open_artifact(artifact, ctx.run.root, threads=cfg.threads, device_faithful=True)
        try:
            out_path = ctx.run.path("eval", f"{artifact.name}.jsonl")
            rows_by_artifact[artifact.name] = evaluate_model(
                model, ctx.task, items, out_path, params, label=artifact.name,
                key=content_key(artifact, ctx.run.root, params.max_tokens))
        finally:
            model.close()
    rows_by_artifact.update({alias: rows_by_artifact[name] for alias, name in same_as.items()})
    reference = "base" if "base" in rows_by_artifact else None
    summary = summarise(rows_by_artifact, reference)
    opened = {a.name: a for a in plan}
    for name, row in summary.items():  # the runtime each row was scored in
        row.update(format=opened[same_as.get(name, name)].format, quant=opened[same_as.get(name, name)].quant)
    atomic_write_json(ctx.run.path("eval", "summary.json"), summary)
    outputs = {"summary": "eval/summary.json", "n_eval": len(items),
               "accuracy": {k: round(v["accuracy"], 4) for k, v in summary.items()}}
    return {**outputs, **method_evaluation(ctx, rows_by_artifact)}


def in_eval_runtime(ctx: StageContext, chosen: list[Artifact]) -> tuple[list[Artifact], dict[str, str]]:
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


def method_evaluation(ctx: StageContext, rows_by_artifact: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """A method's own extra evaluation (e.g. PERsD's pass@k and multi-step inference), when it defines one."""
    import importlib

    module = importlib.import_module(f"arte_edge.methods.{ctx.recipe.method}")
    hook = getattr(module, "evaluate_extra", None)
    return (hook(ctx, rows_by_artifact) or {}) if hook else {}


def safe_name(text: str) -> str:
    """A file-name-safe artifact name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
