"""Will a model fit on a device, and how fast can it decode at best? (an *estimate*, never a measurement)

Batch-1 decode reads every weight used per token plus the KV cache written so far, so it cannot beat
``memory bandwidth ÷ bytes read per token``. The fit check adds weights, the KV cache at a context length
and a runtime allowance, and compares them with the device's usable memory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from arte_edge.bench.devices import DeviceProfile
from arte_edge.errors import ArteError

ESTIMATE_LABEL = "estimate"
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
DEFAULT_OVERHEAD_BYTES = 256 * 2**20
DEFAULT_OVERHEAD_FRACTION = 0.10
DEFAULT_CONTEXT = 4096
_TOKEN_EMBD = {"token_embd.weight", "model.embed_tokens.weight"}
_OUTPUT = {"output.weight", "lm_head.weight"}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model.

    ``weight_read_bytes`` is what one decode step reads: every weight except the token-embedding table,
    of which one row is read, unless the output layer is tied to it (then the whole table is read).
    ``gathered`` names the tensors counted as one row per token (empty when every weight counts in full).
    """

    weight_bytes: int
    weight_read_bytes: int
    n_layers: int
    n_kv_heads: int
    head_dim: int
    context_length: int
    source: str
    gathered: tuple[str, ...] = ()

    def kv_bytes_per_position(self, kv_type: str = "f16") -> float:
        """K and V bytes one token position adds to the cache."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * kv_bytes(kv_type)


@dataclass(frozen=True)
class Estimate:
    """Fit and roofline for one model on one device at ``context`` tokens. Always labelled ``estimate``."""

    device: str
    context: int
    kv_type: str
    weight_bytes: int
    kv_bytes: float
    overhead_bytes: float
    total_bytes: float
    usable_bytes: float
    fits: bool
    bandwidth_gbs: float
    bandwidth_source: str
    bytes_per_token: float
    decode_tok_s: float
    decode_position: int
    label: str = ESTIMATE_LABEL

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def kv_bytes(kv_type: str) -> float:
    """Bytes per cached K or V element for a llama.cpp cache type (f16 by default)."""
    try:
        return KV_BYTES[kv_type]
    except KeyError:
        raise ArteError(f"unknown KV cache type {kv_type!r}; use one of {', '.join(KV_BYTES)}") from None


def weights_read_per_token(tensor_bytes: dict[str, int], row_bytes_embd: int = 0) -> int:
    """Bytes of weights read by one decode step, from ``{tensor name: bytes}`` (GGUF or HF names)."""
    total = sum(tensor_bytes.values())
    tied = not any(name in tensor_bytes for name in _OUTPUT)
    embd = sum(b for name, b in tensor_bytes.items() if name in _TOKEN_EMBD)
    return total if tied else total - embd + row_bytes_embd


def kv_cache_bytes(shape: ModelShape, context: int, kv_type: str = "f16") -> float:
    """KV-cache bytes holding ``context`` positions."""
    return shape.kv_bytes_per_position(kv_type) * context


def decode_bytes_per_token(shape: ModelShape, position: int, kv_type: str = "f16") -> float:
    """Bytes one decode step reads at ``position`` (weights + the KV cache filled so far)."""
    return shape.weight_read_bytes + shape.kv_bytes_per_position(kv_type) * position


def roofline_tok_s(bandwidth_bytes_s: float, bytes_per_token: float) -> float:
    """Upper bound on batch-1 decode tokens/s: bandwidth ÷ bytes read per token."""
    return bandwidth_bytes_s / bytes_per_token if bytes_per_token > 0 else float("inf")


def estimate(profile: DeviceProfile, shape: ModelShape, *, context: int | None = None, kv_type: str = "f16",
             decode_position: int | None = None, overhead_bytes: float | None = None) -> Estimate:
    """Fit and decode roofline of ``shape`` on ``profile``.

    ``context`` (default: the model's context, at most 4096) sizes the KV cache for the fit check;
    ``decode_position`` is where in the cache decode is estimated (default: half the context, the average
    over a full generation). ``overhead_bytes`` defaults to 256 MiB + 10% of the weights (compute buffers,
    runtime, tokenizer): a rough allowance, not a measurement.
    """
    ctx = context or min(shape.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    position = ctx // 2 if decode_position is None else decode_position
    kv = kv_cache_bytes(shape, ctx, kv_type)
    overhead = (DEFAULT_OVERHEAD_BYTES + DEFAULT_OVERHEAD_FRACTION * shape.weight_bytes
                if overhead_bytes is None else overhead_bytes)
    total = shape.weight_bytes + kv + overhead
    per_token = decode_bytes_per_token(shape, position, kv_type)
    return Estimate(device=profile.name, context=ctx, kv_type=kv_type, weight_bytes=shape.weight_bytes,
                    kv_bytes=kv, overhead_bytes=overhead, total_bytes=total, usable_bytes=profile.usable_bytes,
                    fits=total <= profile.usable_bytes, bandwidth_gbs=profile.memory.bandwidth_gbs,
                    bandwidth_source=profile.memory.bandwidth_source, bytes_per_token=per_token,
                    decode_tok_s=roofline_tok_s(profile.bandwidth_bytes_s, per_token), decode_position=position)


def measured_vs_roofline(measured_tok_s: float, est: Estimate) -> float:
    """Measured decode tokens/s as a fraction of the roofline estimate (1.0 = at the bandwidth limit)."""
    return measured_tok_s / est.decode_tok_s if est.decode_tok_s else float("nan")


# ---- reading model shapes -------------------------------------------------------------------------------


def model_shape(path: Path, fmt: str) -> ModelShape:
    """The :class:`ModelShape` of a GGUF file, an ONNX (onnxruntime-genai) folder or an HF folder."""
    if fmt == "gguf":
        return gguf_shape(path)
    if fmt == "onnx":
        return onnx_shape(path)
    if fmt == "hf":
        return hf_shape(path)
    raise ArteError(f"{path}: unknown artifact format {fmt!r}; expected gguf, onnx or hf")


def gguf_shape(path: Path) -> ModelShape:
    """Tensor sizes and attention shape from GGUF metadata (read with ``gguf.GGUFReader``)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/struct errors/IndexError on damaged files
        raise ArteError(f"{path}: unreadable GGUF ({type(exc).__name__}: {exc}); re-export or re-download it"
                        ) from exc

    def meta(key: str, default: Any = None) -> Any:
        field = reader.get_field(key)
        return field.contents() if field is not None else default

    arch = meta("general.architecture")
    if not arch:
        raise ArteError(f"{path}: GGUF has no general.architecture; re-export it")
    n_layers, n_embd = meta(f"{arch}.block_count"), meta(f"{arch}.embedding_length")
    n_head = meta(f"{arch}.attention.head_count")
    if n_layers is None or n_embd is None or n_head is None:
        raise ArteError(f"{path}: GGUF lacks {arch}.block_count/embedding_length/attention.head_count")
    n_head = _first(n_head)
    n_kv = _first(meta(f"{arch}.attention.head_count_kv", n_head))
    head_dim = meta(f"{arch}.attention.key_length") or n_embd // n_head
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    row = int(embd.n_bytes) // int(embd.shape[-1]) if embd is not None and len(embd.shape) > 1 else 0
    return ModelShape(weight_bytes=sum(sizes.values()), weight_read_bytes=weights_read_per_token(sizes, row),
                      n_layers=int(n_layers), n_kv_heads=int(n_kv), head_dim=int(head_dim),
                      context_length=int(meta(f"{arch}.context_length", 0) or 0), source="gguf",
                      gathered=_gathered_embedding(sizes))


def _gathered_embedding(sizes: dict[str, int]) -> tuple[str, ...]:
    """The token-embedding table's name when it is read one row per token (an untied output layer exists)."""
    if not any(name in sizes for name in _OUTPUT):
        return ()
    return tuple(sorted(name for name in sizes if name in _TOKEN_EMBD))


def _first(value: Any) -> Any:
    # Some architectures store a per-layer list of head counts; the first layer is representative.
    return value[0] if isinstance(value, list) else value


def hf_shape(path: Path) -> ModelShape:
    """Shape from ``config.json`` and weight sizes from the files (safetensors headers when present)."""
    config = _read_json(path / "config.json")
    config = config.get("text_config", config)
    sizes = _safetensors_sizes(path)
    total = sum(sizes.values()) if sizes else _weight_files_size(path)
    tied = bool(config.get("tie_word_embeddings", not any(n in sizes for n in _OUTPUT)))
    embd = sum(b for n, b in sizes.items() if n in _TOKEN_EMBD)
    read = total if tied or not embd else total - embd
    gathered = () if tied or not embd else tuple(sorted(n for n in sizes if n in _TOKEN_EMBD))
    return _shape_from_config(config, total, read, "hf config.json", path, gathered)


def onnx_shape(path: Path) -> ModelShape:
    """Shape from onnxruntime-genai's ``genai_config.json`` (or config.json); weights from the decoder graph's
    initializers (:mod:`arte_edge.bench.onnx_weights`: external data included, a table only looked up by
    ``Gather``/``GatherBlockQuantized`` counted one row per token). Without a graph, the folder's file sizes."""
    from arte_edge.bench.onnx_weights import decoder_model_path, onnx_weights

    folder = path.parent if path.is_file() else path
    model_file = decoder_model_path(path)
    if model_file is not None:
        weights = onnx_weights(model_file)
        total, read, gathered = weights.total_bytes, weights.read_bytes, tuple(sorted(weights.gathered))
    else:
        total, gathered = _weight_files_size(folder), ()
        read = total
    genai = folder / "genai_config.json"
    if genai.is_file():
        model = _read_json(genai)["model"]
        decoder = model["decoder"]
        return ModelShape(weight_bytes=total, weight_read_bytes=read, n_layers=int(decoder["num_hidden_layers"]),
                          n_kv_heads=int(decoder["num_key_value_heads"]), head_dim=int(decoder["head_size"]),
                          context_length=int(model.get("context_length", 0)), source="genai_config.json",
                          gathered=gathered)
    return _shape_from_config(_read_json(folder / "config.json"), total, read, "onnx config.json", folder, gathered)


def _shape_from_config(config: dict[str, Any], total: int, read: int, source: str, path: Path,
                       gathered: tuple[str, ...] = ()) -> ModelShape:
    try:
        n_heads = int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or config["hidden_size"] // n_heads)
        return ModelShape(weight_bytes=total, weight_read_bytes=read, n_layers=int(config["num_hidden_layers"]),
                          n_kv_heads=int(config.get("num_key_value_heads") or n_heads), head_dim=head_dim,
                          context_length=int(config.get("max_position_embeddings") or 0), source=source,
                          gathered=gathered)
    except KeyError as exc:
        raise ArteError(f"{path}: config lacks {exc.args[0]!r}; cannot estimate the KV cache") from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArteError(f"{path}: missing or invalid JSON ({exc}); re-export the model") from exc


def _safetensors_sizes(path: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, info in header.items():
            if name != "__metadata__":
                start, end = info["data_offsets"]
                sizes[name] = end - start
    return sizes


def _weight_files_size(path: Path) -> int:
    from arte_edge.artifacts import disk_size

    return disk_size(path)


def assess(shape: ModelShape, profile: DeviceProfile, *, context: int | None = None, gen_tokens: int = 128,
           measured_decode_tok_s: float | None = None, kv_type: str = "f16") -> dict[str, Any]:
    """Fit at ``context`` plus the decode roofline under the bench's own conditions (``gen_tokens`` decoded
    from an empty cache, so KV reads average ``gen_tokens / 2`` positions), and measured ÷ roofline when a
    measurement is given. Every number here is labelled ``estimate``."""
    fit = estimate(profile, shape, context=context, kv_type=kv_type)
    bench_point = estimate(profile, shape, context=context, kv_type=kv_type, decode_position=gen_tokens // 2)
    roofline: dict[str, Any] = {
        "label": ESTIMATE_LABEL, "decode_tok_s": bench_point.decode_tok_s, "position": gen_tokens // 2,
        "bytes_per_token": bench_point.bytes_per_token, "bandwidth_gbs": profile.memory.bandwidth_gbs,
        "bandwidth_source": profile.memory.bandwidth_source}
    if measured_decode_tok_s is not None:
        roofline["measured_decode_tok_s"] = measured_decode_tok_s
        roofline["measured_over_roofline"] = measured_vs_roofline(measured_decode_tok_s, bench_point)
    return {"shape": asdict(shape), "fit": fit.to_dict(), "roofline": roofline}
