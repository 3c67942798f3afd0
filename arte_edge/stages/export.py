"""Stage `export`: merged student → verified GGUF / ONNX artifacts (artifacts/, artifacts/verify.json).

An artifact is added to ``artifacts/artifacts.json`` only after it passed verification against the merged
model, so a crash or a failed check never leaves something that looks shipped. Artifacts already recorded
are skipped on resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arte_edge.artifacts import Artifact, read_exported, record_exported
from arte_edge.errors import ArteError
from arte_edge.progress import log
from arte_edge.rundir import atomic_write_json
from arte_edge.stages.context import StageContext

GGUF_QUANTS = ("f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0")
ONNX_PRECISIONS = ("fp32", "int8", "int4")


def parse_format(spec: str) -> tuple[str, str]:
    """``gguf:q4_k_m`` → ("gguf", "q4_k_m"); validates both parts."""
    fmt, _, quant = spec.strip().lower().partition(":")
    allowed = {"gguf": GGUF_QUANTS, "onnx": ONNX_PRECISIONS}
    if fmt not in allowed or quant not in allowed[fmt]:
        choices = ", ".join(f"gguf:{q}" for q in GGUF_QUANTS) + ", " + ", ".join(f"onnx:{p}" for p in ONNX_PRECISIONS)
        raise ArteError(f"export.formats: {spec!r} is not a known format (choose from {choices})")
    return fmt, quant


def requested_formats(formats: list[str], preset: str | None) -> list[tuple[str, str]]:
    """The recipe's formats plus those of its preset, deduplicated, in order."""
    specs = list(formats)
    if preset:
        from arte_edge.export.presets import load_export_preset

        specs += load_export_preset(preset)
    out: list[tuple[str, str]] = []
    for spec in specs:
        parsed = parse_format(spec)
        if parsed not in out:
            out.append(parsed)
    return out


def export_gguf_artifacts(merged: Path, out_dir: Path, quants: list[str], name: str, verify: bool,
                          root: Path) -> list[Artifact]:
    """GGUF files for ``quants`` (f16 once, then each quant), each verified before it is recorded."""
    from arte_edge.export.gguf import GGUFArtifact, export_gguf

    artifacts: list[Artifact] = []

    def record(res: GGUFArtifact) -> None:  # each verified file is recorded at once: a crash later does not redo it
        artifact = Artifact(name=f"gguf-{res.qtype.lower()}", format="gguf", quant=res.qtype.lower(),
                            path=str(Path(res.path).relative_to(root)), size_bytes=res.size_bytes,
                            verify=res.verification or {}, details={"quant": res.quant.to_dict(),
                                                                    "modelfile": str(Path(res.modelfile).name)})
        record_exported(root, artifact)
        artifacts.append(artifact)

    export_gguf(merged, out_dir, quants, name, progress=log, verify=verify, on_artifact=record)
    return artifacts


def export_onnx_artifact(merged: Path, out_dir: Path, precision: str, verify: bool, threads: int,
                         root: Path) -> Artifact:
    """One ONNX folder (onnxruntime-genai layout, KV cache), verified before it is recorded."""
    from arte_edge.export.onnx import export_onnx

    res = export_onnx(merged, out_dir, precision, progress=log, threads=threads, verify=verify)  # type: ignore[arg-type]
    artifact = Artifact(name=f"onnx-{precision}", format="onnx", quant=precision,
                        path=str(out_dir.relative_to(root)), size_bytes=res.size_bytes,
                        verify=res.verification or {})
    record_exported(root, artifact)
    return artifact


def run(ctx: StageContext) -> dict[str, Any]:
    """Export the merged student to every requested format."""
    merged = ctx.run.root / "student" / "merged"
    if not (merged / "config.json").exists():
        raise ArteError(f"{merged}: no merged model; run the merge stage first")
    cfg = ctx.recipe.export
    wanted = requested_formats(cfg.formats, cfg.preset)
    done = {a.name for a in read_exported(ctx.run.root)}
    out_dir = ctx.run.path("artifacts", ".keep").parent
    name = ctx.recipe.name
    gguf_todo = [q for f, q in wanted if f == "gguf" and f"gguf-{q}" not in done]
    if gguf_todo:
        export_gguf_artifacts(merged, out_dir, gguf_todo, name, cfg.verify, ctx.run.root)
    for fmt, precision in wanted:
        if fmt == "onnx" and f"onnx-{precision}" not in done:
            export_onnx_artifact(merged, out_dir / f"{name}-onnx-{precision}", precision, cfg.verify,
                                 ctx.recipe.evaluate.threads, ctx.run.root)
    artifacts = read_exported(ctx.run.root)
    atomic_write_json(ctx.run.path("artifacts", "verify.json"), {a.name: a.verify for a in artifacts})
    return {"artifacts": [{"name": a.name, "size_bytes": a.size_bytes,
                           "n_fallback": a.details.get("quant", {}).get("n_fallback")} for a in artifacts],
            "verify": "artifacts/verify.json"}
