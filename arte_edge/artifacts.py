"""The models a run evaluates and benchmarks: the base student, the merged student, each exported file.

Exported artifacts are listed in ``artifacts/artifacts.json`` (written by the export stage after each one
passed verification); the base and merged students are implied by the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.errors import ArteError
from arte_edge.formats import PLAIN_SUFFIX
from arte_edge.rundir import RunDir, atomic_write_json

if TYPE_CHECKING:
    from arte_edge.backends.base import ChatModel
    from arte_edge.runctx import RunContext

FORMATS = ("hf", "gguf", "onnx")


@dataclass(frozen=True)
class Artifact:
    """One runnable model file or folder."""

    name: str
    format: str  # hf | gguf | onnx
    quant: str  # fp32, f16, q8_0, q4_k_m, int4, ...
    path: str  # relative to the run directory, or absolute
    role: str = "export"  # base | merged | export | variant
    size_bytes: int = 0
    verify: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # e.g. quant fallbacks

    def resolve(self, root: Path) -> Path:
        """The artifact's location on disk."""
        p = Path(self.path)
        return p if p.is_absolute() else root / p

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def disk_size(path: Path) -> int:
    """Bytes of a file, or of the weight files in a folder."""
    if path.is_file():
        return path.stat().st_size
    weights = {".safetensors", ".bin", ".onnx", ".data", ".gguf"}
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in weights)


def content_key(artifact: Artifact, root: Path, *extra: object) -> str:
    """A short key that changes when the artifact's runtime or any of its weight files changes (size or mtime),
    e.g. after retraining or re-export; ``extra`` adds settings (token limits) the key must also cover."""
    import hashlib

    path = artifact.resolve(root)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
    stamp = [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
             for p in files]
    text = json.dumps([artifact.format, artifact.quant, stamp, [str(x) for x in extra]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def registry_path(root: Path) -> Path:
    """``artifacts/artifacts.json`` of the run at ``root``: every exported artifact that passed verification."""
    return RunDir(root).artifacts_dir / "artifacts.json"


def read_exported(root: Path) -> list[Artifact]:
    """Exported artifacts recorded by the export stage."""
    path = registry_path(root)
    if not path.exists():
        return []
    return [Artifact(**row) for row in json.loads(path.read_text())]


def record_exported(root: Path, artifact: Artifact) -> None:
    """Add or replace one exported artifact in the registry (atomic)."""
    rows = [a for a in read_exported(root) if a.name != artifact.name] + [artifact]
    atomic_write_json(registry_path(root), [a.to_dict() for a in rows])


def base_artifact(student_model: str) -> Artifact:
    """The untrained student, as the fp32 HF folder it is trained from."""
    from arte_edge import models

    folder = models.hf_folder(student_model)
    return Artifact("base", "hf", "fp32", str(folder), role="base", size_bytes=disk_size(folder))


def merged_artifact(root: Path) -> Artifact | None:
    """The merged fine-tuned student, when the merge stage has run."""
    run = RunDir(root)
    folder = run.merged_dir
    if not (folder / "config.json").exists():
        return None
    return Artifact("merged", "hf", "fp32", str(folder.relative_to(run.root)), role="merged",
                    size_bytes=disk_size(folder))


def list_artifacts(ctx: RunContext, *, include_base: bool = True) -> list[Artifact]:
    """Base student (optional), merged student, then every exported artifact."""
    out = [base_artifact(ctx.recipe.student.model)] if include_base else []
    merged = merged_artifact(ctx.run.root)
    if merged is not None:
        out.append(merged)
    return out + read_exported(ctx.run.root)


def newer_than_folder(path: Path, folder: Path) -> bool:
    """True when ``path`` exists and is at least as new as every file directly in ``folder`` (an export made
    from that folder after its last change)."""
    newest = max((p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()), default=0)
    return path.exists() and path.stat().st_mtime_ns >= newest


def as_gguf(artifact: Artifact, root: Path, quant: str, *, verify: bool = True, threads: int = 2,
            out_dir: Path | None = None) -> Artifact:
    """An HF student (base or merged) as the verified GGUF of type ``quant`` it would ship as.

    The merged student reuses the export stage's plain ``gguf-<quant>`` (or ``gguf-<quant>-plain``) file when that
    is newer than the merged folder (a file made with the run's importance matrix is not reused: base and variants
    are quantized without one);
    anything else is exported once to ``out_dir`` (default ``eval/models/<name>/``; reused while its source
    folder is unchanged).
    """
    from arte_edge.export.gguf import cached_gguf
    from arte_edge.progress import log

    folder = artifact.resolve(root)
    exported = {a.name: a for a in read_exported(root)}
    # one path: base and variants are quantized plain, so the merged row reuses a plain export only (the one
    # made with the run's importance matrix differs in more than the training data)
    shipped = next((a for a in (exported.get(f"gguf-{quant}"), exported.get(f"gguf-{quant}{PLAIN_SUFFIX}"))
                    if a is not None and not a.details.get("imatrix")), None)
    if artifact.role == "merged" and shipped is not None and newer_than_folder(shipped.resolve(root), folder):
        path = shipped.resolve(root)
    else:
        path = cached_gguf(folder, out_dir or RunDir(root).eval_model_dir(artifact.name), quant, artifact.name, log,
                           verify=verify, threads=threads)
    return Artifact(artifact.name, "gguf", quant, str(path), role=artifact.role, size_bytes=disk_size(path))


def open_artifact(artifact: Artifact, root: Path, *, threads: int = 2, n_ctx: int = 2048,
                  device_faithful: bool = False, hf_batch_size: int = 8) -> ChatModel:
    """A chat model running the artifact on its native runtime.

    ``device_faithful``: decode a GGUF one conversation at a time, as the device will. Batched llama.cpp
    decoding is faster for big models but changes float rounding, so greedy text can differ from batch-1
    (seen on 19 of 48 SmolLM2 answers here); accuracy must be that of the shipped runtime. ``hf_batch_size``: rows
    decoded together (continuous batching) by a torch (fp32) model.
    """
    path = artifact.resolve(root)
    if not path.exists():
        raise ArteError(f"{path}: artifact {artifact.name!r} is missing; re-run the export stage")
    if artifact.format == "hf":
        from arte_edge.backends.hf import HFChat

        return HFChat(path, threads=threads, name=artifact.name, batch_size=hf_batch_size)
    if artifact.format == "gguf":
        from arte_edge.backends.llamacpp import LlamaCppChat

        return LlamaCppChat(path, threads=threads, n_ctx=n_ctx, name=artifact.name,
                            batch_size=1 if device_faithful else 8)
    if artifact.format == "onnx":
        from arte_edge.backends.onnx import OnnxChat

        return OnnxChat(path, threads=threads, name=artifact.name)
    raise ArteError(f"artifact {artifact.name!r}: unknown format {artifact.format!r} (expected one of {FORMATS})")
