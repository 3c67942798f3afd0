"""Measure how much each unit of a model's weights hurts when quantized: the inputs of mix_plan.plan_mix.

For every level of ``mix_plan.LEVELS`` the f16 GGUF is quantized once by llama.cpp itself (every weight tensor
given its level's type, with the run's importance matrix when there is one), so the weights measured are
exactly the ones a mix would ship. Then the fp32 HF model runs the calibration tokens with one unit at a time
replaced by its dequantized level-``l`` weights; the mean KL(fp32 || that model) over the tokens is the
unit's sensitivity at ``l``. Torch runs the model (one forward per unit and level, no file written), so a
135M student takes about a minute and a 0.5B one a few minutes on 2 cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.export.mix_plan import LEVELS, Unit, level_type, weight_units

Progress = Callable[[str], None]


@dataclass
class Sensitivity:
    """Everything plan_mix needs, plus the level files' per-tensor types and how long measuring took."""

    units: list[Unit]
    unit_bytes: dict[str, dict[str, int]]
    sensitivity: dict[str, dict[str, float]]
    tensor_types: dict[str, dict[str, str]]
    other_bytes: int
    n_tokens: int
    seconds: float
    embedding_rows: int = 0  # vocabulary size: a gathered embedding reads one of these rows per token

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the per-unit table (bytes and KL per level)."""
        return {"n_tokens": self.n_tokens, "seconds": round(self.seconds, 1), "other_bytes": self.other_bytes,
                "units": {u.name: {"tensors": len(u.tensors),
                                   "bytes": self.unit_bytes[u.name],
                                   "kl": {k: round(v, 6) for k, v in self.sensitivity[u.name].items()}}
                          for u in self.units}}


def weight_tensors(f16: Path) -> dict[str, list[int]]:
    """The quantizable 2-D weight tensors of a GGUF: name → shape (GGUF order: row length first)."""
    from arte_edge.export.quantize import gguf_tensor_info

    return {t["name"]: t["shape"] for t in gguf_tensor_info(f16) if t["n_dims"] == 2 and t["name"].endswith(".weight")}


def level_overrides(shapes: dict[str, list[int]], level: str) -> dict[str, str]:
    """Per-tensor types of one level: K-quant where the row length allows, the legacy type otherwise."""
    return {name: level_type(level, shape[0]) for name, shape in shapes.items()}


def measure_sensitivity(f16: Path, hf_dir: Path, work: Path, texts: Sequence[str], *, imatrix: Path | None = None,
                        layers_per_unit: int = 8, chunk: int = 256, max_tokens: int = 256,
                        threads: int = 2, progress: Progress | None = None) -> Sensitivity:
    """Quantize ``f16`` at every level (files in ``work``, deleted after) and measure each unit's KL on the
    calibration ``texts`` (at most ``max_tokens`` tokens in chunks of ``chunk``) against the fp32 ``hf_dir``."""
    import torch

    from arte_edge.export.quantize import gguf_tensor_info, quantize_gguf

    say = progress or (lambda _m: None)
    start = time.perf_counter()
    shapes = weight_tensors(f16)
    info = {t["name"]: t for t in gguf_tensor_info(f16)}
    n_layers = 1 + max((int(n.split(".")[1]) for n in shapes if n.startswith("blk.")), default=0)
    units = weight_units(list(shapes), n_layers, layers_per_unit)
    work.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    types: dict[str, dict[str, str]] = {}
    unit_bytes: dict[str, dict[str, int]] = {u.name: {} for u in units}
    try:
        for level in LEVELS:
            say(f"auto mix: quantizing every weight at level {level} ({'/'.join(dict.fromkeys(LEVELS[level]))})")
            files[level] = work / f"level-{level}.gguf"
            quantize_gguf(f16, files[level], "AUTO", imatrix, threads=threads,
                          tensor_types=level_overrides(shapes, level))
            got = {t["name"]: t for t in gguf_tensor_info(files[level])}
            types[level] = {n: got[n]["type"] for n in shapes}
            for unit in units:
                unit_bytes[unit.name][level] = sum(got[t]["n_bytes"] for t in unit.tensors)
        other = sum(t["n_bytes"] for n, t in info.items() if n not in shapes)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            kl, n_tokens = _unit_kl(hf_dir, files, units, types, texts, chunk, max_tokens, say)
        finally:
            torch.set_num_threads(previous)
    finally:
        for path in files.values():
            path.unlink(missing_ok=True)
    rows = shapes.get("token_embd.weight", [0, 0])[1]
    return Sensitivity(units, unit_bytes, kl, types, other, n_tokens, time.perf_counter() - start, rows)


def _unit_kl(hf_dir: Path, files: dict[str, Path], units: list[Unit], types: dict[str, dict[str, str]],
             texts: Sequence[str], chunk: int, max_tokens: int,
             say: Progress) -> tuple[dict[str, dict[str, float]], int]:
    import torch

    from arte_edge.export.reference import load_hf_fp32

    model, tok = load_hf_fp32(hf_dir)
    chunks = calibration_chunks(tok, texts, chunk, max_tokens)
    replay = LayerReplay(model, chunks)
    ref = [torch.log_softmax(logits, -1) for logits in replay.reference_logits]
    readers = {level: _reader(path) for level, path in files.items()}
    params = gguf_to_hf_params(model, readers["8"], [t for u in units for t in u.tensors])
    out: dict[str, dict[str, float]] = {}
    for i, unit in enumerate(units):
        say(f"auto mix: sensitivity of {unit.name} ({i + 1}/{len(units)})")
        start = replay.first_affected(unit.tensors)
        saved = {t: params[t][0].detach().clone() for t in unit.tensors}
        out[unit.name] = {}
        measured: dict[tuple[str, ...], float] = {}
        for level in LEVELS:
            key = tuple(types[level][t] for t in unit.tensors)
            if key not in measured:  # the 6- and 8-bit levels are both Q8_0 where rows are not a multiple of 256
                for t in unit.tensors:
                    param, permute = params[t]
                    param.data.copy_(permute(_dequantized(readers[level], t)))
                measured[key] = _mean_kl([replay.logits(c, start) for c in range(len(chunks))], ref)
            out[unit.name][level] = measured[key]
        for t, value in saved.items():
            params[t][0].data.copy_(value)
    return out, sum(int(c.shape[1]) for c in chunks)


class LayerReplay:
    """Runs a decoder-only HF model from any layer on: the reference pass records every decoder layer's input
    (hidden states and keyword arguments: masks and rotary embeddings do not depend on the weights), so a change
    in layer ``k`` only re-runs layers ``k..N-1``, the final norm and the head. Checked on construction:
    replaying from layer 0 must reproduce the full forward, else every call runs the full model."""

    def __init__(self, model: Any, chunks: list[Any]):
        import torch

        self.model, self.chunks = model, chunks
        decoder = model.get_decoder()
        self.layers, self.norm = list(decoder.layers), getattr(decoder, "norm", None)
        self.inputs: list[list[tuple[Any, dict[str, Any]]]] = [[] for _ in chunks]
        current: list[int] = [0]

        def record(_module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            self.inputs[current[0]].append((hidden, rest))

        self.final: list[Any] = [None for _ in chunks]  # what the final norm gets: the last layer's output

        def record_final(_module: Any, args: tuple) -> None:
            self.final[current[0]] = args[0]

        hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in self.layers]
        if self.norm is not None:
            hooks.append(self.norm.register_forward_pre_hook(record_final))
        try:
            with torch.inference_mode():
                self.reference_logits = []
                for i, ids in enumerate(chunks):
                    current[0] = i
                    self.reference_logits.append(model(input_ids=ids, use_cache=False).logits[0].float())
        finally:
            for hook in hooks:
                hook.remove()
        self.works = True  # checked now: replaying from layer 0 must give the reference logits
        complete = self.norm is not None and None not in self.final and all(
            len(x) == len(self.layers) for x in self.inputs)
        self.works = complete and all(torch.allclose(self.logits(i, 0), ref, atol=1e-4, rtol=1e-4)
                                      for i, ref in enumerate(self.reference_logits))

    def first_affected(self, tensors: Sequence[str]) -> int | None:
        """The first decoder layer a change of these GGUF tensors affects: None (everything) for the embedding,
        the number of layers (only the head) for the output layer."""
        layers = [int(t.split(".")[1]) for t in tensors if t.startswith("blk.")]
        if layers:
            return min(layers)
        return len(self.layers) if all(t.startswith("output") for t in tensors) else None

    def logits(self, chunk: int, start: int | None) -> Any:
        """Logits ``[tokens, vocab]`` of chunk ``chunk`` with the current weights, run from layer ``start``."""
        import torch

        with torch.inference_mode():
            if start is None or not self.works:
                return self.model(input_ids=self.chunks[chunk], use_cache=False).logits[0].float()
            if start < len(self.layers):
                hidden = self.inputs[chunk][start][0]
                for layer, (_, kwargs) in zip(self.layers[start:], self.inputs[chunk][start:], strict=True):
                    out = layer(hidden, **kwargs)
                    hidden = out[0] if isinstance(out, tuple) else out
            else:
                hidden = self.final[chunk]
            return self.model.lm_head(self.norm(hidden))[0].float()


def calibration_chunks(tokenizer: Any, texts: Sequence[str], chunk: int, max_tokens: int) -> list[Any]:
    """Token chunks ``[1, chunk]`` of the concatenated texts (the last one may be shorter), at most
    ``max_tokens`` tokens in all; ArteError when the texts give fewer than 16 tokens."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids += list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    if len(ids) < 16:
        raise ArteError("the calibration texts of the auto mix are too short (under 16 tokens); give the run's "
                        "training data or longer texts")
    return [torch.tensor([ids[i:i + chunk]]) for i in range(0, len(ids), chunk) if len(ids[i:i + chunk]) >= 2]


def _mean_kl(logits: list[Any], ref: list[Any]) -> float:
    import torch

    total, count = 0.0, 0
    for got, log_p in zip(logits, ref, strict=True):
        log_q = torch.log_softmax(got, -1)
        total += float((log_p.exp() * (log_p - log_q)).sum(-1).sum())
        count += int(got.shape[0])
    return total / count


def _reader(path: Path) -> Any:
    """name → tensor (``.data`` raw bytes memory-mapped, ``.tensor_type``, ``.shape``) from our own header parser
    (gguf.GGUFReader spends seconds building the vocabulary's strings)."""
    from types import SimpleNamespace

    import numpy as np
    from gguf.constants import GGMLQuantizationType

    from arte_edge.models.gguf_file import read_header, tensor_nbytes

    header = read_header(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for t in header.tensors:
        start = header.data_offset + t.offset
        out[t.name] = SimpleNamespace(name=t.name, tensor_type=GGMLQuantizationType(t.ggml_type),
                                      shape=list(t.shape), data=raw[start:start + tensor_nbytes(t)])
    return out


def _dequantized(tensors: dict[str, Any], name: str) -> Any:
    """The tensor ``name`` as float32 ``[rows, row length]`` (HF's ``[out, in]``), dequantized by gguf-py."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    t = tensors[name]
    values = dequantize(np.asarray(t.data), t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def gguf_to_hf_params(model: Any, tensors: dict[str, Any], names: Sequence[str]) -> dict[str, tuple[Any, Callable]]:
    """For each GGUF weight name, the HF parameter it came from and the row permutation that maps GGUF rows
    back to HF rows (llama.cpp's converter permutes Llama's q/k projections for its RoPE layout).

    Checked on the values: the level-8 (Q8_0) tensor must match its HF parameter to within Q8_0 error, directly
    or after undoing the permutation; ArteError otherwise (an architecture whose names gguf-py cannot map).
    """
    import gguf

    arch_name = model.config.model_type
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name), None)
    if arch is None:
        raise ArteError(f"auto mix: gguf-py does not know the architecture {arch_name!r}")
    name_map = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    by_gguf: dict[str, Any] = {}
    for hf_name, param in model.named_parameters():
        mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is not None:
            by_gguf.setdefault(mapped, param)
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    out: dict[str, tuple[Any, Callable]] = {}
    for name in names:
        param = by_gguf.get(name)
        if param is None:
            raise ArteError(f"auto mix: no HF parameter maps to the GGUF tensor {name!r}")
        q8 = _dequantized(tensors, name)
        for permute in (_same, _unpermute(n_head), _unpermute(n_kv)):
            candidate = permute(q8)
            if candidate.shape == param.shape and _close(candidate, param.detach()):
                out[name] = (param, permute)
                break
        else:
            raise ArteError(f"auto mix: the GGUF tensor {name!r} does not match its HF parameter; "
                            "this architecture's layout is not supported by the auto mix")
    return out


def _same(x: Any) -> Any:
    return x


def _unpermute(n_head: int) -> Callable[[Any], Any]:
    """Inverse of the converter's ``permute(w, n_head)``: rows (head, pair, half) → (head, half, pair)."""
    def undo(w: Any) -> Any:
        if w.shape[0] % (2 * n_head):
            return w
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return undo


def _close(a: Any, b: Any) -> bool:
    scale = float(b.abs().mean()) or 1.0
    return float((a - b).abs().mean()) < 0.05 * scale
