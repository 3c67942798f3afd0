"""ARTE preference collection: student evaluations per second, prefix-reuse batched scorer vs a naive loop.

    .venv/bin/python benchmarks/arte_student_eval_throughput.py [--gguf PATH] [--task arc_easy]
        [--demos 3] [--questions 16] [--batch 8] [--max-tokens 128] [--threads 2] [--ceiling]

Step 3 of ARTE asks the student every D_pref question with one (q, r) demonstration: drafts × rationales ×
|D_pref| greedy generations. Both paths answer the same ``--demos`` × ``--questions`` conversations greedily
and stop at the answer line:
- naive: ``Llama.create_chat_completion`` per conversation (streamed, stopped by the answer regex), one at a
  time (llama-cpp-python already reuses the longest common prefix with the previous prompt);
- ours: :class:`arte_edge.methods.arte.scorer.PrefixReuseScorer` (demo prefix decoded once per demo, copied
  into ``--batch`` sequences, suffixes and answers decoded together).
Prints a table (evaluations/s, ratio, answer agreement, load average) and writes
``benchmarks/results/arte_student_eval_throughput.json``. Target: ≥ 3× the naive loop.

``--ceiling`` also runs llama.cpp's own ``llama-batched-bench`` (built once beside llama-bench, see
llama_bench_compare.py) on the same file: decode tokens/s with 1 and with ``--batch`` sequences. Their ratio is
what batched decoding can give on this machine at all; on a 2-core CPU a 135M model is compute-bound already at
batch 1, so the ratio is small there, and large on many-core CPUs and GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def build_workload(task_name: str, n_demos: int, n_questions: int):
    """Demonstrations (question, rationale + answer) and the D_pref-like questions, from the task's items."""
    from arte_edge.methods.arte.prompts import shot_prefix
    from arte_edge.tasks import get_task

    task = get_task(task_name)
    items = task.load()
    demos = items[:n_demos]
    questions = items[n_demos:n_demos + n_questions]
    rationales = ["Let us look at each option and pick the one that fits the facts best.",
                  "Think about what the question asks, then recall the relevant science fact.",
                  "Eliminate the options that are clearly wrong; the remaining one is the answer."]
    prefixes = [shot_prefix(task, [(task.user_prompt(d), task.target(rationales[i % len(rationales)], d.answer))])
                for i, d in enumerate(demos)]
    return task, prefixes, questions


class NaiveLoop:
    """One high-level ``chat`` (``create_chat_completion``, streamed to the answer line) per conversation."""

    def __init__(self, model: Any, params: Any):
        self.model, self.params = model, params

    def answer(self, prefix: list[dict[str, str]], questions: list[str]) -> list[str]:
        return [self.model.chat([*prefix, {"role": "user", "content": q}], self.params).text for q in questions]

    def close(self) -> None:
        self.model.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time both scorers on the same workload; returns the result record."""
    from arte_edge import models
    from arte_edge.backends.base import SamplingParams
    from arte_edge.backends.llamacpp import LlamaCppChat
    from arte_edge.evaluation.scoring import ANSWER_DONE
    from arte_edge.methods.arte.scorer import PrefixReuseScorer

    gguf = Path(args.gguf) if args.gguf else models.gguf_path("smollm2-135m-instruct")
    task, prefixes, questions = build_workload(args.task, args.demos, args.questions)
    prompts = [task.user_prompt(q) for q in questions]
    n = len(prefixes) * len(prompts)
    load_before = os.getloadavg()

    naive = NaiveLoop(LlamaCppChat(gguf, threads=args.threads, n_ctx=2048),
                      SamplingParams(max_tokens=args.max_tokens, temperature=0.0, stop_regex=ANSWER_DONE))
    naive.answer(prefixes[0], prompts[:1])  # warm-up
    t0 = time.perf_counter()
    naive_out = [naive.answer(p, prompts) for p in prefixes]
    naive_s = time.perf_counter() - t0
    naive.close()

    ours = PrefixReuseScorer(gguf, threads=args.threads, batch=args.batch, max_tokens=args.max_tokens,
                             stop_regex=ANSWER_DONE)
    ours.answer(prefixes[0], prompts[:1])
    t0 = time.perf_counter()
    ours_out = [ours.answer(p, prompts) for p in prefixes]
    ours_s = time.perf_counter() - t0
    ours.close()

    flat_naive = [t for group in naive_out for t in group]
    flat_ours = [t for group in ours_out for t in group]
    items = questions * len(prefixes)
    same_answer = sum(task.extract_answer(a) == task.extract_answer(b) for a, b in zip(flat_ours, flat_naive,
                                                                                        strict=True))
    same_verdict = sum(task.check(i, a).correct == task.check(i, b).correct
                       for i, a, b in zip(items, flat_ours, flat_naive, strict=True))
    return {
        "gguf": str(gguf), "task": args.task, "n_evaluations": n, "demos": len(prefixes),
        "questions": len(prompts), "batch": args.batch, "max_tokens": args.max_tokens, "threads": args.threads,
        "naive_s": round(naive_s, 2), "ours_s": round(ours_s, 2),
        "naive_eval_per_s": round(n / naive_s, 3), "ours_eval_per_s": round(n / ours_s, 3),
        "speedup": round(naive_s / ours_s, 2), "identical_text": sum(a == b for a, b in zip(flat_ours, flat_naive,
                                                                                             strict=True)),
        "same_answer": same_answer, "same_verdict": same_verdict,
        "accuracy_naive": round(sum(task.check(i, t).correct for i, t in zip(items, flat_naive, strict=True)) / n, 4),
        "accuracy_ours": round(sum(task.check(i, t).correct for i, t in zip(items, flat_ours, strict=True)) / n, 4),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def batched_ceiling(gguf: Path, batch: int, tg: int, threads: int) -> dict[str, Any]:
    """llama-batched-bench decode tokens/s with 1 and ``batch`` sequences (128-token prompts, ``tg`` new tokens)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llama_bench_compare import llama_bench_binary

    build = llama_bench_binary().parent.parent
    binary = build / "bin" / "llama-batched-bench"
    if not binary.is_file():
        subprocess.run(["ninja", "-C", str(build), "llama-batched-bench"], check=True, stdout=subprocess.DEVNULL)
    cmd = [str(binary), "-m", str(gguf), "-c", "8192", "-b", "512", "-ub", "512", "-npp", "128", "-ntg", str(tg),
           "-npl", f"1,{batch}", "-t", str(threads), "-fa", "off"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    decode: dict[int, float] = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[2].isdigit():  # PP | TG | B | N_KV | T_PP | S_PP | T_TG | S_TG | T | S
            decode[int(cells[2])] = float(cells[7])
    if 1 not in decode or batch not in decode:
        raise SystemExit(f"could not read llama-batched-bench's table from: {' '.join(cmd)}")
    return {"decode_tok_s_b1": decode[1], f"decode_tok_s_b{batch}": decode[batch],
            "ratio": round(decode[batch] / decode[1], 2), "command": " ".join(cmd)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default=None, help="Student GGUF (default: bundled SmolLM2-135M Q4_1).")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--demos", type=int, default=3, help="Demonstrations (rationales) to score.")
    parser.add_argument("--questions", type=int, default=16, help="|D_pref| questions per demonstration.")
    parser.add_argument("--batch", type=int, default=8, help="Parallel sequences in our scorer.")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ceiling", action="store_true",
                        help="Also measure llama.cpp's own batched decode speed-up (llama-batched-bench).")
    args = parser.parse_args()
    result = run(args)
    if args.ceiling:
        result["llama_batched_bench"] = batched_ceiling(Path(result["gguf"]), args.batch, args.max_tokens,
                                                        args.threads)
    print(f"{'scorer':<28}{'seconds':>10}{'eval/s':>10}")
    print(f"{'naive create_chat_completion':<28}{result['naive_s']:>10.1f}{result['naive_eval_per_s']:>10.2f}")
    print(f"{'prefix reuse + batch ' + str(args.batch):<28}{result['ours_s']:>10.1f}{result['ours_eval_per_s']:>10.2f}")
    print(f"speedup {result['speedup']}x over {result['n_evaluations']} evaluations; identical text "
          f"{result['identical_text']}/{result['n_evaluations']}, same answer {result['same_answer']}, same verdict "
          f"{result['same_verdict']}; load average before {result['loadavg_before']} after {result['loadavg_after']}")
    if args.ceiling:
        c = result["llama_batched_bench"]
        print(f"llama-batched-bench decode: {c['decode_tok_s_b1']:.1f} tok/s at batch 1, "
              f"{c[f'decode_tok_s_b{args.batch}']:.1f} at batch {args.batch}: batching alone gives {c['ratio']}x here")
    out = Path(__file__).parent / "results" / "arte_student_eval_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
