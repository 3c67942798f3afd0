"""Benchmark one artifact in its own process, so peak RSS belongs to that artifact alone.

Usage (internal): ``python -m arte_edge.bench.worker '<json spec>'`` prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def _rss_bytes(field: str = "VmHWM") -> int:
    """Peak (VmHWM) or current (VmRSS) resident set of this process.

    Not ``ru_maxrss``: Linux carries it across exec, so a worker started by a process holding a 1.3 GB model
    would report that parent's size as its own peak.
    """
    try:
        with open("/proc/self/status") as status:
            lines = status.readlines()
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: best available


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the runner for ``spec['format']`` and attach peak RSS."""
    kwargs = {k: spec[k] for k in ("threads", "prompt_tokens", "gen_tokens", "repetitions", "warmup")}
    baseline = _rss_bytes("VmRSS")
    if spec["format"] == "gguf":
        from arte_edge.bench.llamacpp_runner import run_gguf

        result = run_gguf(spec["path"], **kwargs)
    elif spec["format"] == "hf":
        from arte_edge.bench.torch_runner import run_hf

        result = run_hf(spec["path"], **kwargs)
    elif spec["format"] == "onnx":
        from arte_edge.bench.onnx_runner import run_onnx

        result = run_onnx(spec["path"], **kwargs)
    else:
        raise SystemExit(f"unknown format {spec['format']!r}")
    result["peak_rss_bytes"] = _rss_bytes()
    result["baseline_rss_bytes"] = baseline
    result["llama_cpp"] = llama_cpp_record()
    return result


def llama_cpp_record() -> dict[str, Any] | None:
    """The llama.cpp build on this machine (system info, AMX state), or None where llama-cpp-python is absent."""
    try:
        from arte_edge.llama_build import llama_build_record

        return llama_build_record()
    except ImportError:
        return None


def main() -> None:
    from arte_edge.errors import ArteError

    spec = json.loads(sys.argv[1])
    try:
        print(json.dumps(measure(spec)))
    except ArteError as exc:  # one line on stderr: the caller shows the last one
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
