"""Check an ONNX export against its Hugging Face source before calling it done.

Three checks, each against the fp32 torch model:
- greedy continuations of fixed chat prompts through onnxruntime-genai (the runtime we ship);
- teacher-forced next-token distributions on held-out texts through a plain onnxruntime session
  (top-1 agreement and mean KL(HF || ONNX) over every position);
- the folder's tokenizer (as onnxruntime-genai reads it): encodings, chat template, eos ids.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arte_edge.export.errors import VerificationError
from arte_edge.export.reference import (
    DEFAULT_PROMPTS,
    DEFAULT_TEXTS,
    MAX_TEXT_TOKENS,
    TOKENIZER_PROBES,
    Message,
    chat_ids,
    common_prefix,
    hf_greedy,
    kl_per_position,
    load_hf_fp32,
)
from arte_edge.formats import ONNX_THRESHOLDS, Thresholds


def verify_onnx(
    hf_dir: str | Path,
    onnx_dir: str | Path,
    *,
    prompts: Sequence[Sequence[Message]] = DEFAULT_PROMPTS,
    texts: Sequence[str] = DEFAULT_TEXTS,
    n_tokens: int = 16,
    exact: bool | None = None,
    precision: str | None = None,
    label: str | None = None,
    raise_on_failure: bool = True,
) -> dict[str, Any]:
    """Compare the ONNX folder with its HF source; return the report, raising VerificationError on a failure.

    ``precision`` picks the thresholds (default: the folder's manifest, else fp32); ``exact`` overrides
    whether greedy continuations must match token for token (default: only for fp32). ``label`` names
    the artifact in messages (default: ``onnx_dir``).
    """
    import torch

    start = time.perf_counter()
    onnx_dir = Path(onnx_dir)
    label = label or str(onnx_dir)
    precision = precision or _manifest_precision(onnx_dir) or "fp32"
    limits = ONNX_THRESHOLDS[precision]
    exact = limits.exact_greedy if exact is None else exact
    hf_model, hf_tok = load_hf_fp32(hf_dir)
    from arte_edge.backends.onnx_genai import OnnxGenaiRunner

    runner = OnnxGenaiRunner(onnx_dir, threads=None)
    with torch.inference_mode():
        report: dict[str, Any] = {
            "artifact": label,
            "precision": precision,
            "tokenizer": _check_tokenizer(runner, hf_tok, prompts),
            "greedy": _check_greedy(runner, hf_model, hf_tok, prompts, n_tokens),
            "next_token": _check_next_token(onnx_dir, hf_model, hf_tok, texts),
        }
    runner.close()
    report["thresholds"] = {"exact_greedy": exact, "min_top1": limits.min_top1, "max_kl": limits.max_kl}
    report["failures"] = _failures(report, limits, exact)
    report["passed"] = not report["failures"]
    report["seconds"] = round(time.perf_counter() - start, 2)
    if report["failures"] and raise_on_failure:
        raise VerificationError(f"{label}: ONNX verification failed ({precision}): {report['failures'][0]}"
                                + (f" (+{len(report['failures']) - 1} more)" if len(report["failures"]) > 1 else ""))
    return report


def _manifest_precision(onnx_dir: Path) -> str | None:
    path = onnx_dir / "arte_export.json"
    return json.loads(path.read_text(encoding="utf-8")).get("precision") if path.is_file() else None


def _failures(report: dict[str, Any], limits: Thresholds, exact: bool) -> list[str]:
    out: list[str] = []
    tok, greedy, nxt = report["tokenizer"], report["greedy"], report["next_token"]
    if tok["encode_mismatches"]:
        out.append(f"tokenizer encodes {len(tok['encode_mismatches'])} probe string(s) differently, "
                   f"first {tok['encode_mismatches'][0]!r}")
    if not tok["chat_template_match"]:
        out.append("chat template renders differently from the HF tokenizer's")
    if not tok["eos_ok"]:
        out.append(f"tokenizer eos id {tok['hf_eos_token_id']} missing from genai_config eos ids "
                   f"{tok['genai_eos_token_ids']}")
    if exact and not greedy["exact"]:
        out.append(f"greedy continuations differ from HF (agreement {greedy['agreement']:.3f}, "
                   f"first at prompt {greedy['first_mismatch_prompt']})")
    if nxt["top1"] < limits.min_top1:
        out.append(f"next-token top-1 agreement {nxt['top1']:.3f} < {limits.min_top1}")
    if nxt["kl_mean"] > limits.max_kl:
        out.append(f"mean KL(HF||ONNX) {nxt['kl_mean']:.4g} > {limits.max_kl}")
    return out


def _check_tokenizer(runner: Any, hf_tok: Any, prompts: Sequence[Sequence[Message]]) -> dict[str, Any]:
    mismatches = [s for s in TOKENIZER_PROBES
                  if runner.encode(s) != list(hf_tok(s, add_special_tokens=True)["input_ids"])]
    template_ok = True
    for messages in prompts:
        expected = hf_tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        try:
            template_ok &= runner.apply_chat_template(messages) == expected
        except Exception:
            template_ok = False
    eos = hf_tok.eos_token_id
    return {
        "n_probes": len(TOKENIZER_PROBES),
        "encode_mismatches": mismatches,
        "chat_template_match": bool(template_ok),
        "hf_eos_token_id": eos,
        "genai_eos_token_ids": sorted(runner.eos_token_ids),
        "eos_ok": eos is None or eos in runner.eos_token_ids,
    }


def _check_greedy(runner: Any, hf_model: Any, hf_tok: Any, prompts: Sequence[Sequence[Message]],
                  n_tokens: int) -> dict[str, Any]:
    matched = total = 0
    first_mismatch: int | None = None
    samples = []
    for i, messages in enumerate(prompts):
        ids = chat_ids(hf_tok, messages)
        ref = hf_greedy(hf_model, ids, n_tokens, runner.eos_token_ids)[0]
        got = list(runner.generate_ids(ids, n_tokens))
        prefix = common_prefix(ref, got)
        matched, total = matched + prefix, total + max(len(ref), 1)
        if ref != got and first_mismatch is None:
            first_mismatch = i
        samples.append({"hf": ref, "onnx": got})
    return {
        "n_prompts": len(prompts),
        "n_tokens": n_tokens,
        "exact": first_mismatch is None,
        "agreement": matched / total if total else 1.0,
        "first_mismatch_prompt": first_mismatch,
        "sequences": samples,
    }


def _check_next_token(onnx_dir: Path, hf_model: Any, hf_tok: Any, texts: Sequence[str]) -> dict[str, Any]:
    import numpy as np
    import torch

    session = _ort_session(onnx_dir)
    decoder = json.loads((onnx_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
    shape = {"kv_heads": int(decoder["num_key_value_heads"]), "head_size": int(decoder["head_size"])}
    agree = positions = 0
    kl_sum, max_diff = 0.0, 0.0
    for text in texts:
        ids = list(hf_tok(text, add_special_tokens=True)["input_ids"])[:MAX_TEXT_TOKENS]
        if len(ids) < 2:
            continue
        ref = hf_model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
        got = full_sequence_logits(session, ids, **shape).astype(np.float64)
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        kl_sum += float(kl_per_position(ref, got).sum())
        positions += len(ids)
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
    return {
        "n_texts": len(texts),
        "n_positions": positions,
        "top1": agree / positions if positions else 0.0,
        "kl_mean": kl_sum / positions if positions else float("inf"),
        "max_abs_logit_diff": max_diff,
    }


def _ort_session(onnx_dir: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])


def full_sequence_logits(session: Any, ids: Sequence[int], *, kv_heads: int, head_size: int) -> Any:
    """Logits ``[len(ids), vocab]`` for one sequence through a plain onnxruntime session, empty KV cache.

    Feeds whatever the graph declares: input_ids, attention_mask, position_ids (when present) and
    zero-length ``past_key_values.*`` of shape [1, kv_heads, 0, head_size] (the builder leaves the head
    size symbolic, so it comes from genai_config; its GQA graphs derive positions from the mask).
    """
    import numpy as np

    n = len(ids)
    feeds: dict[str, Any] = {}
    for arg in session.get_inputs():
        if arg.name == "input_ids":
            feeds[arg.name] = np.asarray([ids], dtype=np.int64)
        elif arg.name == "attention_mask":
            feeds[arg.name] = np.ones((1, n), dtype=np.int64)
        elif arg.name == "position_ids":
            feeds[arg.name] = np.arange(n, dtype=np.int64)[None, :]
        elif arg.name.startswith("past_key_values"):
            feeds[arg.name] = np.zeros((1, kv_heads, 0, head_size), dtype=_np_dtype(arg.type))
        else:
            raise VerificationError(f"ONNX graph has an unexpected input {arg.name!r}; cannot verify it")
    return session.run(["logits"], feeds)[0][0]


def _np_dtype(ort_type: str) -> Any:
    import numpy as np

    return {"tensor(float)": np.float32, "tensor(float16)": np.float16}[ort_type]
