"""Run the latency benchmark of one artifact (in a child process) and summarise its raw samples."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError

BUSY_LOAD_PER_CORE = 0.5


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
    proc = subprocess.run([sys.executable, "-m", "arte_edge.bench.worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout_s)
    after = host_state()
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArteError(f"{path}: benchmark failed ({last})")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    busy = max(before["load_1m"], after["load_1m"]) > BUSY_LOAD_PER_CORE * (before["cpu_count"] or 1)
    return {"settings": asdict(settings), "summary": summarise(raw, settings), "raw": raw,
            "size_bytes": _size(path), "host_before": before, "host_after": after, "busy_warning": busy,
            "versions": runtime_versions()}


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
