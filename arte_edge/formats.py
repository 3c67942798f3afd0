"""The one list of export formats: GGUF quant types and ONNX precisions, with what each needs to pass.

Every other list is derived from the tables here: the recipe's ``export.formats`` validation, the export
presets, the stage, the quantizer (llama.cpp ftype constants, resolved lazily so that loading a recipe never
imports llama_cpp) and the verification thresholds. Stdlib only: config validators import this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

from arte_edge.errors import ArteError


@dataclass(frozen=True)
class Thresholds:
    """What an artifact of one type must reach against its HF source. ``max_kl``: mean KL(HF || artifact) in
    nats per position.

    ``tie_atol``: max |Δlogit| under which a greedy divergence of an exact-greedy GGUF counts as a tie flip.
    ``min_greedy_agreement``: floor on the greedy agreement of non-exact files (0 = report only).
    """

    exact_greedy: bool
    min_top1: float
    max_kl: float
    tie_atol: float = 0.05
    min_greedy_agreement: float = 0.0


@dataclass(frozen=True)
class GGUFType:
    """One GGUF quant type: the ``llama_cpp`` ftype constant that makes it, the ggml type most tensors get,
    approximate bits per weight (only to check free disk space) and its verification thresholds.

    Q4_K_M/Q5_K_M are mixes: llama.cpp also gives some tensors Q6_K on purpose; those are "off base" but not
    fallbacks.
    """

    ftype: str
    base_type: str
    approx_bpw: float
    thresholds: Thresholds


def _q(ftype: str, base: str, bpw: float, min_top1: float, max_kl: float) -> GGUFType:
    return GGUFType(f"LLAMA_FTYPE_MOSTLY_{ftype}", base, bpw, Thresholds(False, min_top1, max_kl))


# Thresholds calibrated on SmolLM2-135M-Instruct (hidden 576, so K-quants fall back on 180/272 tensors; its HF
# weights are themselves dequantized from a Q4_1 GGUF, a pessimistic case for requantizing) with the default
# prompts and texts (479 teacher-forced positions: top-1 has a standard error of ~0.01-0.02):
#   type     top-1   KL(HF||GGUF)  greedy agreement   size      with an imatrix (top-1 / KL / greedy)
#   F16      1.000   3.7e-6        1.00 (exact)       270.9 MB  max |Δlogit| 0.065
#   Q8_0     0.965   0.0039        1.00               144.8 MB
#   Q6_K     0.958   0.011         0.91               138.4 MB  (180 tensors are Q8_0 by fallback)
#   Q5_K_M   0.875   0.075         0.59               112.1 MB  0.965 / 0.0069 / 0.91
#   Q4_K_M   0.898   0.056         0.77               105.5 MB  0.919 / 0.032 / 0.84
#   Q4_0     0.745   0.323         0.34                91.7 MB  0.793 / 0.193 / 0.75
# Floors sit >= 2 standard errors under those measurements and KL ceilings at ~1.5-5x, so a healthy export
# of another small student passes while a broken one (wrong tokenizer, norm or RoPE layout: KL >> 1) does
# not. Q8_0's floor is 0.93 rather than 0.95 (its flips are near-ties at KL 0.004; 0.95 is ~2 standard
# errors away); Q4_0/Q4_1 get 0.70 (0.80 would reject a plain Q4_0 of SmolLM2).
GGUF_TYPES: dict[str, GGUFType] = {
    "F32": GGUFType("LLAMA_FTYPE_ALL_F32", "F32", 32.0, Thresholds(True, 0.99, 1e-3, tie_atol=0.05)),
    "F16": GGUFType("LLAMA_FTYPE_MOSTLY_F16", "F16", 16.0, Thresholds(True, 0.99, 5e-3, tie_atol=0.25)),
    "BF16": GGUFType("LLAMA_FTYPE_MOSTLY_BF16", "BF16", 16.0, Thresholds(True, 0.98, 2e-2, tie_atol=1.0)),
    "Q8_0": _q("Q8_0", "Q8_0", 8.5, 0.93, 0.02),
    "Q6_K": _q("Q6_K", "Q6_K", 6.6, 0.90, 0.05),
    "Q5_K_M": _q("Q5_K_M", "Q5_K", 5.7, 0.80, 0.3),
    "Q5_K_S": _q("Q5_K_S", "Q5_K", 5.5, 0.80, 0.3),
    "Q5_0": _q("Q5_0", "Q5_0", 5.5, 0.80, 0.3),
    "Q5_1": _q("Q5_1", "Q5_1", 6.0, 0.80, 0.3),
    "Q4_K_M": _q("Q4_K_M", "Q4_K", 4.9, 0.80, 0.3),
    "Q4_K_S": _q("Q4_K_S", "Q4_K", 4.6, 0.80, 0.3),
    "Q4_0": _q("Q4_0", "Q4_0", 4.5, 0.70, 0.5),
    "Q4_1": _q("Q4_1", "Q4_1", 5.0, 0.70, 0.5),
    "Q3_K_M": _q("Q3_K_M", "Q3_K", 3.9, 0.60, 1.0),
    "Q2_K": _q("Q2_K", "Q2_K", 3.4, 0.45, 2.0),
    # A per-tensor mix chosen to a budget (export.auto, export/mix_plan.py): its cheapest level is 4-bit, so it
    # is held to the 4-bit floors; the file's general.file_type says "guessed" (llama.cpp's word for a mix).
    "AUTO": GGUFType("LLAMA_FTYPE_GUESSED", "mixed", 6.0, Thresholds(False, 0.70, 0.5)),
}
# Types made by llama.cpp's quantizer from per-tensor overrides instead of one of its own ftypes.
MIXED_TYPES: frozenset[str] = frozenset({"AUTO"})
# Types quantized with the run's importance matrix (export.imatrix): 5 bits or fewer, where it measurably lowers
# KL (formats table above: Q4_K_M 0.056 -> 0.032, Q5_K_M 0.075 -> 0.007); 6-bit and up are left plain.
IMATRIX_TYPES: frozenset[str] = frozenset(
    name for name, t in GGUF_TYPES.items() if t.base_type[:2] in {"Q2", "Q3", "Q4", "Q5"}) | MIXED_TYPES
# The GGUF types llama.cpp's converter writes itself (no C quantizer pass), by their converter name.
CONVERTER_OUTTYPES: dict[str, str] = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}

# Name suffix of an artifact quantized without the run's importance matrix: the comparison arm of export.imatrix.
PLAIN_SUFFIX = "-plain"

OnnxPrecision = Literal["fp32", "int8", "int4"]
# Calibrated on SmolLM2-135M-Instruct (docs/onnx.md), 7 held-out texts, 479 positions. Measured:
# fp32 top-1 1.0, KL ~1e-11; int8 0.969, 0.004; int4 (builder RTN, block 32) 0.699, 0.397.
# int4 cannot reach 0.80 on this model with any builder option (torch RTN fake-quant gives the same
# 0.70), so its floor sits under the measurement; a broken or wrong export scores far below all of them.
ONNX_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(exact_greedy=True, min_top1=0.99, max_kl=1e-3),
    "int8": Thresholds(exact_greedy=False, min_top1=0.95, max_kl=0.05),
    "int4": Thresholds(exact_greedy=False, min_top1=0.65, max_kl=0.6),
}
ONNX_PRECISIONS: tuple[str, ...] = get_args(OnnxPrecision)
GGUF_QUANTS: tuple[str, ...] = tuple(name.lower() for name in GGUF_TYPES)
# Format name → the quant/precision names a spec ``<format>:<name>`` may use.
FORMATS: dict[str, tuple[str, ...]] = {"gguf": GGUF_QUANTS, "onnx": ONNX_PRECISIONS}


def _gguf_key(qtype: str) -> str:
    return qtype.strip().upper().replace("-", "_")


def normalize_qtype(qtype: str) -> str:
    """Canonical upper-case name (``q4_k_m`` → ``Q4_K_M``); ArteError for an unknown type."""
    name = _gguf_key(qtype)
    if name not in GGUF_TYPES:
        raise ArteError(f"unknown GGUF quant type {qtype!r}; choose one of {', '.join(GGUF_TYPES)}")
    return name


def check_gguf_type(value: str | None) -> str | None:
    """Config validator: the canonical lower-case name of a GGUF type (``Q8-0`` → ``q8_0``), None kept, else
    ValueError."""
    if value is None:
        return None
    if _gguf_key(value) not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {value!r}; choose one of {', '.join(GGUF_QUANTS)}")
    if _gguf_key(value) in MIXED_TYPES:
        raise ValueError(f"{value!r} is a per-tensor mix made only by the export stage (export.auto); choose a fixed "
                         "type such as q8_0 or q4_k_m")
    return _gguf_key(value).lower()


def llama_ftype(qtype: str) -> int:
    """The ``llama_ftype`` value of ``qtype`` in the installed llama_cpp (imported only here)."""
    import llama_cpp

    return int(getattr(llama_cpp, GGUF_TYPES[normalize_qtype(qtype)].ftype))


def qtype_of_ftype(ftype: int) -> str | None:
    """The GGUF type name whose llama_cpp ftype constant is ``ftype`` (a ``general.file_type``), if any."""
    import llama_cpp

    return next((name for name, t in GGUF_TYPES.items() if getattr(llama_cpp, t.ftype) == ftype), None)


def thresholds_for(qtype: str, overrides: dict[str, Any] | None = None) -> Thresholds:
    """The GGUF verification thresholds of ``qtype`` (case-insensitive), with ``overrides`` (field → value)."""
    name = qtype.upper()
    if name not in GGUF_TYPES:
        raise ArteError(f"no verification thresholds for GGUF type {qtype!r}; known: {', '.join(GGUF_TYPES)}")
    limits = GGUF_TYPES[name].thresholds
    if overrides:
        unknown = set(overrides) - set(asdict(limits))
        if unknown:
            raise ArteError(f"unknown GGUF verification threshold(s) {sorted(unknown)}; "
                            f"known: {', '.join(asdict(limits))}")
        limits = replace(limits, **overrides)
    return limits


def format_choices() -> str:
    """Every valid format spec, comma-separated (``gguf:f32, ..., onnx:int4``)."""
    return ", ".join(f"{fmt}:{name}" for fmt, names in FORMATS.items() for name in names)


def _split_spec(spec: str) -> tuple[str, str] | None:
    fmt, _, quant = str(spec).strip().lower().partition(":")
    return (fmt, quant) if quant in FORMATS.get(fmt, ()) else None


def parse_format(spec: str) -> tuple[str, str]:
    """``gguf:q4_k_m`` → ("gguf", "q4_k_m"); ArteError naming ``export.formats`` and the valid specs otherwise."""
    parsed = _split_spec(spec)
    if parsed is None:
        raise ArteError(f"export.formats: {spec!r} is not a known format (choose from {format_choices()})")
    return parsed


def check_formats(specs: list[str]) -> list[str]:
    """Config validator of ``export.formats``: the specs lower-cased, or ValueError naming every unknown one
    and the valid ones."""
    bad = [spec for spec in specs if _split_spec(spec) is None]
    if bad:
        raise ValueError(f"unknown format(s) {', '.join(map(repr, bad))}; choose from {format_choices()}")
    return [str(spec).strip().lower() for spec in specs]
