"""Which (teacher, student, task) can the demo distil with a real gain? A cheap probe, per bundled model.

For each model and multiple-choice task, on the demo's held-out split (same seed and sizes as a recipe would
draw), the model is asked the task's question in the task's chat format and the answer is forced to start
(``Answer:``); the next-token log-probabilities of the choice letters give:

- ``argmax``: accuracy of the most likely letter (what a perfectly formatted greedy answer would score);
- ``debiased``: accuracy after removing the model's average preference per letter (the knowledge a fine-tune
  that only fixes letter bias could unlock; an upper-bound-ish figure for format learning);
- ``top-letter share``: how often the argmax is the model's favourite letter (collapse);
- the constant-answer baseline on the same items.

A student whose ``debiased`` accuracy is not clearly above the constant baseline cannot show a real gain from a
few dozen distilled examples; a teacher whose accuracy is low makes the checker keep few examples per call.
Prints a table and writes JSON (``--out``). Usage:
    python benchmarks/demo_candidates.py --models smollm2-135m-instruct qwen2.5-coder-0.5b-instruct \
        --tasks arc_easy --n 200 --out /tmp/candidates.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter

import numpy as np


def letter_logprobs(llm, messages, letters):
    """Log-probabilities of each letter as the first token after ``Answer:`` in the assistant turn."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="", bos_token="",
                              add_generation_prompt=True)
    prompt = fmt(messages=messages).prompt
    prompt += "Answer:"
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(tokens)
    logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    logp = logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
    out = []
    for letter in letters:
        ids = [llm.tokenize(f" {letter}".encode(), add_bos=False, special=False)[0],
               llm.tokenize(letter.encode(), add_bos=False, special=False)[0]]
        out.append(float(np.logaddexp.reduce([logp[i] for i in set(ids)])))
    return out


def text_logprobs(llm, messages, choices):
    """Mean log-probability per character of each choice's text written after ``Answer:`` (lm-eval's acc_norm):
    the knowledge a student could show by naming the answer instead of its letter. The prompt is decoded once and
    each choice continues from its KV cells."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="", bos_token="",
                              add_generation_prompt=True)
    prompt = llm.tokenize((fmt(messages=messages).prompt + "Answer:").encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(prompt)
    out = []
    for text in choices:
        cont = llm.tokenize(f" {text.strip()}".encode(), add_bos=False, special=False)
        llm.n_tokens = len(prompt)
        llm.eval(cont)
        total = 0.0
        for j, tok in enumerate(cont):
            logits = np.asarray(llm.scores[len(prompt) - 1 + j], dtype=np.float64)
            total += logits[tok] - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
        out.append(total / max(1, len(text.strip())))
    return out


def probe(model_name: str, task_name: str, n: int, seed: int, threads: int, mode: str = "letter") -> dict:
    """Letter log-probs of ``model_name`` on ``n`` held-out items of ``task_name``."""
    from llama_cpp import Llama

    from arte_edge.evaluation.scoring import answer_messages
    from arte_edge.models.fetch import pull
    from arte_edge.tasks.registry import get_task
    from arte_edge.tasks.splits import make_splits

    task = get_task(task_name)
    items = task.load()
    splits = make_splits(items, seeds=3, preference=0, train_pool=200, eval=n, seed=seed)
    path = pull(model_name)
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, logits_all=True, verbose=False)
    t0 = time.time()
    rows = []
    for item in splits["eval"]:
        letters = "ABCDEFGHIJ"[: len(task.item_choices(item))]
        if mode == "text":
            lp = text_logprobs(llm, answer_messages(task, item), task.item_choices(item))
        else:
            lp = letter_logprobs(llm, answer_messages(task, item), letters)
        rows.append({"gold": item.answer, "letters": letters, "logp": lp})
    seconds = time.time() - t0
    k = max(len(r["letters"]) for r in rows)
    mat = np.full((len(rows), k), -np.inf)
    for i, r in enumerate(rows):
        mat[i, : len(r["logp"])] = r["logp"]
    bias = np.array([np.mean([r["logp"][j] for r in rows if j < len(r["logp"])]) for j in range(k)])
    pred = ["ABCDEFGHIJ"[int(np.argmax(m))] for m in mat]
    pred_deb = ["ABCDEFGHIJ"[int(np.argmax(m - bias))] for m in mat]
    gold = [r["gold"] for r in rows]
    acc = float(np.mean([p == g for p, g in zip(pred, gold, strict=True)]))
    acc_deb = float(np.mean([p == g for p, g in zip(pred_deb, gold, strict=True)]))
    const_letter, const_n = Counter(gold).most_common(1)[0]
    chance = float(np.mean([1 / len(r["letters"]) for r in rows]))
    top, top_n = Counter(pred).most_common(1)[0]
    return {"model": model_name, "task": task_name, "mode": mode, "n": len(rows), "argmax": acc, "debiased": acc_deb,
            "constant": const_n / len(rows), "constant_letter": const_letter, "chance": chance,
            "top_letter": top, "top_share": top_n / len(rows), "pred_hist": dict(Counter(pred)),
            "debiased_hist": dict(Counter(pred_deb)), "seconds": round(seconds, 1),
            "s_per_item": round(seconds / len(rows), 3), "ci_halfwidth": round(1.96 * math.sqrt(
                acc_deb * (1 - acc_deb) / len(rows)), 3)}


def main() -> None:
    """Probe every (model, task) and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--tasks", nargs="+", default=["arc_easy"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["letter", "text"], default="letter",
                    help="letter: log-prob of each choice letter; text: of each choice's text (per character)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = []
    print("| model | task | mode | n | argmax % | debiased % | constant % | chance % | top letter (share) | s/item |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|---:|")
    for task in args.tasks:
        for model in args.models:
            r = probe(model, task, args.n, args.seed, args.threads, args.mode)
            results.append(r)
            print(f"| {model} | {task} | {args.mode} | {r['n']} | {100 * r['argmax']:.1f} | "
                  f"{100 * r['debiased']:.1f} | "
                  f"{100 * r['constant']:.1f} ({r['constant_letter']}) | {100 * r['chance']:.1f} | "
                  f"{r['top_letter']} ({100 * r['top_share']:.0f}%) | {r['s_per_item']} |", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
