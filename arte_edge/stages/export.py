"""Stage `export`: merged student → verified GGUF / ONNX artifacts (artifacts/, artifacts/verify.json).

An artifact is added to ``artifacts/artifacts.json`` only after it passed verification against the merged
model, so a crash or a failed check never leaves something that looks shipped. Artifacts already recorded
are skipped on resume.
"""

from __future__ import annotations

from typing import Any

from arte_edge.artifacts import Artifact, read_exported, record_exported
from arte_edge.errors import ArteError
from arte_edge.export.targets import export_targets, requested_formats
from arte_edge.runctx import RunContext
from arte_edge.rundir import atomic_write_json, read_jsonl


def run(ctx: RunContext) -> dict[str, Any]:
    """Export the merged student to every requested format."""
    merged = ctx.run.merged_dir
    if not (merged / "config.json").exists():
        raise ArteError(f"{merged}: no merged model; run the merge stage first")
    cfg = ctx.recipe.export
    done = {a.name for a in read_exported(ctx.run.root)}
    wanted = requested_formats(cfg.formats, cfg.preset)
    auto = ("gguf", "auto") in wanted and "gguf-auto" not in done
    calibration = _calibration_texts(ctx) if cfg.imatrix == "run" or auto else None
    export_targets(merged, ctx.run.artifacts_dir, wanted, ctx.recipe.name,
                   verify=cfg.verify, onnx_threads=ctx.recipe.evaluate.threads, root=ctx.run.root, skip=done,
                   on_artifact=lambda row: record_exported(ctx.run.root, Artifact(**row)),
                   calibration_texts=calibration, compare_imatrix=cfg.compare_imatrix,
                   auto=_auto_budget(ctx) if auto else None, imatrix=cfg.imatrix == "run")
    artifacts = read_exported(ctx.run.root)
    atomic_write_json(ctx.run.artifacts_dir / "verify.json", {a.name: a.verify for a in artifacts})
    return {"artifacts": [{"name": a.name, "size_bytes": a.size_bytes,
                           "n_fallback": a.details.get("quant", {}).get("n_fallback")} for a in artifacts],
            "verify": "artifacts/verify.json"}


def _calibration_texts(ctx: RunContext) -> list[str] | None:
    """The run's training conversations as the merged student's chat template renders them (the importance
    matrix and the auto mix are calibrated on the text the model was trained for); None without examples."""
    from arte_edge.export.reference import chat_texts

    rows = read_jsonl(ctx.run.examples_path) if ctx.run.examples_path.exists() else []
    conversations = [r["messages"] for r in rows if r.get("messages")]
    if not conversations:
        return None
    return chat_texts(ctx.run.merged_dir, conversations)


def _auto_budget(ctx: RunContext) -> Any:
    """export.auto as the export layer's AutoMixBudget; min_decode_tok_s becomes bytes read per token on the
    device profile (its memory bandwidth / the rate: the roofline bound)."""
    from arte_edge.export.mix import AutoMixBudget

    auto = ctx.recipe.export.auto
    if auto is None:
        raise ArteError(f"recipe {ctx.recipe.name}: export.formats has gguf:auto (maybe from the preset) but "
                        "export.auto is missing; add export.auto with max_size_mb, min_decode_tok_s or max_kl")
    read = None
    if auto.min_decode_tok_s:
        from arte_edge.bench.devices import load_device

        profile = load_device(auto.device or ctx.recipe.bench.device)
        read = int(profile.bandwidth_bytes_s / auto.min_decode_tok_s)
    return AutoMixBudget(max_size_mb=auto.max_size_mb, max_read_bytes=read, max_kl=auto.max_kl,
                         layers_per_unit=auto.layers_per_unit, calibration_tokens=auto.calibration_tokens)
