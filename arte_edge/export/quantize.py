"""Quantize an f16 GGUF to any GGUF type with llama.cpp's C quantizer (through llama-cpp-python), and account
for what came out: each tensor's type read back from the file, llama.cpp's fallbacks, bits per weight."""

from __future__ import annotations

import ctypes
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.export.imatrix import imatrix_entries
from arte_edge.export.llama_log import capture_llama_log, last_error
from arte_edge.formats import GGUF_TYPES, MIXED_TYPES, llama_ftype, normalize_qtype
from arte_edge.models.gguf_file import read_header, tensor_nbytes
from arte_edge.rundir import ensure_free_space, partial_path

_FALLBACK_TOTAL = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")
_FALLBACK_TENSOR = re.compile(r"warning: (\S+)\s+- ncols.*?type\s+(\w+)\)\s*->\s*falling back to\s+(\w+)",
                              re.DOTALL)


@dataclass(frozen=True)
class QuantResult:
    """What one quantization produced, read back from the file (not from what was asked for).

    ``n_fallback`` counts tensors llama.cpp had to give a different type than its plan because their row
    length is not a multiple of the type's block (K-quants need 256); ``n_off_base`` counts weight matrices
    whose type is not ``base_type`` for any reason (fallbacks plus the deliberate Q6_K/Q8_0 of the mixes).
    """

    path: Path
    qtype: str
    size_bytes: int
    n_tensors: int
    n_fallback: int
    type_histogram: dict[str, int]
    seconds: float
    base_type: str = ""
    n_off_base: int = 0
    bits_per_weight: float = 0.0
    fallback_tensors: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    imatrix: str | None = None
    source: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "path": str(self.path), "qtype": self.qtype, "size_bytes": self.size_bytes, "source": self.source,
            "n_tensors": self.n_tensors, "n_fallback": self.n_fallback, "n_off_base": self.n_off_base,
            "base_type": self.base_type, "bits_per_weight": round(self.bits_per_weight, 3),
            "type_histogram": dict(self.type_histogram), "fallback_tensors": dict(self.fallback_tensors),
            "imatrix": self.imatrix, "seconds": round(self.seconds, 3),
        }


def quantize_gguf(src: str | Path, dst: str | Path, qtype: str, imatrix: Path | None = None,
                  *, threads: int | None = None, tensor_types: dict[str, str] | None = None,
                  metadata: dict[str, str] | None = None) -> QuantResult:
    """Quantize the GGUF ``src`` (normally f16) to ``qtype`` at ``dst`` with llama.cpp's quantizer.

    ``imatrix`` is an importance-matrix GGUF from ``compute_imatrix``. ``qtype`` AUTO (a mix) takes
    ``tensor_types`` (GGUF tensor name → ggml type, e.g. ``{"blk.0.ffn_down.weight": "Q6_K"}``: llama.cpp's
    ``--tensor-type`` overrides, each tensor named exactly) and writes ``general.file_type`` "guessed";
    ``metadata`` adds string keys (each under 128 bytes). The output is written to ``<dst>.partial`` and renamed
    when complete. The result is read back from the file (type histogram, fallbacks, bits per weight).
    """
    import llama_cpp

    name = normalize_qtype(qtype)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ArteError(f"{src}: GGUF to quantize does not exist; convert the model first")
    if (name in MIXED_TYPES) != bool(tensor_types):
        raise ArteError(f"{name}: per-tensor types are given for a mix (AUTO) and only for a mix")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype("Q8_0" if name in MIXED_TYPES else name)  # a mix: every weight is overridden
    params.nthread = threads or min(os.cpu_count() or 1, 8)
    keepalive: Any = []
    if imatrix is not None:
        keepalive.append(imatrix_entries(Path(imatrix)))
        params.imatrix = keepalive[-1][0]
    if tensor_types:
        params.pure = True
        keepalive.append(_tensor_overrides(tensor_types))
        params.tt_overrides = keepalive[-1][0]
        meta = {**(metadata or {}), "general.file_type": llama_ftype(name)}
        keepalive.append(_kv_overrides(meta))
        params.kv_overrides = keepalive[-1]
    partial = partial_path(dst)
    source = describe_gguf(src)
    need = int(1.1 * source["size_bytes"] * GGUF_TYPES[name].approx_bpw / (source["bits_per_weight"] or 16.0))
    ensure_free_space(dst.parent, need, f"the {name} GGUF")
    dst.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with capture_llama_log() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
    seconds = time.perf_counter() - start
    del keepalive
    text = "".join(log)
    if rc != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        ensure_free_space(dst.parent, need, f"the {name} GGUF")  # a full disk fails as "iostream error"
        raise ArteError(f"{src}: llama.cpp quantization to {name} failed: {last_error(log, f'return code {rc}')}")
    os.replace(partial, dst)
    return quant_result(dst, name, text, seconds, imatrix, source=source)


def _tensor_overrides(tensor_types: dict[str, str]) -> tuple[Any, list[bytes]]:
    """A null-terminated ``llama_model_tensor_override`` array: one anchored pattern per tensor."""
    import llama_cpp
    from gguf.constants import GGMLQuantizationType

    array = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
    patterns = [f"^{re.escape(name)}$".encode() for name in tensor_types]
    for i, (pattern, qtype) in enumerate(zip(patterns, tensor_types.values(), strict=True)):
        try:
            array[i].type = int(GGMLQuantizationType[qtype.upper()])
        except KeyError:
            raise ArteError(f"unknown ggml type {qtype!r} for tensor {list(tensor_types)[i]!r}") from None
        array[i].pattern = pattern
    array[len(tensor_types)].pattern = None
    return array, patterns


def _kv_overrides(values: dict[str, str | int]) -> Any:
    """A ``llama_model_kv_override`` array (terminated by an empty key) setting string and integer keys."""
    import llama_cpp

    array = (llama_cpp.llama_model_kv_override * (len(values) + 1))()
    for item, (key, value) in zip(array, values.items(), strict=False):
        if len(key.encode()) >= 128 or (isinstance(value, str) and len(value.encode()) >= 128):
            raise ArteError(f"GGUF metadata {key!r}: keys and string values must be under 128 bytes")
        item.key = key.encode()
        if isinstance(value, str):
            item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            item.value.val_str = value.encode()
        else:
            item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            item.value.val_i64 = int(value)
    return array


def quant_result(path: Path, name: str, log_text: str, seconds: float, imatrix: Path | None,
                 source: dict[str, Any] | None = None) -> QuantResult:
    """The QuantResult of the GGUF ``path`` of type ``name``, read from its header and the quantizer's log."""
    info = gguf_tensor_info(path)
    base = GGUF_TYPES[name].base_type
    weights = [t for t in info if t["n_dims"] >= 2]
    fallback = {m.group(1): f"{m.group(2)}->{m.group(3)}" for m in _FALLBACK_TENSOR.finditer(log_text)}
    totals = [int(m.group(1)) for m in _FALLBACK_TOTAL.finditer(log_text)]
    n_fallback = max(sum(totals), len(fallback))
    n_elems = sum(t["n_elements"] for t in info)
    n_bytes = sum(t["n_bytes"] for t in info)
    return QuantResult(
        path=path, qtype=name, size_bytes=path.stat().st_size, n_tensors=len(info), n_fallback=n_fallback,
        type_histogram=dict(Counter(t["type"] for t in info).most_common()), seconds=seconds, base_type=base,
        n_off_base=sum(1 for t in weights if t["type"] != base),
        bits_per_weight=8 * n_bytes / n_elems if n_elems else 0.0,
        fallback_tensors=fallback, imatrix=str(imatrix) if imatrix else None, source=source or {},
    )


def gguf_tensor_info(path: str | Path) -> list[dict[str, Any]]:
    """Per tensor of a GGUF file: name, ggml type, number of dims, shape, elements and bytes (from the header)."""
    header = read_header(Path(path))
    try:
        return [{"name": t.name, "type": t.type_name, "n_dims": len(t.shape), "shape": list(t.shape),
                 "n_elements": t.n_elements, "n_bytes": tensor_nbytes(t)} for t in header.tensors]
    except ValueError as exc:
        raise ArteError(f"{path}: {exc}; the file is corrupt or newer than this gguf package") from None


def describe_gguf(path: str | Path) -> dict[str, Any]:
    """Size, tensor type histogram and bits per weight of any GGUF (e.g. the f16 source of the quants)."""
    info = gguf_tensor_info(path)
    n_elems = sum(t["n_elements"] for t in info)
    return {"path": str(path), "size_bytes": Path(path).stat().st_size, "n_tensors": len(info),
            "n_params": n_elems, "type_histogram": dict(Counter(t["type"] for t in info).most_common()),
            "bits_per_weight": round(8 * sum(t["n_bytes"] for t in info) / n_elems, 3) if n_elems else 0.0}
