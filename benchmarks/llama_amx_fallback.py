"""What the two ways around ggml's AMX crash cost: a build without AMX kernels vs extra buffer types off.

On an Intel host with AMX, a llama.cpp built with ``-march=native`` segfaults at the first decode. Two fixes:
- **rebuild** (what ``scripts/setup.sh`` does): ``-mno-amx-*``; the CPU backend keeps its extra buffer types
  (weight repacking, which makes Q4_0 fast on AVX2/AVX-512).
- **fallback**: keep the AMX build, load models with ``use_extra_bufts = False`` (no AMX path, and no repacking).
This runs, per GGUF, in fresh processes and alternating (pairs, medians), prompt processing and decode speed of:
``rebuild`` (the installed build, extra buffer types on), ``rebuild-nobufts`` (same build, off: the repacking
share alone) and, with ``--amx-build DIR``, ``fallback`` (the AMX build, off) plus one ``amx-default`` attempt
(the AMX build as is: records the crash). Table on stdout, JSON in ``benchmarks/results/llama_amx_fallback.json``.

    python benchmarks/llama_amx_fallback.py A.Q4_0.gguf B.Q8_0.gguf --amx-build /tmp/amx-llama --pairs 5

``--amx-build`` is a folder with an AMX-enabled llama_cpp package (``pip install --no-deps --target DIR WHEEL``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "llama_amx_fallback.json"
REPO = Path(__file__).resolve().parents[1]

_WORKER = r"""
import json, sys
from arte_edge.bench.llamacpp_runner import LlamaCppBench
from arte_edge.llama_build import llama_system_info
path, bufts, pp, tg, threads = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
b = LlamaCppBench(path, threads=threads, n_ctx=pp + tg + 16, n_batch=min(512, pp), extra_buffer_types=bufts)
b.time_pp(pp); b.time_tg(8)
out = {"pp_s": b.time_pp(pp), "tg_s": b.time_tg(tg), "amx": "AMX_INT8 = 1" in llama_system_info()}
b.close()
print(json.dumps(out))
"""

# The AMX build as anyone would use it (plain llama-cpp-python, no guard): shows what the guard prevents.
_CRASH = r"""
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, verbose=False)
llm.create_completion("The capital of France is", max_tokens=4)
print('{"pp_s": 1, "tg_s": 1, "amx": true}')
"""


def run_once(gguf: Path, arm: str, amx_build: Path | None, pp: int, tg: int, threads: int) -> dict[str, Any]:
    """One fresh process of ``arm`` on ``gguf``; tok/s, or the exit code when it crashed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if arm in ("fallback", "amx-default"):
        env["PYTHONPATH"] = f"{amx_build}{os.pathsep}{REPO}"
    bufts = "0" if arm in ("fallback", "rebuild-nobufts") else "1"
    code = _CRASH if arm == "amx-default" else _WORKER
    proc = subprocess.run([sys.executable, "-c", code, str(gguf), bufts, str(pp), str(tg), str(threads)],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        return {"rc": proc.returncode, "error": (proc.stderr.strip().splitlines() or [""])[-1]}
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"rc": 0, "pp_tok_s": pp / raw["pp_s"], "tg_tok_s": tg / raw["tg_s"], "amx_build": raw["amx"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf", nargs="+", type=Path)
    ap.add_argument("--amx-build", type=Path, help="folder holding an AMX-enabled llama_cpp package")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    arms = ["rebuild", "rebuild-nobufts"] + (["fallback"] if args.amx_build else [])
    from arte_edge.llama_build import llama_build_record

    settings = vars(args) | {"gguf": [str(g) for g in args.gguf],
                             "amx_build": str(args.amx_build) if args.amx_build else None}
    results: dict[str, Any] = {"host": llama_build_record(), "settings": settings,
                               "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": {}}
    print(f"{'file':<44} {'arm':<16} {'pp tok/s':>9} {'tg tok/s':>9} {'pp vs rebuild':>13} {'tg vs rebuild':>13}")
    for gguf in args.gguf:
        samples: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
        for _ in range(args.pairs):
            for arm in arms:  # alternating, so drift in host load hits every arm alike
                samples[arm].append(run_once(gguf, arm, args.amx_build, args.pp, args.tg, args.threads))
        entry: dict[str, Any] = {}
        for arm in arms:
            ok = [s for s in samples[arm] if s["rc"] == 0]
            entry[arm] = {"pp_tok_s": statistics.median(s["pp_tok_s"] for s in ok) if ok else None,
                          "tg_tok_s": statistics.median(s["tg_tok_s"] for s in ok) if ok else None,
                          "failures": [s for s in samples[arm] if s["rc"] != 0], "samples": samples[arm]}
        if args.amx_build:
            entry["amx-default"] = run_once(gguf, "amx-default", args.amx_build, args.pp, args.tg, args.threads)
        base = entry["rebuild"]
        for arm in arms:
            e = entry[arm]
            if e["pp_tok_s"] is None:
                print(f"{gguf.name:<44} {arm:<16} failed: {e['failures'][0]['error']}")
                continue
            print(f"{gguf.name:<44} {arm:<16} {e['pp_tok_s']:>9.1f} {e['tg_tok_s']:>9.1f} "
                  f"{e['pp_tok_s'] / base['pp_tok_s']:>13.2f} {e['tg_tok_s'] / base['tg_tok_s']:>13.2f}")
        if "amx-default" in entry:
            d = entry["amx-default"]
            print(f"{gguf.name:<44} {'amx-default':<16} exit code {d['rc']}" + (" (SIGSEGV)" if d["rc"] == -11 else ""))
        results["files"][str(gguf)] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
