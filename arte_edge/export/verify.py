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

The HF side (fixed inputs, fp32 outputs) is reference.py; each type's thresholds are in formats.py.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.export.errors import VerificationError
from arte_edge.export.llama_log import capture_llama_log, last_error
from arte_edge.export.reference import (
    DEFAULT_PROMPTS,
    DEFAULT_TEXTS,
    DEFAULT_THREADS,
    TOKENIZER_PROBES,
    HFReference,
    Message,
    common_prefix,
    hf_reference,
    kl_per_position,
)
from arte_edge.formats import Thresholds, qtype_of_ftype, thresholds_for
from arte_edge.llama_build import check_llama_build
from arte_edge.models.gguf_file import read_header

EXTRA_PROBES: tuple[str, ...] = (
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 123456789 3.14 -42 1e-5 0x1F",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot\nSELECT * FROM t WHERE x <> 'y';",
    "<|endoftext|><|im_start|>system\nBe brief.<|im_end|>\n",
    "Tabs\tand\nnewlines\n\n\nand emoji 👩‍💻 and accents: résumé, Zürich, São Paulo",
)



def gguf_file_type(path: str | Path) -> str | None:
    """The quant type name recorded in a GGUF's ``general.file_type`` (e.g. ``Q4_K_M``), if known."""
    ftype = read_header(Path(path)).metadata.get("general.file_type")
    return None if ftype is None else qtype_of_ftype(ftype)


def check_gguf_loads_in_llama_cpp(path: str | Path, *, threads: int | None = None) -> dict[str, Any]:
    """Load ``path`` with llama-cpp-python, evaluate a few tokens and check the logits are finite.

    Returns architecture, vocabulary size, training context, parameter count and load seconds;
    ArteError (with llama.cpp's own reason) when it does not load or produces non-finite logits.
    """
    import numpy as np

    path = Path(path)
    start = time.perf_counter()
    llm = open_llama(path, n_ctx=64, logits_all=True, threads=threads or DEFAULT_THREADS)
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

    if not Path(path).is_file():
        raise ArteError(f"{path}: GGUF file does not exist")
    check_llama_build()
    kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": min(n_ctx, 512), "logits_all": logits_all,
                              "verbose": False, "n_gpu_layers": 0}
    if threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = threads
    with capture_llama_log() as log:
        try:
            return Llama(str(path), **kwargs)
        except (ValueError, RuntimeError) as exc:
            raise ArteError(f"{path}: llama.cpp cannot load it ({last_error(log) or exc}); "
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
    reference: HFReference | None = None,
) -> dict[str, Any]:
    """Compare the GGUF with its HF source; return the report (for ``verify.json``).

    ``qtype`` picks the thresholds (default: the file's ``general.file_type``); ``exact`` overrides whether
    greedy continuations must match token for token (default: only 16/32-bit); ``thresholds`` overrides
    single fields of the type's thresholds (``formats.GGUF_TYPES``). ``reference`` (from ``hf_reference``)
    skips re-running the HF model; its prompts/texts then replace ``prompts``/``texts``/``n_tokens``.
    ``threads`` for torch and llama.cpp (default DEFAULT_THREADS). Raises VerificationError naming the
    artifact and the first failed check.
    """
    start = time.perf_counter()
    gguf_path = Path(gguf_path)
    label = label or gguf_path.name
    qtype = (qtype or gguf_file_type(gguf_path) or "F16").upper()
    limits = thresholds_for(qtype, thresholds)
    exact = limits.exact_greedy if exact is None else exact
    ref = reference or hf_reference(hf_dir, prompts=prompts, texts=texts, n_tokens=n_tokens, threads=threads)
    longest = max([len(p) + ref.n_tokens for p in ref.prompt_ids] + [len(t) for t in ref.text_ids] + [64])
    llm = open_llama(gguf_path, n_ctx=_round_up(longest + 8, 64), logits_all=True,
                     threads=threads or DEFAULT_THREADS)
    try:
        report: dict[str, Any] = {
            "artifact": label,
            "qtype": qtype,
            "tokenizer": _check_tokenizer(llm, ref.tokenizer, ref.prompts),
            "greedy": _check_greedy(llm, ref, limits.tie_atol),
            "next_token": _check_next_token(llm, ref),
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


def _check_greedy(llm: Any, ref: HFReference, tie_atol: float) -> dict[str, Any]:
    matched = total = exact_prompts = 0
    ties: list[dict[str, Any]] = []
    divergences: list[dict[str, Any]] = []
    samples = []
    for i, (ids, (want, want_logits)) in enumerate(zip(ref.prompt_ids, ref.greedy, strict=True)):
        got, got_logits = _llama_greedy(llm, ids, ref.n_tokens, ref.eos_ids)
        prefix = common_prefix(want, got)
        total += max(len(want), 1)
        samples.append({"hf": want, "gguf": got})
        if want == got:
            exact_prompts += 1
            matched += len(want)
            continue
        info = _divergence(i, prefix, want, got, want_logits, got_logits)
        if info["max_abs_logit_diff"] is not None and info["max_abs_logit_diff"] <= tie_atol:
            ties.append(info)
            matched += len(want)  # a tie flip: the rest of this continuation is not comparable
        else:
            divergences.append(info)
            matched += prefix
    return {
        "n_prompts": len(ref.prompt_ids),
        "n_tokens": ref.n_tokens,
        "exact_prompts": exact_prompts,
        "tie_flips": ties,
        "divergences": divergences,
        "exact": not divergences,
        "agreement": matched / total if total else 1.0,
        "strict_agreement": sum(common_prefix(s["hf"], s["gguf"]) for s in samples) / total if total else 1.0,
        "sequences": samples,
    }


def _divergence(prompt: int, pos: int, ref: list[int], got: list[int], ref_logits: list[Any],
                got_logits: list[Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"prompt": prompt, "position": pos, "max_abs_logit_diff": None}
    if pos < len(ref_logits) and pos < len(got_logits) and pos < len(ref) and pos < len(got):
        import numpy as np

        hf, gg = ref_logits[pos].astype(np.float64), got_logits[pos].astype(np.float64)
        n = min(hf.shape[-1], gg.shape[-1])
        a, b = ref[pos], got[pos]
        info.update(hf_token=a, gguf_token=b, hf_margin=float(hf[a] - hf[b]), gguf_margin=float(gg[b] - gg[a]),
                    max_abs_logit_diff=float(np.abs(hf[:n] - gg[:n]).max()))
    return info


def _llama_greedy(llm: Any, ids: list[int], n_tokens: int, eos: frozenset[int]) -> tuple[list[int], list[Any]]:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    logits: list[Any] = []
    for _ in range(n_tokens):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        token = int(row.argmax())
        out.append(token)
        logits.append(row)
        if token in eos:
            break
        llm.eval([token])
    return out, logits


# ------------------------------------------------------------------------------------------------ next token


def _check_next_token(llm: Any, ref: HFReference) -> dict[str, Any]:
    import numpy as np

    agree = positions = 0
    kl_sum, max_diff = 0.0, 0.0
    for ids, ref_logits in zip(ref.text_ids, ref.text_logits, strict=True):
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)], dtype=np.float64)
        n = min(ref_logits.shape[-1], got.shape[-1])
        want, got = ref_logits[:, :n].astype(np.float64), got[:, :n]
        agree += int((want.argmax(-1) == got.argmax(-1)).sum())
        kl_sum += float(kl_per_position(want, got).sum())
        positions += len(ids)
        max_diff = max(max_diff, float(np.abs(want - got).max()))
    return {
        "n_texts": len(ref.text_ids),
        "n_positions": positions,
        "top1": agree / positions if positions else 0.0,
        "kl_mean": kl_sum / positions if positions else float("inf"),
        "max_abs_logit_diff": max_diff,
    }


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

