"""Our KL divergence measure against llama.cpp's own ``llama-perplexity --kl-divergence``, same files, same text.

    nice -n 19 .venv/bin/python benchmarks/kl_crosscheck.py [--models NAME_OR_HF_DIR[:TYPE,...] ...]
        [--hf-dir runs/demo/student/merged[:TYPE,...]] [--ctx 512] [--chunks 4] [--threads 2] [--keep DIR]

For each model (a bundled model name or an HF folder) an f16 GGUF is converted and quantized to each asked type
in a temporary folder (deleted afterwards). One text (arte_edge.export.reference.DEFAULT_TEXTS, then ARC-Easy
questions) is scored by both tools on the same positions:

- llama-perplexity (built from the same llama-cpp-python sdist, see llama_bench_compare.py) runs once on the
  f16 file with ``--kl-divergence-base`` (which saves its log-probabilities) and once per quant with
  ``--kl-divergence``; we parse its ``Mean KLD ± err`` and ``Same top p``. What it scores (perplexity.cpp,
  ``perplexity`` and ``kl_divergence``): the text tokenized with BOS (when the vocab adds one), cut into
  ``n_chunk = min(--chunks, n_tokens // ctx)`` chunks of ``ctx`` tokens; the first token of each chunk is
  replaced by BOS when the vocab adds BOS; the logits at positions ``ctx//2 .. ctx-2`` (``ctx-1-ctx//2`` per
  chunk; the last token's logits are not used) give KL(base || quant), the base stored as 16-bit quantized
  log-probabilities, tokens below log-prob -16 left out.
- ours: the same chunks (token ids read back from llama-perplexity's base file) through llama-cpp-python,
  ``arte_edge.export.reference.kl_per_position`` on the same positions, mean over positions. Column ``f16
  base``: KL(f16 GGUF || quant GGUF), the same quantity as llama's. Column ``HF fp32 base``: KL(fp32 HF model
  || quant GGUF), what the product's verification measures.

Flash attention: llama-cpp-python's ``Llama`` (our runtime) defaults to ``flash_attn=False``, llama-perplexity
to ``-fa auto`` (on, on CPU). The matched comparison runs llama-perplexity with ``-fa off``; a second column
(skip with ``--no-fa-auto``) shows its default. On CPU the kernel changes a quant's logits per position well
beyond f16 noise (it flips top tokens), while the mean KLD moved by 1.3% at most on the files we ran; only the
matched column tests our measure.

Diagnostics in the JSON: KL(llama's stored f16 log-probs || our f16 logits) (~0 when positions line up), and
llama's formula (its stored base, its -16 cut-off) applied to our quant logits. Target: ours within 10% of
llama-perplexity's for each quantized file. Prints a Markdown table; writes benchmarks/results/kl_crosscheck.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from llama_bench_compare import LLAMA_CPP_PYTHON, llama_tool_binary, log

RESULTS = Path(__file__).resolve().parent / "results" / "kl_crosscheck.json"
DEFAULT_MODELS = ["smollm2-135m-instruct:Q8_0,Q4_K_M,Q4_0", "qwen2.5-coder-0.5b-instruct:Q4_K_M"]
TARGET = 0.10


def corpus(n_chars: int) -> str:
    """DEFAULT_TEXTS, then ARC-Easy questions (with their choices), joined by blank lines, ``n_chars`` or more."""
    from arte_edge.export.reference import DEFAULT_TEXTS
    from arte_edge.tasks.registry import get_task

    parts = [t.strip() for t in DEFAULT_TEXTS]
    items = iter(get_task("arc_easy").load())
    while sum(len(p) + 2 for p in parts) < n_chars:
        parts.append(next(items).question.strip())
    return "\n\n".join(parts)  # no trailing newline: llama-perplexity strips one from -f files


# ---- llama-perplexity -----------------------------------------------------------------------------------


def run_perplexity(binary: Path, gguf: Path, text: Path, base: Path, args: argparse.Namespace,
                   write_base: bool, fa: str = "off") -> dict[str, Any]:
    """Run llama-perplexity on ``gguf``: save the base log-probs (``write_base``) or score KL against them.

    ``fa``: its ``-fa`` (flash attention: off, as llama-cpp-python's default that we run, or auto, its own).
    """
    cmd = [str(binary), "-m", str(gguf), "-f", str(text), "-c", str(args.ctx), "--chunks", str(args.chunks),
           "-t", str(args.threads), "-fa", fa, "--kl-divergence-base", str(base)]
    cmd += [] if write_base else ["--kl-divergence"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"llama-perplexity failed ({proc.returncode}):\n{out[-3000:]}")
    found: dict[str, Any] = {"seconds": round(time.perf_counter() - start, 2), "command": " ".join(cmd)}
    patterns = {"kld": r"Mean\s+KLD:\s+(\S+)\s+±\s+(\S+)",
                "same_top_pct": r"Same top p:\s+(\S+)\s+±\s+(\S+)\s*%",
                "ppl_q": r"Mean PPL\(Q\)\s+:\s+(\S+)\s+±\s+(\S+)",
                "ppl_base": r"Mean PPL\(base\)\s+:\s+(\S+)\s+±\s+(\S+)"}
    for key, pattern in patterns.items():
        m = re.search(pattern, out)
        if m:
            found[key], found[key + "_err"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"(?:computing|calculating perplexity) over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), "
                  r"n_seq=(\d+)", out)
    if m:
        found.update(zip(("n_chunk", "n_ctx", "n_batch", "n_seq"), map(int, m.groups()), strict=True))
    if not write_base and "kld" not in found:
        raise SystemExit(f"no 'Mean KLD' in llama-perplexity's output (fewer than 100 positions?):\n{out[-3000:]}")
    return found


class BaseFile:
    """llama-perplexity's ``--kl-divergence-base`` file: header, token ids, 16-bit log-probs per scored row."""

    def __init__(self, path: Path):
        head = np.fromfile(path, dtype=np.uint8, count=20)
        if head[:8].tobytes() != b"_logits_":
            raise SystemExit(f"{path}: not a llama-perplexity logits file")
        self.n_ctx = int(head[8:12].view(np.uint32)[0])
        self.n_vocab, self.n_chunk = (int(x) for x in head[12:20].view(np.int32))
        self.tokens = np.fromfile(path, dtype=np.int32, count=self.n_chunk * self.n_ctx, offset=20)
        self.first = self.n_ctx // 2
        self.rows = self.n_ctx - 1 - self.first
        self.nv = 2 * ((self.n_vocab + 1) // 2) + 4
        offset = 20 + 4 * self.tokens.size
        self.q = np.memmap(path, dtype=np.uint16, mode="r", offset=offset, shape=(self.n_chunk * self.rows, self.nv))

    def chunks(self) -> list[list[int]]:
        """The chunks' token ids as written (before BOS replaces the first token)."""
        return [self.tokens[i * self.n_ctx:(i + 1) * self.n_ctx].tolist() for i in range(self.n_chunk)]

    def log_probs(self, rows: slice) -> np.ndarray:
        """Dequantized base log-probs of ``rows`` (float32, as llama-perplexity reads them)."""
        block = np.asarray(self.q[rows])
        scale_min = block[:, :4].copy().view(np.float32)  # [scale, min_log_prob] per row
        return scale_min[:, :1] * block[:, 4:4 + self.n_vocab].astype(np.float32) + scale_min[:, 1:2]


def llama_formula(base: BaseFile, logits: np.ndarray, block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """llama-perplexity's per-position KL and same-top flags, with its stored base and our ``logits``."""
    from scipy.special import log_softmax

    kls, same = [], []
    for i in range(0, len(logits), block):
        lp = base.log_probs(slice(i, i + block)).astype(np.float64)
        lq = log_softmax(logits[i:i + block, :base.n_vocab].astype(np.float64), axis=-1)
        kls.append(np.where(lp > -16, np.exp(lp) * (lp - lq), 0.0).sum(-1))
        same.append(lp.argmax(-1) == lq.argmax(-1))
    return np.concatenate(kls), np.concatenate(same)


# ---- ours -----------------------------------------------------------------------------------------------


def bos_chunks(chunks: list[list[int]], bos: int | None) -> list[list[int]]:
    """The chunks as llama-perplexity evaluates them: first token replaced by BOS when the vocab adds BOS."""
    return [[bos, *c[1:]] if bos is not None else list(c) for c in chunks]


def gguf_logits(path: Path, base: BaseFile, threads: int, text: str | None = None) -> tuple[np.ndarray, dict]:
    """Our logits (llama-cpp-python, float32) at the scored positions of every chunk, and tokenizer facts."""
    import llama_cpp

    from arte_edge.export.verify import open_llama

    llm = open_llama(path, n_ctx=base.n_ctx, logits_all=True, threads=threads)
    try:
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab))
        info: dict[str, Any] = {"add_bos": add_bos, "bos": llm.token_bos() if add_bos else None}
        if text is not None:
            ours = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)[: base.tokens.size]
            info["tokens_match_llama_perplexity"] = ours == base.tokens.tolist()
        out = []
        for chunk in bos_chunks(base.chunks(), info["bos"]):
            llm.reset()
            llm.eval(chunk)
            out.append(np.array(llm.scores[base.first:base.n_ctx - 1], dtype=np.float32))
        return np.concatenate(out), info
    finally:
        llm.close()


def hf_logits(hf_dir: Path, base: BaseFile, bos: int | None, threads: int) -> np.ndarray:
    """The fp32 HF model's logits at the scored positions of every chunk (same token ids, same BOS rule)."""
    import torch

    from arte_edge.export.reference import load_hf_fp32

    model, _ = load_hf_fp32(hf_dir)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            out = [model(input_ids=torch.tensor([c])).logits[0, base.first:base.n_ctx - 1].float().numpy()
                   for c in bos_chunks(base.chunks(), bos)]
    finally:
        torch.set_num_threads(previous)
    return np.concatenate(out)


def kl_stats(ref: np.ndarray, got: np.ndarray, block: int = 64) -> dict[str, float]:
    """Mean KL(ref || got) over positions (kl_per_position), its ± as llama-perplexity computes it, top-1 agreement."""
    from arte_edge.export.reference import kl_per_position

    n = min(ref.shape[-1], got.shape[-1])
    kl = np.concatenate([kl_per_position(ref[i:i + block, :n].astype(np.float64),
                                         got[i:i + block, :n].astype(np.float64)) for i in range(0, len(ref), block)])
    top1 = float((ref[:, :n].argmax(-1) == got[:, :n].argmax(-1)).mean())
    return {"mean": float(kl.mean()), "err": _sem(kl), "top1": top1, "n": int(kl.size)}


def _sem(x: np.ndarray) -> float:
    return float(np.sqrt(x.var() / (x.size - 1))) if x.size > 10 else 0.0


# ---- one model ------------------------------------------------------------------------------------------


def crosscheck(spec: str, binary: Path, text_path: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Convert, quantize, score with both tools; a dict with per-quant rows and the model's diagnostics."""
    from arte_edge.export.converter import convert_to_gguf
    from arte_edge.export.quantize import quantize_gguf
    from arte_edge.models.convert import hf_folder

    name, _, types = spec.partition(":")
    quants = [q.strip().upper() for q in (types or "Q4_K_M").split(",") if q.strip()]
    hf_dir = Path(name) if Path(name).is_dir() else hf_folder(name)
    label = Path(name).name if Path(name).is_dir() else name
    t0 = time.perf_counter()
    f16 = convert_to_gguf(hf_dir, work / f"{label}.f16.gguf", "f16")
    files = {q: quantize_gguf(f16, work / f"{label}.{q}.gguf", q, threads=args.threads) for q in quants}
    prep_s = time.perf_counter() - t0
    base_path = work / f"{label}.base.kld"
    log(f"{label}: f16 + {', '.join(quants)} ready in {prep_s:.0f} s; llama-perplexity base pass")
    llama_base = run_perplexity(binary, f16, text_path, base_path, args, write_base=True)
    auto_base = work / f"{label}.base-fa-auto.kld"
    if args.fa_auto:
        run_perplexity(binary, f16, text_path, auto_base, args, write_base=True, fa="auto")
    base = BaseFile(base_path)
    if base.n_chunk < args.chunks:
        raise SystemExit(f"{label}: text gave {base.n_chunk} chunks of {base.n_ctx}, asked {args.chunks}")
    log(f"{label}: our f16 and HF fp32 passes ({base.n_chunk} chunks x {base.rows} positions)")
    ours_f16, tok = gguf_logits(f16, base, args.threads, text=text_path.read_text(encoding="utf-8"))
    align_kl, align_same = llama_formula(base, ours_f16)
    ref_hf = hf_logits(hf_dir, base, tok["bos"], args.threads)
    rows = []
    for q in quants:
        path = Path(files[q].path)
        log(f"{label}: {q}: llama-perplexity --kl-divergence, then ours")
        llama = run_perplexity(binary, path, text_path, base_path, args, write_base=False)
        auto = run_perplexity(binary, path, text_path, auto_base, args, False, "auto") if args.fa_auto else {}
        got, _ = gguf_logits(path, base, args.threads)
        ours, prod = kl_stats(ours_f16, got), kl_stats(ref_hf, got)
        formula_kl, formula_same = llama_formula(base, got)
        ratio = ours["mean"] / llama["kld"] if llama["kld"] else float("nan")
        rows.append({
            "model": label, "file": path.name, "type": q, "size_bytes": path.stat().st_size, "n_positions": ours["n"],
            "llama_kld": llama["kld"], "llama_kld_err": llama["kld_err"],
            "llama_same_top": llama.get("same_top_pct", float("nan")) / 100,
            "ours_f16_base": ours["mean"], "ours_f16_base_err": ours["err"], "ours_f16_top1": ours["top1"],
            "ours_hf_base": prod["mean"], "ours_hf_base_err": prod["err"], "ours_hf_top1": prod["top1"],
            "ratio_ours_over_llama": ratio, "within_10pct": bool(abs(ratio - 1) <= TARGET),
            "llama_fa_auto_kld": auto.get("kld"), "llama_fa_auto_kld_err": auto.get("kld_err"),
            "llama_fa_auto_same_top": auto["same_top_pct"] / 100 if auto else None,
            "llama_formula_on_our_logits": {"kld": float(formula_kl.mean()), "same_top": float(formula_same.mean())},
            "llama_perplexity": {k: v for k, v in llama.items() if k != "command"},
            "llama_perplexity_fa_auto": {k: v for k, v in auto.items() if k != "command"}})
        del got
    return {"model": label, "hf_dir": str(hf_dir), "prep_seconds": round(prep_s, 1), "tokenizer": tok,
            "llama_base_pass": llama_base, "n_chunk": base.n_chunk, "n_ctx": base.n_ctx, "first": base.first,
            "scored_per_chunk": base.rows,
            "alignment_kl_llama_f16_vs_our_f16": {"mean": float(align_kl.mean()), "max": float(align_kl.max()),
                                                  "same_top": float(align_same.mean())},
            "f16_vs_hf": kl_stats(ref_hf, ours_f16), "rows": rows}


# ---- output ---------------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the per-file comparison."""
    lines = ["| model | file | type | n pos | llama-perplexity KLD (-fa off) | ours (f16 base) | ours (HF fp32 base) | "
             "ours/llama | within 10% | same top: llama / ours f16 / ours HF | llama-perplexity KLD (-fa auto) |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in rows:
        auto = "–" if r["llama_fa_auto_kld"] is None else (
            f"{r['llama_fa_auto_kld']:.5f} ± {r['llama_fa_auto_kld_err']:.5f} (ours/it "
            f"{r['ours_f16_base'] / r['llama_fa_auto_kld']:.3f}, same top {100 * r['llama_fa_auto_same_top']:.1f}%)")
        lines.append(
            f"| {r['model']} | {r['file']} | {r['type']} | {r['n_positions']} | "
            f"{r['llama_kld']:.5f} ± {r['llama_kld_err']:.5f} | {r['ours_f16_base']:.5f} ± "
            f"{r['ours_f16_base_err']:.5f} | {r['ours_hf_base']:.5f} ± {r['ours_hf_base_err']:.5f} | "
            f"{r['ratio_ours_over_llama']:.3f} | {'yes' if r['within_10pct'] else 'no'} | "
            f"{100 * r['llama_same_top']:.1f}% / {100 * r['ours_f16_top1']:.1f}% / {100 * r['ours_hf_top1']:.1f}% | "
            f"{auto} |")
    return "\n".join(lines)


def host_info() -> dict[str, Any]:
    """Host profile (arte_edge.bench.devices, cached), Python, platform, load average."""
    from arte_edge.bench.devices import host_profile

    return {"profile": host_profile().model_dump(mode="json"), "python": sys.version.split()[0],
            "platform": platform.platform(), "load_1m": os.getloadavg()[0]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--models", nargs="*", default=DEFAULT_MODELS,
                    help="NAME_OR_HF_DIR[:TYPE,TYPE...] (bundled model name or HF folder; types default Q4_K_M). "
                         f"Default: {' '.join(DEFAULT_MODELS)}")
    ap.add_argument("--hf-dir", action="append", default=[], metavar="DIR[:TYPES]",
                    help="Also check this HF folder (e.g. runs/demo/student/merged:Q4_K_M); repeatable.")
    ap.add_argument("--ctx", "-c", type=int, default=512, help="llama-perplexity -c: chunk length in tokens")
    ap.add_argument("--chunks", type=int, default=4, help="chunks scored (ctx-1-ctx//2 positions each)")
    ap.add_argument("--threads", "-t", type=int, default=2, help="threads for llama-perplexity, ours and torch")
    ap.add_argument("--no-fa-auto", dest="fa_auto", action="store_false",
                    help="Skip the extra llama-perplexity passes with its default -fa auto (flash attention on).")
    ap.add_argument("--keep", type=Path, default=None, help="Keep the GGUFs and base files in this folder.")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build llama-perplexity (once), cross-check every model, print the table and write the JSON."""
    args = parse_args(argv)
    started = time.time()
    binary = llama_tool_binary("llama-perplexity")
    log(f"llama-perplexity: {binary}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="kl_crosscheck-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    try:
        text = corpus(args.chunks * args.ctx * 6)  # >= ~4 characters per token for both tokenizers
        text_path = work / "text.txt"
        text_path.write_text(text, encoding="utf-8")
        models = [crosscheck(spec, binary, text_path, work, args) for spec in [*args.models, *args.hf_dir]]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = [r for m in models for r in m["rows"]]
    out = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "llama_cpp_python": LLAMA_CPP_PYTHON, "llama_perplexity": str(binary),
           "llama_perplexity_version": subprocess.run([str(binary), "--version"], capture_output=True,
                                                      text=True).stderr.strip(),
           "text": {"source": "arte_edge.export.reference.DEFAULT_TEXTS + ARC-Easy questions", "chars": len(text)},
           "host": host_info(), "load_1m_before": load_before,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
           "duration_s": round(time.time() - started, 1), "target": f"|ours/llama - 1| <= {TARGET}",
           "models": [{k: v for k, v in m.items() if k != "rows"} for m in models], "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(table(rows))
    for m in models:
        a, f = m["alignment_kl_llama_f16_vs_our_f16"], m["f16_vs_hf"]
        print(f"\n{m['model']}: {m['n_chunk']} chunks x {m['scored_per_chunk']} positions (ctx {m['n_ctx']}, from "
              f"{m['first']}); tokens match llama-perplexity: {m['tokenizer'].get('tokens_match_llama_perplexity')}; "
              f"add BOS: {m['tokenizer']['add_bos']}; KL(llama f16 || our f16) {a['mean']:.2e} (max {a['max']:.2e}); "
              f"KL(HF fp32 || f16 GGUF) {f['mean']:.2e}")
    print(f"\n{time.time() - started:.0f} s; JSON: {args.out}")


if __name__ == "__main__":
    main()
