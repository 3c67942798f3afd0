"""ONNX latency: an onnxruntime-genai folder timed the way the other runners time theirs (pp, tg, requests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arte_edge.backends.onnx_genai import OnnxGenaiRunner


def run_onnx(path: str | Path, *, threads: int, prompt_tokens: int, gen_tokens: int, repetitions: int,
             warmup: int) -> dict[str, Any]:
    """Raw samples of pp, tg and request timings for an ONNX folder (the bench worker's contract).

    pp: one prefill of ``prompt_tokens`` random tokens; tg: ``gen_tokens`` decodes after a 1-token prompt;
    request: prefill + greedy decode giving TTFT and per-token times. eos is suppressed (min_length) so
    every run decodes the full count.
    """
    import random

    runner = OnnxGenaiRunner(path, threads=threads)
    vocab = runner.vocab_size
    rng = random.Random(0)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(n)]

    try:
        for _ in range(warmup):
            runner.time_request(tokens(prompt_tokens), min(gen_tokens, 16))
        pp = [runner.time_request(tokens(prompt_tokens), 0)[0] for _ in range(repetitions)]
        tg = [sum(runner.time_request(tokens(1), gen_tokens)[1]) for _ in range(repetitions)]
        requests = [runner.time_request(tokens(prompt_tokens), gen_tokens) for _ in range(repetitions)]
    finally:
        runner.close()
    size = sum(p.stat().st_size for p in Path(path).iterdir() if p.name.startswith("model.onnx"))
    return {"runtime": f"onnxruntime-genai {_og_version()}", "pp_s": pp, "tg_s": tg,
            "ttft_s": [r[0] for r in requests], "tpot_s": [t for r in requests for t in r[1]],
            "model_size_bytes": size}


def _og_version() -> str:
    from importlib.metadata import version

    return version("onnxruntime-genai")
