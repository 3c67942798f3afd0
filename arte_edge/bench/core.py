"""Run the latency benchmark of one artifact (in a child process) and summarise its raw samples."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError

BUSY_LOAD_PER_CORE = 0.5
BUSY_OTHER_CORES = 0.25  # other processes using more than a quarter core during a run: numbers may be low


@dataclass(frozen=True)
class BenchSettings:
    """What to measure (llama-bench's pp/tg plus a request for TTFT)."""

    threads: int = 2
    prompt_tokens: int = 128
    gen_tokens: int = 32
    repetitions: int = 5
    warmup: int = 1


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarise(raw: dict[str, Any], settings: BenchSettings) -> dict[str, Any]:
    """Medians and percentiles from raw samples (seconds → tokens/s and ms)."""
    pp_med, tg_med = statistics.median(raw["pp_s"]), statistics.median(raw["tg_s"])
    return {
        "prompt_tok_s": settings.prompt_tokens / pp_med,
        "decode_tok_s": settings.gen_tokens / tg_med,
        "prompt_tok_s_stdev": statistics.pstdev([settings.prompt_tokens / s for s in raw["pp_s"]]),
        "decode_tok_s_stdev": statistics.pstdev([settings.gen_tokens / s for s in raw["tg_s"]]),
        "ttft_ms_p50": 1000 * percentile(raw["ttft_s"], 50),
        "ttft_ms_p90": 1000 * percentile(raw["ttft_s"], 90),
        "tpot_ms_p50": 1000 * percentile(raw["tpot_s"], 50),
        "tpot_ms_p90": 1000 * percentile(raw["tpot_s"], 90),
        "peak_rss_bytes": raw.get("peak_rss_bytes"),
    }


def host_state() -> dict[str, Any]:
    """What the host looked like when measuring (load, cores, CPU)."""
    load1, load5, _ = os.getloadavg()
    return {"load_1m": round(load1, 2), "load_5m": round(load5, 2), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "processor": _cpu_model()}


class OtherCpuMeter:
    """CPU cores used by processes other than our children while the block runs (Linux /proc/stat).

    Busy time of the whole machine minus the CPU time of the children this process waited for inside
    the block; ``cores`` is None where /proc/stat is unavailable.
    """

    cores: float | None = None
    children_s: float = 0.0  # CPU seconds of the children waited for inside the block

    def __enter__(self) -> OtherCpuMeter:
        self._start = (time.monotonic(), _machine_busy_s(), _children_cpu_s())
        return self

    def __exit__(self, *exc: object) -> None:
        t0, busy0, kids0 = self._start
        wall, busy1 = time.monotonic() - t0, _machine_busy_s()
        if busy0 is None or busy1 is None or wall <= 0:
            return
        self.children_s = _children_cpu_s() - kids0
        others = (busy1 - busy0) - self.children_s
        self.cores = round(max(0.0, others) / wall, 3)


def _machine_busy_s() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def runtime_versions() -> dict[str, str]:
    """Versions of the runtimes used for timing (metadata only: no heavy imports)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("llama-cpp-python", "onnxruntime", "onnxruntime-genai", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def bench_artifact(path: Path, fmt: str, settings: BenchSettings, timeout_s: float = 1800) -> dict[str, Any]:
    """Benchmark one artifact in a fresh process; returns settings, raw samples, summary and host state."""
    if not path.exists():
        raise ArteError(f"{path}: artifact not found; give a .gguf file, an ONNX folder or an HF folder")
    spec = {"format": fmt, "path": str(path), **asdict(settings)}
    before = host_state()
    with OtherCpuMeter() as others:
        proc = subprocess.run([sys.executable, "-m", "arte_edge.bench.worker", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout_s)
    after = host_state()
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArteError(f"{path}: benchmark failed ({last})")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    # The load average counts the benchmark itself (and lags a minute behind the previous stage), so the
    # warning rests on what *other* processes used while it ran.
    busy = others.cores is not None and others.cores > BUSY_OTHER_CORES
    after["other_cpu_cores"] = others.cores
    return {"settings": asdict(settings), "summary": summarise(raw, settings), "raw": raw,
            "size_bytes": _size(path), "host_before": before, "host_after": after, "busy_warning": busy,
            "versions": runtime_versions(), "llama_cpp": raw.get("llama_cpp")}


def _size(path: Path) -> int:
    from arte_edge.artifacts import disk_size

    return disk_size(path)


def detect_format(path: Path) -> str:
    """gguf for a .gguf file, onnx for a folder with genai_config.json/model.onnx, hf for config.json."""
    if not path.exists():
        raise ArteError(f"{path}: artifact not found; give a .gguf file, an ONNX folder or an HF folder")
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(4) == b"GGUF":
                return "gguf"
        raise ArteError(f"{path}: not a GGUF file (bad magic); give a .gguf, an ONNX folder or an HF folder")
    if (path / "genai_config.json").exists() or (path / "model.onnx").exists():
        return "onnx"
    if (path / "config.json").exists():
        return "hf"
    raise ArteError(f"{path}: not a model artifact (no GGUF magic, genai_config.json, model.onnx or config.json)")
