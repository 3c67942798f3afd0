"""Pipeline speed, old path vs new path on the same inputs, in one run (alternating, medians), with the ceiling.

Stage measured so far (issue 16, item 4):

- ``teacher``: the demo recipe's teacher (configs/demo.yaml: Qwen2.5-Coder-0.5B GGUF, llama.cpp, greedy, its
  max_tokens) answers the demo's first ``--n`` train-pool questions with the standard method's teacher prompt,
  in windows of the backend's batch size. *old*: batched decoding, every prompt prefilled whole (the path before
  shared-prefix reuse); *new*: the windows' common prefix (system prompt, style instruction, format demo) is
  decoded once and its KV cells shared (``llama_memory_seq_cp``). Reported: median seconds over ``--reps``
  alternating repetitions, prompt tokens processed, greedy agreement between the paths (exact text, and the
  share of items with the same parsed answer: llama.cpp batching is not batch-invariant, so they can differ),
  and the ceiling: llama.cpp's own ``llama-bench`` pp/tg for the same file and threads (built once from the same
  sdist, see benchmarks/llama_bench_compare.py), turned into the time the engine would need for the same
  prompt and completion tokens at batch 1 — the teacher stage as a fraction of what the engine can do here.

- ``train``: the demo recipe's LoRA training of its student on the demo's examples (``runs/demo/data/
  examples.jsonl`` when a demo ran, else ``--n-train`` train-pool questions with their gold answer as a short
  target). *old*: fp32 (``train.precision: auto`` on CPU); *new*: ``train.precision: bf16`` (autocast; the
  candidate for CPUs with AMX-BF16). Reported: median tokens/s, the loss at every logged step of both (max
  absolute difference), the precision each ran in.

The evaluation stage is not measured by this script yet.

    .venv/bin/python benchmarks/pipeline_speed.py --stages teacher train --n 32 --reps 3 [--no-ceiling]

Prints a Markdown table; writes benchmarks/results/pipeline_speed.json. Run it on a quiet machine (the load
average before each repetition is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"


def demo_jobs(n: int) -> tuple[Any, Any, list[Any], list[list[dict[str, str]]]]:
    """The demo recipe, its task, its first ``n`` train-pool items and their teacher conversations."""
    from arte_edge.methods.common import teacher_messages
    from arte_edge.recipes import load_recipe
    from arte_edge.tasks.registry import get_task
    from arte_edge.tasks.splits import make_splits

    recipe = load_recipe(ROOT / "configs" / "demo.yaml")
    task = get_task(recipe.task)
    s = recipe.splits
    splits = make_splits(task.load(), seeds=s.seeds, preference=s.preference, train_pool=s.train_pool, eval=s.eval,
                         seed=recipe.seed)
    items = splits["train_pool"][:n]
    return recipe, task, items, [teacher_messages(task, item) for item in items]


def run_teacher(model: Any, conversations: list[list[dict[str, str]]], params: Any, share: bool) -> dict[str, Any]:
    """One pass over ``conversations`` in windows of the model's batch size; texts, seconds, tokens."""
    from arte_edge.backends.llamacpp import BatchedDecoder

    decoder = BatchedDecoder(model.llm, n_seq=model.batch_size, n_ctx_per_seq=model.n_ctx, threads=model.threads,
                             share_prefix=share)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        out = []
        for lo in range(0, len(conversations), model.batch_size):
            out += decoder.generate(conversations[lo:lo + model.batch_size], params, first_index=lo)
    finally:
        decoder.close()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "texts": [c.text for c in out], "load_1m": load,
            "prompt_tokens": sum(c.prompt_tokens for c in out),
            "prompt_tokens_processed": sum(c.meta.get("prompt_tokens_processed", c.prompt_tokens) for c in out),
            "completion_tokens": sum(c.completion_tokens for c in out)}


def ceiling(gguf: Path, threads: int, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """llama-bench pp/tg (tokens/s) for ``gguf`` and the batch-1 time it implies for the same tokens."""
    sys.path.insert(0, str(Path(__file__).parent))
    from llama_bench_compare import llama_bench_binary, run_llama_bench

    res = run_llama_bench(llama_bench_binary(), gguf, pp=256, tg=64, threads=threads, reps=3)
    pp, tg = statistics.median(res["pp_tok_s"]), statistics.median(res["tg_tok_s"])
    return {"llama_bench_pp_tok_s": round(pp, 1), "llama_bench_tg_tok_s": round(tg, 1),
            "batch1_seconds": round(prompt_tokens / pp + completion_tokens / tg, 2), "config": res["config"]}


def agreement(task: Any, items: list[Any], a: list[str], b: list[str]) -> dict[str, Any]:
    """How close two passes' greedy outputs are: identical texts, and identical parsed answers."""
    same_text = sum(x == y for x, y in zip(a, b, strict=True))
    same_answer = sum(task.extract_answer(x) == task.extract_answer(y) for x, y in zip(a, b, strict=True))
    return {"n": len(a), "identical_text": same_text, "same_answer": same_answer}


def train_examples(recipe: Any, task: Any, n: int) -> tuple[list[dict[str, Any]], str]:
    """The demo's own training examples when a demo ran, else ``n`` train-pool items with a short gold target."""
    from arte_edge.evaluation.scoring import answer_messages
    from arte_edge.rundir import read_jsonl

    path = ROOT / "runs" / "demo" / "data" / "examples.jsonl"
    if path.exists() and read_jsonl(path):
        return read_jsonl(path), str(path.relative_to(ROOT))
    _, _, items, _ = demo_jobs(n)
    rows = []
    for item in items:
        text = task.item_choices(item)["ABCDEFGHIJ".index(item.answer)]
        rows.append({"messages": [*answer_messages(task, item),
                                  {"role": "assistant", "content": f"The correct choice is {text}.\nAnswer: "
                                                                   f"{item.answer}"}]})
    return rows, f"{len(rows)} train-pool questions with a gold target (no demo run found)"


def run_train(recipe: Any, examples: list[dict[str, Any]], precision: str, work: Path) -> dict[str, Any]:
    """One LoRA training of the demo's student on ``examples``; seconds, tokens/s and the loss curve."""
    import shutil

    from arte_edge import models
    from arte_edge.training.sft import train_adapter

    shutil.rmtree(work, ignore_errors=True)
    cfg = recipe.train.model_copy(update={"precision": precision, "save_steps": 10_000})
    base = models.hf_folder(recipe.student.model)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    info = train_adapter(base, examples, work / "adapter", cfg, recipe.seed, work / "checkpoints")
    seconds = time.perf_counter() - start
    history = json.loads((work / "train_log.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    return {"seconds": seconds, "train_runtime_s": info["runtime_s"], "tokens": info["tokens"],
            "tokens_per_s": info["tokens"] / info["runtime_s"] if info["tokens"] and info["runtime_s"] else None,
            "precision": info["precision"], "losses": losses, "load_1m": load}


def measure_train(args: argparse.Namespace) -> dict[str, Any]:
    """Training old (fp32) vs new (bf16 autocast), alternating; tokens/s medians and the loss curves."""
    import tempfile

    recipe, task, _, _ = demo_jobs(1)
    examples, source = train_examples(recipe, task, args.n_train)
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="arte-train-bench-") as tmp:
        for rep in range(args.reps):
            for name in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                runs[name].append(run_train(recipe, examples, "fp32" if name == "old" else "bf16",
                                            Path(tmp) / name))
                print(f"train rep {rep + 1} {name}: {runs[name][-1]['tokens_per_s']:.0f} tok/s",
                      file=sys.stderr, flush=True)
    med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    diffs = [abs(a - b) for a, b in zip(runs["old"][0]["losses"], runs["new"][0]["losses"], strict=False)]
    return {"stage": "train", "examples": source, "n_examples": len(examples), "reps": args.reps,
            "precision_new": runs["new"][0]["precision"],
            "old_tokens_per_s": [round(r["tokens_per_s"], 1) for r in runs["old"]],
            "new_tokens_per_s": [round(r["tokens_per_s"], 1) for r in runs["new"]],
            "old_median_tok_s": round(med["old"], 1), "new_median_tok_s": round(med["new"], 1),
            "speedup": round(med["new"] / med["old"], 3),
            "loss_old": runs["old"][0]["losses"], "loss_new": runs["new"][0]["losses"],
            "loss_max_abs_diff": round(max(diffs), 4) if diffs else None,
            "final_loss": {"old": runs["old"][0]["losses"][-1], "new": runs["new"][0]["losses"][-1]},
            "load_1m": {k: [round(r["load_1m"], 2) for r in v] for k, v in runs.items()}}


def main(argv: list[str] | None = None) -> None:
    """Measure each asked stage old vs new, alternating, and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", choices=["teacher", "train"], default=["teacher", "train"])
    ap.add_argument("--n", type=int, default=32, help="train-pool questions (the demo makes up to 160 calls)")
    ap.add_argument("--n-train", type=int, default=54, help="training examples when no demo run exists")
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions of each path")
    ap.add_argument("--no-ceiling", action="store_true", help="skip llama-bench (it is built once, ~8 min)")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    if "teacher" in args.stages:
        results["teacher"] = measure_teacher(args)
    if "train" in args.stages:
        results["train"] = measure_train(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline_speed.json").write_text(json.dumps(results, indent=1))
    print("| stage | n | old (median) | new (median) | speedup | detail | agreement | ceiling |")
    print("|---|---:|---:|---:|---:|---|---|---|")
    if "teacher" in results:
        t = results["teacher"]
        agree = t["agreement_old_vs_new"]
        ceil = t.get("ceiling", {}).get("batch1_seconds", "–")
        print(f"| teacher | {t['n']} | {t['old_median_s']:.1f} s | {t['new_median_s']:.1f} s | {t['speedup']:.2f}× | "
              f"prompt tokens processed {t['prompt_tokens_processed_old']} → {t['prompt_tokens_processed_new']} | "
              f"{agree['same_answer']}/{agree['n']} same answer ({agree['identical_text']} identical text) | "
              f"llama-bench batch-1 time for the same tokens: {ceil} s |")
    if "train" in results:
        r = results["train"]
        print(f"| train | {r['n_examples']} | {r['old_median_tok_s']:.0f} tok/s | {r['new_median_tok_s']:.0f} tok/s | "
              f"{r['speedup']:.2f}× | fp32 → {r['precision_new']} | final loss {r['final_loss']['old']:.3f} vs "
              f"{r['final_loss']['new']:.3f} (max step diff {r['loss_max_abs_diff']}) | – |")


def measure_teacher(args: argparse.Namespace) -> dict[str, Any]:
    """Teacher generation old (whole prompts) vs new (shared prefix), alternating, with the ceiling."""
    from arte_edge import models
    from arte_edge.backends.base import SamplingParams
    from arte_edge.backends.llamacpp import LlamaCppChat

    recipe, task, items, conversations = demo_jobs(args.n)
    gguf = models.gguf_path(recipe.teacher.model)
    params = SamplingParams(max_tokens=recipe.generate.max_tokens, temperature=0.0, seed=recipe.seed)
    model = LlamaCppChat(gguf, threads=recipe.teacher.threads, n_ctx=recipe.teacher.n_ctx)
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    try:
        for rep in range(args.reps):
            order = ("old", "new") if rep % 2 == 0 else ("new", "old")
            for name in order:
                runs[name].append(run_teacher(model, conversations, params, share=name == "new"))
                print(f"rep {rep + 1} {name}: {runs[name][-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    finally:
        model.close()
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    new0, old0 = runs["new"][0], runs["old"][0]
    result: dict[str, Any] = {
        "stage": "teacher", "model": str(gguf), "n": len(items), "batch_size": model.batch_size,
        "threads": recipe.teacher.threads, "max_tokens": params.max_tokens, "reps": args.reps,
        "old_seconds": [round(r["seconds"], 2) for r in runs["old"]],
        "new_seconds": [round(r["seconds"], 2) for r in runs["new"]],
        "old_median_s": round(med["old"], 2), "new_median_s": round(med["new"], 2),
        "speedup": round(med["old"] / med["new"], 3),
        "prompt_tokens": old0["prompt_tokens"], "prompt_tokens_processed_old": old0["prompt_tokens_processed"],
        "prompt_tokens_processed_new": new0["prompt_tokens_processed"],
        "completion_tokens_old": old0["completion_tokens"], "completion_tokens_new": new0["completion_tokens"],
        "agreement_old_vs_new": agreement(task, items, old0["texts"], new0["texts"]),
        "agreement_new_rep1_vs_rep2": (agreement(task, items, new0["texts"], runs["new"][1]["texts"])
                                       if len(runs["new"]) > 1 else None),
        "load_1m": {k: [round(r["load_1m"], 2) for r in v] for k, v in runs.items()},
    }
    if not args.no_ceiling:
        result["ceiling"] = ceiling(gguf, recipe.teacher.threads, new0["prompt_tokens"], new0["completion_tokens"])
    return result


if __name__ == "__main__":
    main()
