"""Pipeline speed, old path vs new path on the same inputs, in one run (alternating, medians), with the ceiling.

Stages (issue 16, item 4); *old* is the code before issue 16 (``git show 7ef64cb^``), *new* is this checkout:

- ``teacher``: the demo recipe's teacher (configs/demo.yaml: Qwen2.5-Coder-0.5B GGUF, llama.cpp, greedy, its
  max_tokens) answers the demo's first ``--n`` train-pool questions with the standard method's teacher prompt.
  *old*: that commit's batched decoder, windows of 8 conversations, every prompt prefilled whole, each window
  waiting for its longest answer; *new*: ``chat_batch`` in the windows the pipeline hands it (continuous batching
  over ``teacher.batch_size`` slots, the window's common prefix decoded once, its KV cells shared). Reported:
  median seconds over ``--reps`` alternating repetitions, prompt tokens processed, greedy agreement between the
  paths (exact text, and the share of items with the same parsed answer: llama.cpp batching is not
  batch-invariant, so they differ), and the ceiling: llama.cpp's own ``llama-bench`` (batch 1) and
  ``llama-batched-bench`` (same number of sequences) for the same file and threads, built once from the same sdist
  (benchmarks/llama_bench_compare.py), turned into the time the engine alone needs for the same tokens.

- ``train``: the demo recipe's LoRA training of its student on the demo's examples (``runs/demo/data/
  examples.jsonl`` when a demo ran, else ``--n-train`` train-pool questions with their gold answer as a short
  target). *old*: padded batches, TRL's fused LM head over every position; *new*: padding-free batches
  (``train.padding_free``), attention per packed example and the LM head over the labelled (completion) positions
  only. Reported: median tokens/s
  (real tokens, both ways), the loss at every logged step of both (max absolute difference).

- ``eval``: the demo run's evaluate stage on its first ``--eval-items`` held-out items (needs a finished demo in
  runs/demo). Torch (fp32) rows: *old* items in order in left-padded ``generate`` batches of 8, each waiting for
  its longest answer; *new* shortest prompt first, continuous batching of ``evaluate.batch_size`` rows (a finished
  row's place taken by the next item, the shared prompt prefix decoded once); alternating. Shipped-artifact rows
  (GGUF, ONNX) are decoded one at a time either way (device-faithful), so they are timed once and added to both
  totals; the table says how fast the stage could be at most if the torch rows cost nothing.

    .venv/bin/python benchmarks/pipeline_speed.py --n 160 --reps 3

Prints a Markdown table; writes benchmarks/results/pipeline_speed.json. Run it on a quiet machine (the load
average before each repetition is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
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


BASELINE_COMMIT = "7ef64cb^"  # the code before issue 16: windows of 8, every prompt prefilled whole
BASELINE_BATCH = 8  # LlamaCppChat's batch size then
BASELINE_HF_BATCH = 8  # HFChat's batch size then (fp32 rows were left-padded batches of 8, in item order)


def baseline_module(relpath: str, name: str) -> Any:
    """``relpath`` as it was at :data:`BASELINE_COMMIT` (``git show``), imported as module ``name``."""
    import importlib.util
    import subprocess
    import tempfile

    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:{relpath}"], check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"pipeline_speed: the old path is {relpath} at {BASELINE_COMMIT}; git could not show it "
                         f"({exc}); run from a full clone") from exc
    path = Path(tempfile.mkdtemp(prefix="arte-baseline-")) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_teacher(model: Any, conversations: list[list[dict[str, str]]], params: Any, path: str) -> dict[str, Any]:
    """One pass over ``conversations``: ``old`` = the baseline decoder in windows of the batch size (what
    ``chat_batch`` did before issue 16); ``new`` = ``chat_batch`` in the windows the pipeline hands it."""
    from arte_edge.methods.common import teacher_window

    if path == "old":
        decoder = baseline_module("arte_edge/backends/llamacpp.py", "llamacpp_baseline").BatchedDecoder(
            model.llm, n_seq=BASELINE_BATCH, n_ctx_per_seq=model.n_ctx, threads=model.threads)
        window, call = BASELINE_BATCH, decoder.generate
    else:
        decoder, window = None, teacher_window(model)
        def call(chunk, params, first_index):
            return model.chat_batch(chunk, replace(params, seed=params.seed + first_index))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        out = []
        for lo in range(0, len(conversations), window):
            out += call(conversations[lo:lo + window], params, first_index=lo)
    finally:
        if decoder is not None:
            decoder.close()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "texts": [c.text for c in out], "load_1m": load, "window": window,
            "prompt_tokens": sum(c.prompt_tokens for c in out),
            "prompt_tokens_processed": sum(c.meta.get("prompt_tokens_processed", c.prompt_tokens) for c in out),
            "completion_tokens": sum(c.completion_tokens for c in out)}


def ceiling(gguf: Path, threads: int, prompt_tokens: int, completion_tokens: int, processed: int,
            batch: int) -> dict[str, Any]:
    """What llama.cpp's own tools do with ``gguf`` here: llama-bench pp/tg (batch 1) and llama-batched-bench
    decode at ``batch`` sequences, turned into the time the engine needs for the same tokens — batch 1 with whole
    prompts, and batched with only the ``processed`` prompt tokens (the new path's work)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from llama_bench_compare import llama_bench_binary, llama_tool_binary, run_llama_bench

    res = run_llama_bench(llama_bench_binary(), gguf, pp=256, tg=64, threads=threads, reps=3)
    pp, tg = statistics.median(res["pp_tok_s"]), statistics.median(res["tg_tok_s"])
    cmd = [str(llama_tool_binary("llama-batched-bench")), "-m", str(gguf), "-c", str(max(4096, batch * 512)),
           "-b", "512", "-ub", "512", "-npp", "64", "-ntg", "48", "-npl", f"1,{batch}", "-t", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows = {}
    for line in (out.stdout + out.stderr).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[2].isdigit():  # PP | TG | B | N_KV | T_PP | S_PP | T_TG | S_TG | T | S
            rows[int(cells[2])] = {"pp_tok_s": float(cells[5]), "tg_tok_s": float(cells[7])}
    if batch not in rows:
        raise SystemExit(f"could not read llama-batched-bench's table from: {' '.join(cmd)}")
    b = rows[batch]
    return {"llama_bench_pp_tok_s": round(pp, 1), "llama_bench_tg_tok_s": round(tg, 1),
            "batch1_seconds": round(prompt_tokens / pp + completion_tokens / tg, 2),
            "batched_bench": rows, "batched_seconds": round(processed / b["pp_tok_s"] + completion_tokens
                                                            / b["tg_tok_s"], 2),
            "config": res["config"], "batched_command": " ".join(cmd)}


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


def run_train(recipe: Any, examples: list[dict[str, Any]], new: bool, work: Path) -> dict[str, Any]:
    """One LoRA training of the demo's student on ``examples``; seconds, tokens/s and the loss curve. ``new``:
    padding-free batches, attention per example, the LM head on labelled positions only; else padded batches, SDPA
    and the LM head on every position."""
    import contextlib
    import shutil

    from arte_edge import models
    from arte_edge.training import sft
    from arte_edge.training.sft import train_adapter

    padding_free = new

    shutil.rmtree(work, ignore_errors=True)
    cfg = recipe.train.model_copy(update={"padding_free": padding_free, "precision": "fp32", "save_steps": 10_000})
    base = models.hf_folder(recipe.student.model)
    load = os.getloadavg()[0]
    switches = sft.labelled_positions_only, sft.per_example_attention
    if not new:  # the old path: TRL's fused head projects every position on CPU, SDPA attends over the whole row
        sft.labelled_positions_only = lambda: contextlib.nullcontext(False)
        sft.per_example_attention = lambda model: contextlib.nullcontext(False)
    try:
        start = time.perf_counter()
        info = train_adapter(base, examples, work / "adapter", cfg, recipe.seed, work / "checkpoints")
        seconds = time.perf_counter() - start
    finally:
        sft.labelled_positions_only, sft.per_example_attention = switches
    history = json.loads((work / "train_log.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    return {"seconds": seconds, "train_runtime_s": info["runtime_s"], "tokens": info["tokens"],
            "tokens_per_s": info["tokens"] / info["runtime_s"] if info["tokens"] and info["runtime_s"] else None,
            "precision": info["precision"], "padding_free": padding_free, "lm_head": info["lm_head"],
            "attention": info["attention"], "losses": losses,
            "load_1m": load}


def train_ceiling(model_dir: Path, threads: int, rows: int = 512) -> dict[str, Any]:
    """An upper bound on training tokens/s here: torch's own fp32 matmul speed at the model's MLP shape (``rows``
    tokens) over the matmul FLOPs of one trained token — forward 2N plus the backward pass's activation gradients
    2N (the frozen base gets no weight gradients under LoRA), N = weights used in matmuls, the LM head included."""
    import torch

    cfg = json.loads((model_dir / "config.json").read_text())
    h, inter, layers, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) // cfg["num_attention_heads"]
    n = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + h * vocab
    torch.set_num_threads(threads)
    a, b = torch.randn(rows, h), torch.randn(h, inter)
    for _ in range(3):
        a @ b
    reps, start = 50, time.perf_counter()
    for _ in range(reps):
        a @ b
    gflops = 2 * rows * h * inter * reps / (time.perf_counter() - start) / 1e9
    return {"matmul_gflops": round(gflops, 1), "matmul_params": n, "flops_per_token": 4 * n,
            "tokens_per_s": round(gflops * 1e9 / (4 * n), 1)}


def measure_train(args: argparse.Namespace) -> dict[str, Any]:
    """Training old (padded, every position) vs new (padding-free, labelled positions), alternating; tokens/s
    medians and the loss curves."""
    import tempfile

    recipe, task, _, _ = demo_jobs(1)
    examples, source = train_examples(recipe, task, args.n_train)
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="arte-train-bench-") as tmp:
        for rep in range(args.reps):
            for name in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                runs[name].append(run_train(recipe, examples, name == "new", Path(tmp) / name))
                print(f"train rep {rep + 1} {name}: {runs[name][-1]['tokens_per_s']:.0f} tok/s",
                      file=sys.stderr, flush=True)
    med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    from arte_edge import models

    roof = train_ceiling(models.hf_folder(recipe.student.model), recipe.train.threads)
    diffs = [abs(a - b) for a, b in zip(runs["old"][0]["losses"], runs["new"][0]["losses"], strict=False)]
    return {"stage": "train", "examples": source, "n_examples": len(examples), "reps": args.reps,
            "precision": runs["new"][0]["precision"],
            "old_tokens_per_s": [round(r["tokens_per_s"], 1) for r in runs["old"]],
            "new_tokens_per_s": [round(r["tokens_per_s"], 1) for r in runs["new"]],
            "old_median_tok_s": round(med["old"], 1), "new_median_tok_s": round(med["new"], 1),
            "speedup": round(med["new"] / med["old"], 3), "ceiling": roof,
            "fraction_of_ceiling": round(med["new"] / roof["tokens_per_s"], 2),
            "loss_old": runs["old"][0]["losses"], "loss_new": runs["new"][0]["losses"],
            "loss_max_abs_diff": round(max(diffs), 4) if diffs else None,
            "final_loss": {"old": runs["old"][0]["losses"][-1], "new": runs["new"][0]["losses"][-1]},
            "load_1m": {k: [round(r["load_1m"], 2) for r in v] for k, v in runs.items()}}


def eval_jobs(recipe: Any, task: Any, n: int) -> tuple[list[Any], list[tuple[Any, str, tuple]], Path]:
    """The demo run's held-out items (first ``n``) and its evaluate stage's rows: (artifact, name, demos shown)."""
    from arte_edge.artifacts import base_artifact, merged_artifact, read_exported
    from arte_edge.evaluation.scoring import format_demos
    from arte_edge.tasks.splits import make_splits

    root = ROOT / "runs" / "demo"
    merged = merged_artifact(root)
    if merged is None:
        raise SystemExit("pipeline_speed --stages eval: no finished demo run in runs/demo; run "
                         "`.venv/bin/arte-edge run configs/demo.yaml` first")
    s = recipe.splits
    splits = make_splits(task.load(), seeds=s.seeds, preference=s.preference, train_pool=s.train_pool, eval=s.eval,
                         seed=recipe.seed)
    base = base_artifact(recipe.student.model)
    jobs = [(base, "base", ()), (merged, "merged", ()), *[(a, a.name, ()) for a in read_exported(root)],
            (base, "base-fewshot", tuple(format_demos(task, splits["seeds"])))]
    return splits["eval"][:n], jobs, root


def score_row(artifact: Any, root: Path, task: Any, items: list[Any], demos: tuple, params: Any, threads: int,
              hf_batch: int, path: str) -> dict[str, Any]:
    """One evaluate-stage row without writing it: ``old`` = items in order, torch rows in ``generate`` batches of 8
    (the code before issue 16); ``new`` = :func:`batch_order`, continuous batching of ``evaluate.batch_size`` rows
    (the stage's calls of ``window`` items) and the stage's batch-1 check on 8 items.
    GGUF/ONNX rows: batch 1 either way."""
    from arte_edge.artifacts import open_artifact
    from arte_edge.evaluation.scoring import answer_messages, batch1_check, batch_order, decoding_of

    model = open_artifact(artifact, root, threads=threads, device_faithful=True,
                          hf_batch_size=BASELINE_HF_BATCH if path == "old" else hf_batch)
    try:
        order = list(items) if path == "old" else batch_order(model, task, items)
        if path == "old" and hasattr(model, "continuous"):
            model.continuous = False  # before issue 16: one generate call per batch, no shared prefix
        chunk = 8 if path == "old" else max(8, int(getattr(model, "window", 0) or getattr(model, "batch_size", 1)))
        load = os.getloadavg()[0]
        start = time.perf_counter()
        texts: dict[str, str] = {}
        for lo in range(0, len(order), chunk):
            part = order[lo:lo + chunk]
            out = model.chat_batch([answer_messages(task, item, demos) for item in part], params)
            texts.update({item.id: c.text for item, c in zip(part, out, strict=True)})
        check = None
        if path == "new" and decoding_of(model) != "batch 1":  # the stage's batch-1 check of batched rows counts
            rows = [{"item_id": item.id, "completion": texts[item.id],
                     "predicted": task.check(item, texts[item.id]).predicted} for item in items]
            check = batch1_check(model, task, items, rows, params, demos)
        seconds = time.perf_counter() - start
    finally:
        model.close()
    return {"seconds": seconds, "texts": [texts[item.id] for item in items], "load_1m": load, "batch1_check": check}


def measure_eval(args: argparse.Namespace) -> dict[str, Any]:
    """The demo's evaluation, old vs new: torch (fp32) rows alternating; shipped-artifact rows (batch 1, unchanged)
    timed once and added to both totals."""
    from arte_edge.evaluation.scoring import eval_params

    recipe, task, _, _ = demo_jobs(1)
    items, jobs, root = eval_jobs(recipe, task, args.eval_items)
    params = eval_params(task, recipe.evaluate.max_tokens)
    threads, hf_batch = recipe.evaluate.threads, recipe.evaluate.batch_size
    rows: dict[str, dict[str, Any]] = {}
    for artifact, name, demos in jobs:
        if artifact.format != "hf":
            once = score_row(artifact, root, task, items, demos, params, threads, hf_batch, "new")
            rows[name] = {"format": artifact.format, "seconds_once": round(once["seconds"], 1)}
            print(f"eval {name} (batch 1, unchanged): {once['seconds']:.1f} s", file=sys.stderr, flush=True)
            continue
        runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for rep in range(args.reps):
            for path in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                runs[path].append(score_row(artifact, root, task, items, demos, params, threads, hf_batch, path))
                print(f"eval {name} rep {rep + 1} {path}: {runs[path][-1]['seconds']:.1f} s", file=sys.stderr,
                      flush=True)
        rows[name] = {"format": "hf", "old_seconds": [round(r["seconds"], 1) for r in runs["old"]],
                      "new_seconds": [round(r["seconds"], 1) for r in runs["new"]],
                      "old_median_s": round(statistics.median(r["seconds"] for r in runs["old"]), 1),
                      "new_median_s": round(statistics.median(r["seconds"] for r in runs["new"]), 1),
                      "agreement_old_vs_new": agreement(task, items, runs["old"][0]["texts"], runs["new"][0]["texts"]),
                      "batch1_check_new": runs["new"][0]["batch1_check"]}
    fixed = sum(r.get("seconds_once", 0.0) for r in rows.values())
    old = fixed + sum(r.get("old_median_s", 0.0) for r in rows.values())
    new = fixed + sum(r.get("new_median_s", 0.0) for r in rows.values())
    return {"stage": "eval", "n_items": len(items), "reps": args.reps, "hf_batch_old": BASELINE_HF_BATCH,
            "hf_batch_new": hf_batch, "rows": rows, "batch1_rows_s": round(fixed, 1), "old_total_s": round(old, 1),
            "new_total_s": round(new, 1), "speedup": round(old / new, 3),
            "speedup_if_torch_rows_were_free": round(old / fixed, 3) if fixed else None}


def main(argv: list[str] | None = None) -> None:
    """Measure each asked stage old vs new, alternating, and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", choices=["teacher", "train", "eval"], default=["teacher", "train", "eval"])
    ap.add_argument("--eval-items", type=int, default=100, help="held-out items per row (the demo scores 100)")
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
    if "eval" in args.stages:
        results["eval"] = measure_eval(args)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "pipeline_speed.json"
    earlier = json.loads(out.read_text()) if out.exists() else {}  # stages not measured now keep their last run
    measured = time.strftime("%Y-%m-%d %H:%M")
    out.write_text(json.dumps({**earlier, **{k: {**v, "measured": measured} for k, v in results.items()}}, indent=1))
    print("| stage | n | old (median) | new (median) | speedup | detail | agreement | ceiling |")
    print("|---|---:|---:|---:|---:|---|---|---|")
    if "teacher" in results:
        t = results["teacher"]
        agree = t["agreement_old_vs_new"]
        c = t.get("ceiling", {})
        ceil = (f"llama.cpp alone: {c['batched_seconds']} s batched {t['batch_size']} "
                f"({t['fraction_of_engine']:.0%} of it reached), {c['batch1_seconds']} s batch 1" if c else "–")
        print(f"| teacher | {t['n']} | {t['old_median_s']:.1f} s | {t['new_median_s']:.1f} s | {t['speedup']:.2f}× | "
              f"prompt tokens processed {t['prompt_tokens_processed_old']} → {t['prompt_tokens_processed_new']} | "
              f"{agree['same_answer']}/{agree['n']} same answer ({agree['identical_text']} identical text) | "
              f"{ceil} |")
    if "train" in results:
        r = results["train"]
        print(f"| train | {r['n_examples']} | {r['old_median_tok_s']:.0f} tok/s | {r['new_median_tok_s']:.0f} tok/s | "
              f"{r['speedup']:.2f}× | padded, LM head on every position → padding-free, per-example "
              f"attention, LM head on labelled positions ({r['precision']}) | "
              f"final loss {r['final_loss']['old']:.3f} vs "
              f"{r['final_loss']['new']:.3f} (max step diff {r['loss_max_abs_diff']}) | matmul roofline "
              f"{r['ceiling']['tokens_per_s']:.0f} tok/s ({r['ceiling']['matmul_gflops']:.0f} GFLOP/s; "
              f"{r['fraction_of_ceiling']:.0%} reached) |")
    if "eval" in results:
        e = results["eval"]
        torch_rows = {k: v for k, v in e["rows"].items() if v["format"] == "hf"}
        agree = ", ".join(f"{k} {v['agreement_old_vs_new']['same_answer']}/{v['agreement_old_vs_new']['n']}"
                          for k, v in torch_rows.items())
        print(f"| eval | {e['n_items']} × {len(e['rows'])} rows | {e['old_total_s']:.0f} s | "
              f"{e['new_total_s']:.0f} s | "
              f"{e['speedup']:.2f}× | torch rows generate batches of {e['hf_batch_old']} in item order → continuous "
              f"batching of {e['hf_batch_new']}, shortest prompt first, shared prefix once; batch-1 rows "
              f"{e['batch1_rows_s']:.0f} s both ways | same answer: {agree} | "
              f"at most {e['speedup_if_torch_rows_were_free']}× with free torch rows |")


def measure_teacher(args: argparse.Namespace) -> dict[str, Any]:
    """Teacher generation old (whole prompts) vs new (shared prefix), alternating, with the ceiling."""
    from arte_edge import models
    from arte_edge.backends.base import SamplingParams
    from arte_edge.backends.llamacpp import LlamaCppChat

    recipe, task, items, conversations = demo_jobs(args.n)
    gguf = models.gguf_path(recipe.teacher.model)
    params = SamplingParams(max_tokens=recipe.generate.max_tokens, temperature=0.0, seed=recipe.seed)
    model = LlamaCppChat(gguf, threads=recipe.teacher.threads, n_ctx=recipe.teacher.n_ctx,
                         batch_size=recipe.teacher.batch_size)
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    try:
        for rep in range(args.reps):
            order = ("old", "new") if rep % 2 == 0 else ("new", "old")
            for name in order:
                runs[name].append(run_teacher(model, conversations, params, name))
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
        result["ceiling"] = ceiling(gguf, recipe.teacher.threads, new0["prompt_tokens"], new0["completion_tokens"],
                                    new0["prompt_tokens_processed"], model.batch_size)
        result["fraction_of_engine"] = round(result["ceiling"]["batched_seconds"] / med["new"], 2)
    return result


if __name__ == "__main__":
    main()
