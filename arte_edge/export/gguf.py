"""Export a Hugging Face causal LM to GGUF files for llama.cpp / Ollama, each verified before it appears.

Pipeline: HF folder → f16 GGUF (llama.cpp's own ``convert_hf_to_gguf.py``, converter.py) → optionally an
importance matrix (imatrix.py) → each quant type from the f16 (llama.cpp's C quantizer through
llama-cpp-python, quantize.py) → verification against the HF model (verify.py) → rename to the final name,
plus an Ollama ``Modelfile`` next to it (modelfile.py). ``cached_gguf`` reuses an export while its source
folder is unchanged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.export.converter import Progress, convert_to_gguf
from arte_edge.export.imatrix import compute_imatrix
from arte_edge.export.mix import AutoMixBudget
from arte_edge.export.modelfile import write_modelfile
from arte_edge.export.quantize import QuantResult, quant_result, quantize_gguf
from arte_edge.formats import GGUF_TYPES, IMATRIX_TYPES, normalize_qtype


@dataclass(frozen=True)
class GGUFArtifact:
    """One finished GGUF file (verified unless verification was switched off) and its Ollama Modelfile."""

    path: Path
    qtype: str
    size_bytes: int
    modelfile: Path
    quant: QuantResult
    verification: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"path": str(self.path), "qtype": self.qtype, "size_bytes": self.size_bytes,
                "modelfile": str(self.modelfile), "quant": self.quant.to_dict(),
                "verification": self.verification}


def artifact_name(name: str, qtype: str) -> str:
    """File name of one artifact: ``<name>.<qtype lower>.gguf``."""
    return f"{name}.{qtype.lower()}.gguf"


def source_record(hf_dir: str | Path) -> dict[str, Any]:
    """What identifies an HF folder's weights for caching: its resolved path and each file's size and mtime."""
    folder = Path(hf_dir).resolve()
    return {"hf_dir": str(folder), "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns]
                                             for p in sorted(folder.iterdir()) if p.is_file()}}


def cached_gguf(hf_dir: str | Path, out_dir: str | Path, qtype: str, name: str, progress: Progress | None = None,
                *, verify: bool = True, threads: int | None = None) -> Path:
    """``out_dir/<name>.<qtype>.gguf`` exported from ``hf_dir`` (verified unless ``verify=False``), reused only
    while ``<name>.<qtype>.source.json`` says it came from this very folder (same files, sizes and mtimes) with
    at least this much verification: a retrained or different model is exported again."""
    final = Path(out_dir) / artifact_name(name, normalize_qtype(qtype))
    record_path = final.with_name(final.name.removesuffix(".gguf") + ".source.json")
    wanted = {**source_record(hf_dir), "verified": verify}
    try:
        done = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = {}
    reusable = (final.exists() and done.get("hf_dir") == wanted["hf_dir"] and done.get("files") == wanted["files"]
                and (done.get("verified") or not verify))
    if not reusable:
        record_path.unlink(missing_ok=True)
        export_gguf(hf_dir, out_dir, [qtype], name, progress, verify=verify, threads=threads)
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(wanted, indent=1))
        os.replace(tmp, record_path)
    return final


def export_gguf(
    hf_dir: str | Path,
    out_dir: str | Path,
    quants: Sequence[str],
    name: str,
    progress: Progress | None = None,
    *,
    verify: bool = True,
    prompts: Sequence[Sequence[dict[str, str]]] | None = None,
    texts: Sequence[str] | None = None,
    thresholds: dict[str, dict[str, Any]] | None = None,
    imatrix_texts: Sequence[str] | None = None,
    allow_no_chat_template: bool = False,
    threads: int | None = None,
    on_artifact: Callable[[GGUFArtifact], None] | None = None,
    auto: AutoMixBudget | None = None,
    keep_imatrix: Path | None = None,
    imatrix: bool = True,
) -> list[GGUFArtifact]:
    """Export ``hf_dir`` as one GGUF per entry of ``quants`` into ``out_dir``, each with an Ollama Modelfile.

    The f16 GGUF is converted once and every quant is made from it; f16 is kept only when listed in
    ``quants``. Each file is written under a temporary name, verified against the HF model (verify.py;
    ``verify=False`` skips it), and only then renamed to ``<name>.<qtype>.gguf``. A verification failure
    raises VerificationError and leaves the file as ``<name>.<qtype>.unverified.gguf`` for inspection.
    ``thresholds`` overrides verification thresholds per type (``{"Q4_K_M": {"min_top1": 0.9}}``).
    ``imatrix_texts``: compute an importance matrix on these texts and use it for the types of 5 bits or fewer
    (``formats.IMATRIX_TYPES``); ``keep_imatrix``: where to keep that matrix (default: deleted after).
    ``auto``: the budget of the AUTO type (a per-tensor mix, mix.py), calibrated on ``imatrix_texts`` (required);
    ``imatrix=False``: those texts calibrate the mix only, no importance matrix is made.
    ``on_artifact`` is called with each finished artifact (so a caller can record it before the next one).
    ``threads``: quantizer threads (default: cores, up to 8) and verification/imatrix threads (default 1).
    """
    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir).resolve()
    names = _unique([normalize_qtype(q) for q in quants])
    if not names:
        raise ArteError("no GGUF quant types requested; list at least one (e.g. q4_k_m)")
    if not re.fullmatch(r"[\w.\-]+", name):
        raise ArteError(f"artifact name {name!r} must be letters, digits, '.', '-' or '_'")
    say = progress or (lambda _m: None)
    if "AUTO" in names and auto is None:
        raise ArteError("gguf:auto needs a budget (export.auto: max_size_mb, min_decode_tok_s or max_kl)")
    if "AUTO" in names and not imatrix_texts:
        raise ArteError("gguf:auto needs calibration texts (a run's training data, or arte-edge export --calibration): "
                        "its sensitivities are measured on them and its KL checked on other texts")
    if "AUTO" in names and auto is not None and auto.max_kl is not None and not verify:
        raise ArteError("gguf:auto with max_kl needs verification (the KL is measured there); drop --no-verify "
                        "or export.verify: false")
    out_dir.mkdir(parents=True, exist_ok=True)
    f16 = out_dir / f".{name}.f16.work.gguf"
    artifacts: list[GGUFArtifact] = []
    imatrix_path: Path | None = None
    reference: list[Any] = []  # the HF model's outputs, computed at the first verification and reused
    try:
        convert_to_gguf(hf_dir, f16, "f16", say, allow_no_chat_template=allow_no_chat_template)
        if imatrix and imatrix_texts and IMATRIX_TYPES & set(names):
            imatrix_path = keep_imatrix or out_dir / f".{name}.imatrix.gguf"
            compute_imatrix(f16, imatrix_texts, imatrix_path, threads=threads, progress=say)
        # F16 last: it is the source of the others and is then moved, not copied
        for qtype in sorted(names, key=lambda q: q == "F16"):
            final = out_dir / artifact_name(name, qtype)
            work = out_dir / f".{name}.{qtype.lower()}.work.gguf"
            if qtype == "F16":
                os.replace(f16, work)
                result = quant_result(work, "F16", "", 0.0, None)
            elif qtype == "AUTO":
                result, mix = _auto_mix(hf_dir, f16, work, final, auto, imatrix_texts, imatrix_path, say, reference,
                                        prompts, texts, threads, verify)
            else:
                say(f"quantizing {name} to {qtype}")
                result = quantize_gguf(f16, work, qtype, imatrix_path if qtype in IMATRIX_TYPES else None,
                                       threads=threads)
                say(f"{qtype}: {result.size_bytes / 1e6:.1f} MB, {result.bits_per_weight:.2f} bpw, "
                    f"{result.n_fallback}/{result.n_tensors} tensors fell back")
            report = None
            if qtype == "AUTO":
                report = mix.pop("verification")
                result = replace(result, source={**result.source, "mix": mix})
            elif verify:
                limits = {k.upper(): v for k, v in (thresholds or {}).items()}.get(qtype)
                report = _verify_artifact(hf_dir, work, final, qtype, limits, say, reference, prompts, texts,
                                          threads)
            else:
                from arte_edge.export.verify import check_gguf_loads_in_llama_cpp

                check_gguf_loads_in_llama_cpp(work, threads=threads)
            os.replace(work, final)
            modelfile = write_modelfile(final, hf_dir)
            artifact = GGUFArtifact(final, qtype, final.stat().st_size, modelfile, _moved(result, final), report)
            artifacts.append(artifact)
            if on_artifact is not None:
                on_artifact(artifact)
            say(f"wrote {final.name} ({final.stat().st_size / 1e6:.1f} MB)")
    finally:
        f16.unlink(missing_ok=True)
        if imatrix_path is not None and imatrix_path != keep_imatrix:
            imatrix_path.unlink(missing_ok=True)
        for leftover in out_dir.glob(f".{name}.*.work.gguf"):
            leftover.unlink(missing_ok=True)
    return sorted(artifacts, key=lambda a: names.index(a.qtype))


def _verify_artifact(hf_dir: Path, work: Path, final: Path, qtype: str, thresholds: dict[str, Any] | None,
                     say: Progress, reference: list[Any], prompts: Any, texts: Any,
                     threads: int | None, raise_on_failure: bool = True) -> dict[str, Any]:
    from arte_edge.export.errors import VerificationError
    from arte_edge.export.reference import hf_reference
    from arte_edge.export.verify import verify_gguf

    if not reference:
        say(f"running {hf_dir.name} (fp32) on the verification prompts and texts")
        kwargs = {k: v for k, v in (("prompts", prompts), ("texts", texts)) if v is not None}
        reference.append(hf_reference(hf_dir, threads=threads, **kwargs))
    say(f"verifying {final.name} against {hf_dir.name} (tokenizer, greedy, next-token KL)")
    try:
        return verify_gguf(hf_dir, work, exact=GGUF_TYPES[qtype].thresholds.exact_greedy, qtype=qtype, label=final.name,
                           thresholds=thresholds, reference=reference[0], threads=threads,
                           raise_on_failure=raise_on_failure)
    except VerificationError:
        os.replace(work, final.with_name(final.name.removesuffix(".gguf") + ".unverified.gguf"))
        raise


def _auto_mix(hf_dir: Path, f16: Path, work: Path, final: Path, budget: AutoMixBudget, texts_calib: Any,
              imatrix: Path | None, say: Progress, reference: list[Any], prompts: Any, texts: Any,
              threads: int | None, verify: bool) -> tuple[QuantResult, dict[str, Any]]:
    """Build the auto mix and verify it; with only ``max_kl``, replan (at most 3 times) with a lower KL target
    until the verified KL meets it (the planner predicts KL on calibration text, the check is on held-out text)."""
    from arte_edge.export.mix import build_auto_mix, mix_record

    calib = list(texts_calib)
    sens, target, report = None, budget.max_kl, None
    for attempt in range(3):
        result, plan, sens = build_auto_mix(f16, hf_dir, work, budget, calib, imatrix=imatrix, threads=threads or 2,
                                            progress=say, sensitivity=sens, kl_target=target)
        limits = {"max_kl": budget.max_kl} if budget.max_kl is not None else None
        report = (_verify_artifact(hf_dir, work, final, "AUTO", limits, say, reference, prompts, texts, threads,
                                   raise_on_failure=False) if verify else None)
        if not verify:  # like every unverified type: it must at least load and give finite logits
            from arte_edge.export.verify import check_gguf_loads_in_llama_cpp

            check_gguf_loads_in_llama_cpp(work, threads=threads)
        measured = report["next_token"]["kl_mean"] if report else None
        only_kl = budget.max_kl is not None and not (budget.max_size_mb or budget.max_read_bytes)
        if report is None or report["passed"] or not only_kl or attempt == 2 or not measured:
            break
        target = plan.predicted_kl * budget.max_kl / measured * 0.9
        say(f"auto mix: measured KL {measured:.4f} > max_kl {budget.max_kl:g}; replanning for {target:.4f}")
    if report is not None and not report["passed"]:
        from arte_edge.export.errors import VerificationError

        os.replace(work, final.with_name(final.name.removesuffix(".gguf") + ".unverified.gguf"))
        err = VerificationError(f"{final.name}: GGUF verification failed (AUTO, {budget.describe()}): "
                                f"{report['failures'][0]}")
        err.report = report  # type: ignore[attr-defined]
        raise err
    record = mix_record(plan, sens, budget, report["next_token"]["kl_mean"] if report else None)
    return result, {**record, "verification": report}


def _moved(result: QuantResult, path: Path) -> QuantResult:
    return replace(result, path=path)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
