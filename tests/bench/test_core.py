"""bench_artifact's own bookkeeping: per-artifact peak RSS, and what 'busy' means."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from arte_edge.bench.core import BenchSettings, OtherCpuMeter, bench_artifact

SETTINGS = BenchSettings(threads=1, prompt_tokens=8, gen_tokens=4, repetitions=2, warmup=0)


def test_peak_rss_is_the_workers_not_the_parents(tiny_gguf: Path) -> None:
    ballast = bytearray(700 * 1024 * 1024)  # a parent holding a big model, as the pipeline does
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page so it is resident
    result = bench_artifact(tiny_gguf, "gguf", SETTINGS)
    del ballast
    peak = result["raw"]["peak_rss_bytes"]
    assert 0 < peak < 400 * 1024 * 1024, f"worker peak {peak / 2**20:.0f} MiB includes the parent's pages"
    assert result["summary"]["decode_tok_s"] > 0


def test_bench_json_says_which_llama_cpp_kernels_ran(tiny_gguf: Path) -> None:
    result = bench_artifact(tiny_gguf, "gguf", SETTINGS)
    build = result["llama_cpp"]
    assert "AVX" in build["system_info"] or "NEON" in build["system_info"]
    assert build["safe"] and set(build) >= {"amx_kernels", "host_cpu", "host_has_amx"}


def test_other_cpu_meter_sees_a_neighbour_but_not_our_waited_children() -> None:
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass\n"
    neighbour = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        with OtherCpuMeter() as busy:
            time.sleep(1.0)
    finally:
        neighbour.kill()
        neighbour.wait()
    assert busy.cores is not None and busy.cores > 0.5

    burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
    with OtherCpuMeter() as own:
        subprocess.run([sys.executable, "-c", burn], check=True)
    # A waited child is the benchmark itself: its second of CPU is not counted as a neighbour's (the cores
    # figure itself depends on whatever else this machine runs, so it is not asserted here).
    assert own.children_s >= 0.6
