"""Check a GGUF file against its Hugging Face source before calling it done.

Three checks, each against the fp32 torch model, through llama-cpp-python (the runtime we ship):
- tokenizer: BOS/EOS ids, the add-BOS flag, encodings of fixed probe strings (digits, unicode, code,
  whitespace, special tokens, chat-rendered conversations) and the chat template string in the metadata;
- greedy continuations of fixed chat prompts (the same token ids fed to both models);
- teacher-forced next-token distributions on held-out texts: top-1 agreement and mean KL(HF || GGUF)
  over every position.

Exact greedy for 16/32-bit files. llama.cpp multiplies f16 weights with activations rounded to f16, so an
f16 GGUF can never reproduce fp32 logits bit for bit, and a reference that is itself undecided between two
tokens can flip. The rule: continuations must match token for token, except that a prompt may diverge at a
position where the two models' logits agree within ``tie_atol`` (max |Δlogit| over the vocabulary). There
the flip is a tie within numerical noise (the HF margin between the two tokens is then at most
2·tie_atol, since each model's own choice wins by at most the logit error); the prompt counts as matched
up to that position and the position and margins are reported. Anything else is a failure. Quantized
files only report greedy agreement (the fraction of reference tokens before the first divergence and the
number of prompts matched exactly) and are held to top-1 and KL floors instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.export.errors import VerificationError
from arte_edge.export.onnx_verify import DEFAULT_PROMPTS, DEFAULT_TEXTS, TOKENIZER_PROBES

Message = dict[str, str]

MAX_TEXT_TOKENS = 256


@dataclass(frozen=True)
class Thresholds:
    """What a GGUF of one type must reach. ``max_kl`` is the mean KL(HF || GGUF) in nats per position.

    ``tie_atol``: max |Δlogit| under which a greedy divergence of an exact-greedy file counts as a tie flip.
    ``min_greedy_agreement``: floor on the greedy agreement of non-exact files (0 = report only).
    """

    exact_greedy: bool
    min_top1: float
    max_kl: float
    tie_atol: float = 0.05
    min_greedy_agreement: float = 0.0


# Top-1 floors from the brief. KL ceilings: 16-bit from the f16 rounding noise; quantized ones leave room
# above what SmolLM2-135M-Instruct measured (see the export docs) for other small students.
THRESHOLDS: dict[str, Thresholds] = {
    "F32": Thresholds(exact_greedy=True, min_top1=0.99, max_kl=1e-3),
    "F16": Thresholds(exact_greedy=True, min_top1=0.99, max_kl=5e-3),
    "BF16": Thresholds(exact_greedy=True, min_top1=0.98, max_kl=2e-2, tie_atol=0.2),
    "Q8_0": Thresholds(exact_greedy=False, min_top1=0.95, max_kl=0.05),
    "Q6_K": Thresholds(exact_greedy=False, min_top1=0.90, max_kl=0.15),
    "Q5_K_M": Thresholds(exact_greedy=False, min_top1=0.80, max_kl=0.5),
    "Q5_K_S": Thresholds(exact_greedy=False, min_top1=0.80, max_kl=0.5),
    "Q5_0": Thresholds(exact_greedy=False, min_top1=0.80, max_kl=0.5),
    "Q5_1": Thresholds(exact_greedy=False, min_top1=0.80, max_kl=0.5),
    "Q4_K_M": Thresholds(exact_greedy=False, min_top1=0.80, max_kl=0.5),
    "Q4_K_S": Thresholds(exact_greedy=False, min_top1=0.80, max_kl=0.5),
    "Q4_0": Thresholds(exact_greedy=False, min_top1=0.80, max_kl=0.5),
    "Q4_1": Thresholds(exact_greedy=False, min_top1=0.80, max_kl=0.5),
    "Q3_K_M": Thresholds(exact_greedy=False, min_top1=0.65, max_kl=1.0),
    "Q2_K": Thresholds(exact_greedy=False, min_top1=0.50, max_kl=2.0),
}

EXTRA_PROBES: tuple[str, ...] = (
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 123456789 3.14 -42 1e-5 0x1F",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot\nSELECT * FROM t WHERE x <> 'y';",
    "<|endoftext|><|im_start|>system\nBe brief.<|im_end|>\n",
    "Tabs\tand\nnewlines\n\n\nand emoji 👩‍💻 and accents: résumé, Zürich, São Paulo",
)


def thresholds_for(qtype: str, overrides: dict[str, Any] | None = None) -> Thresholds:
    """The thresholds of ``qtype`` (case-insensitive), with ``overrides`` (field → value) applied."""
    name = qtype.upper()
    if name not in THRESHOLDS:
        raise ArteError(f"no verification thresholds for GGUF type {qtype!r}; known: {', '.join(THRESHOLDS)}")
    limits = THRESHOLDS[name]
    if overrides:
        unknown = set(overrides) - set(asdict(limits))
        if unknown:
            raise ArteError(f"unknown GGUF verification threshold(s) {sorted(unknown)}; "
                            f"known: {', '.join(asdict(limits))}")
        limits = replace(limits, **overrides)
    return limits


def gguf_file_type(path: str | Path) -> str | None:
    """The quant type name recorded in a GGUF's ``general.file_type`` (e.g. ``Q4_K_M``), if known."""
    import llama_cpp

    from arte_edge.export.gguf import QUANT_TYPES, read_gguf_header

    ftype = read_gguf_header(path)[0].get("general.file_type")
    if ftype is None:
        return None
    return next((name for name, (const, _) in QUANT_TYPES.items() if getattr(llama_cpp, const) == ftype), None)


def check_gguf_loads_in_llama_cpp(path: str | Path, *, threads: int | None = None) -> dict[str, Any]:
    """Load ``path`` with llama-cpp-python, evaluate a few tokens and check the logits are finite.

    Returns architecture, vocabulary size, training context, parameter count and load seconds;
    ArteError (with llama.cpp's own reason) when it does not load or produces non-finite logits.
    """
    import numpy as np

    path = Path(path)
    start = time.perf_counter()
    llm = open_llama(path, n_ctx=64, logits_all=True, threads=threads)
    try:
        llm.eval([t for t in (llm.token_bos(), llm.token_eos()) if t >= 0] or [0])
        if not np.isfinite(llm.scores[: llm.n_tokens]).all():
            raise ArteError(f"{path}: llama.cpp produced non-finite logits; the file is corrupt, re-export it")
        return {
            "path": str(path),
            "architecture": llm.metadata.get("general.architecture"),
            "n_vocab": llm.n_vocab(),
            "n_ctx_train": int(llm._model.n_ctx_train()),
            "n_params": int(llm._model.n_params()),
            "seconds": round(time.perf_counter() - start, 3),
        }
    finally:
        llm.close()


def open_llama(path: Path, *, n_ctx: int, logits_all: bool, threads: int | None = None) -> Any:
    """A quiet ``llama_cpp.Llama`` for ``path``; ArteError with llama.cpp's last log line on failure."""
    from llama_cpp import Llama

    from arte_edge.export.gguf import _capture_llama_log, _last_error

    if not Path(path).is_file():
        raise ArteError(f"{path}: GGUF file does not exist")
    kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": min(n_ctx, 512), "logits_all": logits_all,
                              "verbose": False, "n_gpu_layers": 0}
    if threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = threads
    with _capture_llama_log() as log:
        try:
            return Llama(str(path), **kwargs)
        except (ValueError, RuntimeError) as exc:
            raise ArteError(f"{path}: llama.cpp cannot load it ({_last_error(log) or exc}); "
                            "re-export it with this llama-cpp-python version") from exc


def verify_gguf(
    hf_dir: str | Path,
    gguf_path: str | Path,
    *,
    prompts: Sequence[Sequence[Message]] = DEFAULT_PROMPTS,
    texts: Sequence[str] = DEFAULT_TEXTS,
    n_tokens: int = 16,
    exact: bool | None = None,
    qtype: str | None = None,
    thresholds: dict[str, Any] | None = None,
    label: str | None = None,
    threads: int | None = None,
    raise_on_failure: bool = True,
) -> dict[str, Any]:
    """Compare the GGUF with its HF source; return the report (for ``verify.json``).

    ``qtype`` picks the thresholds (default: the file's ``general.file_type``); ``exact`` overrides whether
    greedy continuations must match token for token (default: only 16/32-bit); ``thresholds`` overrides
    single fields of THRESHOLDS. Raises VerificationError naming the artifact and the first failed check.
    """
    import torch

    start = time.perf_counter()
    gguf_path = Path(gguf_path)
    label = label or gguf_path.name
    qtype = (qtype or gguf_file_type(gguf_path) or "F16").upper()
    limits = thresholds_for(qtype, thresholds)
    exact = limits.exact_greedy if exact is None else exact
    hf_model, hf_tok = _load_hf(Path(hf_dir))
    prompt_ids = [_chat_ids(hf_tok, m) for m in prompts]
    text_ids = [ids for ids in (list(hf_tok(t, add_special_tokens=True)["input_ids"])[:MAX_TEXT_TOKENS]
                                for t in texts) if len(ids) >= 2]
    longest = max([len(p) + n_tokens for p in prompt_ids] + [len(t) for t in text_ids] + [64])
    llm = open_llama(gguf_path, n_ctx=_round_up(longest + 8, 64), logits_all=True, threads=threads)
    try:
        with torch.inference_mode():
            report: dict[str, Any] = {
                "artifact": label,
                "qtype": qtype,
                "tokenizer": _check_tokenizer(llm, hf_tok, prompts),
                "greedy": _check_greedy(llm, hf_model, hf_tok, prompt_ids, n_tokens, limits.tie_atol),
                "next_token": _check_next_token(llm, hf_model, text_ids),
            }
    finally:
        llm.close()
    report["thresholds"] = {**asdict(limits), "exact_greedy": exact}
    report["failures"] = _failures(report, limits, exact)
    report["passed"] = not report["failures"]
    report["seconds"] = round(time.perf_counter() - start, 2)
    if report["failures"] and raise_on_failure:
        extra = len(report["failures"]) - 1
        err = VerificationError(f"{label}: GGUF verification failed ({qtype}): {report['failures'][0]}"
                                + (f" (+{extra} more)" if extra else ""))
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def _load_hf(hf_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    return model, tok


def _chat_ids(hf_tok: Any, messages: Sequence[Message]) -> list[int]:
    text = hf_tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(hf_tok(text, add_special_tokens=False)["input_ids"])


def _eos_ids(hf_model: Any, hf_tok: Any) -> frozenset[int]:
    ids: set[int] = set()
    gen = getattr(hf_model, "generation_config", None)
    value = getattr(gen, "eos_token_id", None)
    ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    if hf_tok.eos_token_id is not None:
        ids.add(hf_tok.eos_token_id)
    return frozenset(int(i) for i in ids)


# ------------------------------------------------------------------------------------------------ tokenizer


def _check_tokenizer(llm: Any, hf_tok: Any, prompts: Sequence[Sequence[Message]]) -> dict[str, Any]:
    import llama_cpp

    rendered = [hf_tok.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True) for m in prompts]
    probes = [*TOKENIZER_PROBES, *EXTRA_PROBES, *rendered]
    mismatches = []
    for text in probes:
        ref = list(hf_tok(text, add_special_tokens=True)["input_ids"])
        got = list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
        if ref != got:
            mismatches.append({"text": text[:80], "hf": ref[:24], "gguf": got[:24]})
    vocab = llm._model.vocab
    hf_bos = hf_tok.bos_token_id
    probe = list(hf_tok("a", add_special_tokens=True)["input_ids"])
    hf_add_bos = hf_bos is not None and probe[:1] == [hf_bos] and hf_tok.decode(probe[1:]) == "a"
    gguf_template = llm.metadata.get("tokenizer.chat_template")
    hf_template = hf_tok.chat_template if isinstance(hf_tok.chat_template, str) else None
    return {
        "n_probes": len(probes),
        "encode_mismatches": mismatches,
        "hf_bos_token_id": hf_bos,
        "gguf_bos_token_id": llm.token_bos(),
        "hf_eos_token_id": hf_tok.eos_token_id,
        "gguf_eos_token_id": llm.token_eos(),
        "hf_add_bos": bool(hf_add_bos),
        "gguf_add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "bos_ok": hf_bos is None or hf_bos == llm.token_bos(),
        "eos_ok": hf_tok.eos_token_id is None or hf_tok.eos_token_id == llm.token_eos(),
        "add_bos_ok": bool(hf_add_bos) == bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "chat_template_present": gguf_template is not None,
        "chat_template_match": hf_template is None or gguf_template == hf_template,
    }


# ------------------------------------------------------------------------------------------------ greedy


def _check_greedy(llm: Any, hf_model: Any, hf_tok: Any, prompt_ids: list[list[int]], n_tokens: int,
                  tie_atol: float) -> dict[str, Any]:
    eos = _eos_ids(hf_model, hf_tok)
    matched = total = exact_prompts = 0
    ties: list[dict[str, Any]] = []
    divergences: list[dict[str, Any]] = []
    samples = []
    for i, ids in enumerate(prompt_ids):
        ref, ref_logits = _hf_greedy(hf_model, ids, n_tokens, eos)
        got, got_logits = _llama_greedy(llm, ids, n_tokens, eos)
        prefix = _common_prefix(ref, got)
        total += max(len(ref), 1)
        samples.append({"hf": ref, "gguf": got})
        if ref == got:
            exact_prompts += 1
            matched += len(ref)
            continue
        info = _divergence(i, prefix, ref, got, ref_logits, got_logits)
        if info["max_abs_logit_diff"] is not None and info["max_abs_logit_diff"] <= tie_atol:
            ties.append(info)
            matched += len(ref)  # a tie flip: the rest of this continuation is not comparable
        else:
            divergences.append(info)
            matched += prefix
    return {
        "n_prompts": len(prompt_ids),
        "n_tokens": n_tokens,
        "exact_prompts": exact_prompts,
        "tie_flips": ties,
        "divergences": divergences,
        "exact": not divergences,
        "agreement": matched / total if total else 1.0,
        "strict_agreement": sum(_common_prefix(s["hf"], s["gguf"]) for s in samples) / total if total else 1.0,
        "sequences": samples,
    }


def _divergence(prompt: int, pos: int, ref: list[int], got: list[int], ref_logits: list[Any],
                got_logits: list[Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"prompt": prompt, "position": pos, "max_abs_logit_diff": None}
    if pos < len(ref_logits) and pos < len(got_logits) and pos < len(ref) and pos < len(got):
        import numpy as np

        hf, gg = ref_logits[pos], got_logits[pos]
        n = min(hf.shape[-1], gg.shape[-1])
        a, b = ref[pos], got[pos]
        info.update(hf_token=a, gguf_token=b, hf_margin=float(hf[a] - hf[b]), gguf_margin=float(gg[b] - gg[a]),
                    max_abs_logit_diff=float(np.abs(hf[:n] - gg[:n]).max()))
    return info


def _hf_greedy(model: Any, ids: list[int], n_tokens: int, eos: frozenset[int]) -> tuple[list[int], list[Any]]:
    import torch

    out: list[int] = []
    logits: list[Any] = []
    past = None
    step = torch.tensor([ids])
    for _ in range(n_tokens):
        result = model(input_ids=step, past_key_values=past, use_cache=True)
        past = result.past_key_values
        row = result.logits[0, -1].double().numpy()
        token = int(row.argmax())
        out.append(token)
        logits.append(row)
        if token in eos:
            break
        step = torch.tensor([[token]])
    return out, logits


def _llama_greedy(llm: Any, ids: list[int], n_tokens: int, eos: frozenset[int]) -> tuple[list[int], list[Any]]:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    logits: list[Any] = []
    for _ in range(n_tokens):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        token = int(row.argmax())
        out.append(token)
        logits.append(row)
        if token in eos:
            break
        llm.eval([token])
    return out, logits


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ------------------------------------------------------------------------------------------------ next token


def _check_next_token(llm: Any, hf_model: Any, text_ids: list[list[int]]) -> dict[str, Any]:
    import numpy as np
    import torch

    agree = positions = 0
    kl_sum, max_diff = 0.0, 0.0
    for ids in text_ids:
        ref = hf_model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)], dtype=np.float64)
        n = min(ref.shape[-1], got.shape[-1])
        ref, got = ref[:, :n], got[:, :n]
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        kl_sum += float(_kl(ref, got).sum())
        positions += len(ids)
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
    return {
        "n_texts": len(text_ids),
        "n_positions": positions,
        "top1": agree / positions if positions else 0.0,
        "kl_mean": kl_sum / positions if positions else float("inf"),
        "max_abs_logit_diff": max_diff,
    }


def _kl(ref_logits: Any, got_logits: Any) -> Any:
    """Per-position KL(softmax(ref) || softmax(got)) in nats."""
    import numpy as np
    from scipy.special import log_softmax

    log_p, log_q = log_softmax(ref_logits, axis=-1), log_softmax(got_logits, axis=-1)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


# ------------------------------------------------------------------------------------------------ verdict


def _failures(report: dict[str, Any], limits: Thresholds, exact: bool) -> list[str]:
    out: list[str] = []
    tok, greedy, nxt = report["tokenizer"], report["greedy"], report["next_token"]
    if tok["encode_mismatches"]:
        first = tok["encode_mismatches"][0]["text"]
        out.append(f"tokenizer encodes {len(tok['encode_mismatches'])} probe string(s) differently, "
                   f"first {first!r}")
    if not tok["bos_ok"]:
        out.append(f"BOS id {tok['gguf_bos_token_id']} != HF {tok['hf_bos_token_id']}")
    if not tok["eos_ok"]:
        out.append(f"EOS id {tok['gguf_eos_token_id']} != HF {tok['hf_eos_token_id']}")
    if not tok["add_bos_ok"]:
        out.append(f"add_bos flag {tok['gguf_add_bos']} != HF {tok['hf_add_bos']}")
    if not tok["chat_template_match"]:
        out.append("chat template missing from the GGUF metadata" if not tok["chat_template_present"]
                   else "chat template in the GGUF metadata differs from the HF tokenizer's")
    if exact and not greedy["exact"]:
        first = greedy["divergences"][0]
        out.append(f"greedy continuation differs from HF at prompt {first['prompt']} token {first['position']} "
                   f"(max |Δlogit| {first['max_abs_logit_diff'] or float('nan'):.3g} > tie_atol {limits.tie_atol})")
    if greedy["agreement"] < limits.min_greedy_agreement:
        out.append(f"greedy agreement {greedy['agreement']:.3f} < {limits.min_greedy_agreement}")
    if nxt["top1"] < limits.min_top1:
        out.append(f"next-token top-1 agreement {nxt['top1']:.3f} < {limits.min_top1}")
    if nxt["kl_mean"] > limits.max_kl:
        out.append(f"mean KL(HF||GGUF) {nxt['kl_mean']:.4g} > {limits.max_kl}")
    return out

