"""Export one HF folder to every requested format, each verified before it is handed on.

Used by the export stage (which records each artifact in the run's registry the moment it passes) and by
``arte-edge export`` (which writes ``verify.json`` beside the files).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from arte_edge.formats import IMATRIX_TYPES, MIXED_TYPES, parse_format
from arte_edge.formats import PLAIN_SUFFIX as PLAIN
from arte_edge.progress import log


def requested_formats(formats: Sequence[str], preset: str | None) -> list[tuple[str, str]]:
    """The recipe's (or command line's) formats plus those of ``preset``, deduplicated, in order."""
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


def export_targets(hf_dir: Path, out_dir: Path, wanted: Sequence[tuple[str, str]], stem: str, *,
                   verify: bool = True, threads: int | None = None, onnx_threads: int = 2, root: Path | None = None,
                   skip: set[str] | None = None, progress: Callable[[str], None] = log,
                   on_artifact: Callable[[dict[str, Any]], None] | None = None,
                   calibration_texts: Sequence[str] | None = None, compare_imatrix: bool = False,
                   auto: Any = None, imatrix: bool = True) -> list[dict[str, Any]]:
    """GGUF files (one f16 conversion, then each quant) and ONNX folders for ``wanted``, as artifact records
    (``name, format, quant, path, size_bytes, verify, details``: the fields of ``arte_edge.artifacts.Artifact``).

    ``threads``: GGUF quantizer/verification threads (None: llama.cpp's defaults); ``onnx_threads``: ONNX
    sessions. ``root``: paths are recorded relative to it (a run directory); ``skip``: artifact names already done;
    ``on_artifact`` is called with each verified artifact as soon as it exists (so a later crash keeps it).
    ``calibration_texts``: the importance matrix of the ≤ 5-bit types (and the auto mix) is computed on them and
    kept as ``<stem>.imatrix.gguf``; ``compare_imatrix`` then also exports each such type without it (artifact
    ``gguf-<type>-plain``; one that fails verification is reported and left out: it is only a comparison).
    ``auto``: the AutoMixBudget of ``gguf:auto`` (calibrated on ``calibration_texts``, which it needs);
    ``imatrix=False``: no importance matrix, the texts only calibrate the auto mix.
    """
    skip = skip or set()
    made: list[dict[str, Any]] = []

    def keep(artifact: dict[str, Any]) -> None:
        made.append(artifact)
        if on_artifact:
            on_artifact(artifact)

    def rel(path: Path) -> str:
        return str(path.relative_to(root)) if root else str(path)

    quants = [q for f, q in wanted if f == "gguf" and f"gguf-{q}" not in skip]
    calibrated = ([q for f, q in wanted if f == "gguf" and q.upper() in IMATRIX_TYPES]
                  if calibration_texts and imatrix else [])
    plain = [q for q in calibrated if q.upper() not in MIXED_TYPES and f"gguf-{q}{PLAIN}" not in skip]
    imatrix_file = out_dir / f"{stem}.imatrix.gguf"
    if quants or (compare_imatrix and plain):
        from arte_edge.export.gguf import GGUFArtifact, export_gguf

        def gguf_done(res: GGUFArtifact, suffix: str = "") -> None:
            details: dict[str, Any] = {"quant": res.quant.to_dict(), "modelfile": str(Path(res.modelfile).name)}
            if res.qtype in IMATRIX_TYPES:
                details["imatrix"] = rel(imatrix_file) if calibrated and not suffix else None
            keep({"name": f"gguf-{res.qtype.lower()}{suffix}", "format": "gguf", "quant": res.qtype.lower(),
                  "path": rel(Path(res.path)), "size_bytes": res.size_bytes, "verify": res.verification or {},
                  "details": details})

        if quants:
            export_gguf(hf_dir, out_dir, quants, stem, progress=progress, verify=verify, threads=threads,
                        on_artifact=gguf_done, imatrix_texts=calibration_texts, auto=auto,
                        keep_imatrix=imatrix_file if calibrated else None, imatrix=imatrix)
    for fmt, precision in wanted:
        if fmt != "onnx" or f"onnx-{precision}" in skip:
            continue
        from arte_edge.export.onnx import export_onnx

        folder = out_dir / f"{stem}-onnx-{precision}"
        res = export_onnx(hf_dir, folder, precision, progress=progress, threads=onnx_threads,  # type: ignore[arg-type]
                          verify=verify)
        # verify.json carries how the weights are stored (per dtype, largest tensors, embedding and LM head)
        keep({"name": f"onnx-{precision}", "format": "onnx", "quant": precision, "path": rel(folder),
              "size_bytes": res.size_bytes, "verify": {**(res.verification or {}), "tensors": res.tensors},
              "details": {}})
    if compare_imatrix and plain:  # last: a comparison arm never holds up what ships
        from arte_edge.export.errors import VerificationError

        progress(f"exporting {', '.join(plain)} again without the importance matrix (for the report)")
        try:
            export_gguf(hf_dir, out_dir, plain, f"{stem}{PLAIN}", progress=progress, verify=verify, threads=threads,
                        on_artifact=lambda res: gguf_done(res, PLAIN))
        except VerificationError as exc:
            progress(f"the plain comparison file was left out (the shipped ones are unaffected): {exc}")
    return made


def calibration_file_texts(path: Path, hf_dir: Path) -> list[str]:
    """Calibration texts from a file: JSONL conversations (``messages`` per line) rendered by the model's chat
    template, or any other file as plain text (one text per blank-line-separated paragraph)."""
    from arte_edge.errors import ArteError
    from arte_edge.export.reference import chat_texts
    from arte_edge.rundir import read_jsonl

    if not path.is_file():
        raise ArteError(f"{path}: calibration file not found (or not a file); give a run's data/examples.jsonl or "
                        "a text file")
    if path.suffix.lower() == ".jsonl":
        convs = [r["messages"] for r in read_jsonl(path) if isinstance(r, dict) and r.get("messages")]
        bad = next((i for i, c in enumerate(convs) if not isinstance(c, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in c)),
            None)
        if not convs or bad is not None:
            raise ArteError(f"{path}: each line needs `messages`: a list of {{role, content}} strings "
                            f"({'none found' if not convs else f'conversation {bad + 1} is not'}); or give a text file")
        return chat_texts(hf_dir, convs)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ArteError(f"{path}: calibration text is not UTF-8; convert it (iconv -t utf-8)") from None
    texts = [t.strip() for t in text.split("\n\n") if t.strip()]
    if not texts:
        raise ArteError(f"{path}: calibration file is empty")
    return texts


def verification_rows(artifacts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``verify.json`` of ``arte-edge export`` holds: path, size, quant fallbacks and verification."""
    return [{"path": a["path"], "size_bytes": a["size_bytes"], "verification": a["verify"],
             **({"fallback": a["details"]["quant"].get("n_fallback")} if "quant" in a["details"] else {})}
            for a in artifacts]
