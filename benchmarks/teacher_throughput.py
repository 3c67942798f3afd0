"""Teacher generation throughput (examples/s) on the same prompts, three ways.

- sequential: one loopback llama.cpp server, one request at a time (OpenAIChat, parallel=1);
- concurrent: a fleet of ``--servers`` loopback llama.cpp servers, ``--parallel`` requests in flight
  (llama-cpp-python's server serialises requests per process, so concurrency needs several processes);
- batched: in-process ``LlamaCppChat.chat_batch`` (several sequences per ``llama_decode``).

Prints a table and writes benchmarks/results/teacher_throughput-<time>.json, with the load average seen during
each mode (this machine is shared: numbers only compare within one run).

    .venv/bin/python benchmarks/teacher_throughput.py --n 8 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def prompts(n: int) -> list[list[dict[str, str]]]:
    """``n`` short arithmetic questions in the generate stage's shape (system + user)."""
    system = "Solve the problem. Reason briefly, then finish with a line 'Answer: <number>'."
    return [[{"role": "system", "content": system},
             {"role": "user", "content": f"What is {7 * i + 3} + {5 * i + 11}?"}] for i in range(n)]


def _measure(name: str, run) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    completions = run()
    seconds = time.perf_counter() - start
    ok = [c for c in completions if c.ok]
    return {"mode": name, "seconds": round(seconds, 2), "examples": len(ok),
            "examples_per_s": round(len(ok) / seconds, 4),
            "completion_tokens": sum(c.completion_tokens for c in ok),
            "tokens_per_s": round(sum(c.completion_tokens for c in ok) / seconds, 2),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "errors": [c.error for c in completions if not c.ok][:3]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All three modes on the same prompts; returns the result record."""
    from arte_edge import models
    from arte_edge.backends.base import SamplingParams
    from arte_edge.backends.fleet import llama_fleet
    from arte_edge.backends.llamacpp import LlamaCppChat
    from arte_edge.backends.openai import OpenAIChat

    model = models.gguf_path(args.model)
    convs = prompts(args.n)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    rows = []
    with llama_fleet(model, n_servers=args.servers, threads=args.threads, n_ctx=args.n_ctx) as urls:
        seq_client = OpenAIChat(urls[:1], "teacher", parallel=1)
        seq_client.chat(convs[0], params)  # warm-up (page cache, first-request setup)
        rows.append(_measure("sequential (1 server, 1 in flight)",
                             lambda: [seq_client.chat(c, params) for c in convs]))
        seq_client.close()
        fleet_client = OpenAIChat(urls, "teacher", parallel=args.parallel)
        fleet_client.chat_batch(convs[: len(urls)], params)
        rows.append(_measure(f"concurrent ({len(urls)} servers, {args.parallel} in flight)",
                             lambda: fleet_client.chat_batch(convs, params)))
        fleet_client.close()
    local = LlamaCppChat(model, threads=args.threads * args.servers, n_ctx=args.n_ctx, batch_size=args.batch)
    try:
        local.chat_batch(convs[:2], params)
        rows.append(_measure(f"batched in-process ({args.batch} seqs/decode)",
                             lambda: local.chat_batch(convs, params)))
    finally:
        local.close()
    base = rows[0]["examples_per_s"] or float("nan")
    for row in rows:
        row["speedup_vs_sequential"] = round(row["examples_per_s"] / base, 2)
    return {"model": args.model, "n_prompts": args.n, "max_tokens": args.max_tokens, "threads": args.threads,
            "servers": args.servers, "parallel": args.parallel, "batch": args.batch, "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}


def main() -> None:
    """Parse arguments, run, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=8, help="prompts (examples) per mode")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="threads per server (in-process: × servers)")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n-ctx", type=int, default=512)
    result = run(parser.parse_args())
    print(f"{'mode':<42} {'ex/s':>8} {'tok/s':>8} {'x seq':>6} {'load 1m (start,end)':>20}")
    for row in result["rows"]:
        print(f"{row['mode']:<42} {row['examples_per_s']:>8.3f} {row['tokens_per_s']:>8.1f} "
              f"{row['speedup_vs_sequential']:>6.2f} {row['load_avg_1m']!s:>20}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"teacher_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
