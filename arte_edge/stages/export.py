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
from arte_edge.rundir import atomic_write_json


def run(ctx: RunContext) -> dict[str, Any]:
    """Export the merged student to every requested format."""
    merged = ctx.run.merged_dir
    if not (merged / "config.json").exists():
        raise ArteError(f"{merged}: no merged model; run the merge stage first")
    cfg = ctx.recipe.export
    done = {a.name for a in read_exported(ctx.run.root)}
    export_targets(merged, ctx.run.artifacts_dir, requested_formats(cfg.formats, cfg.preset), ctx.recipe.name,
                   verify=cfg.verify, onnx_threads=ctx.recipe.evaluate.threads, root=ctx.run.root, skip=done,
                   on_artifact=lambda row: record_exported(ctx.run.root, Artifact(**row)))
    artifacts = read_exported(ctx.run.root)
    atomic_write_json(ctx.run.artifacts_dir / "verify.json", {a.name: a.verify for a in artifacts})
    return {"artifacts": [{"name": a.name, "size_bytes": a.size_bytes,
                           "n_fallback": a.details.get("quant", {}).get("n_fallback")} for a in artifacts],
            "verify": "artifacts/verify.json"}
