"""HF fp32 latency through torch (the reference every artifact is compared with)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def run_hf(path: str | Path, *, threads: int, prompt_tokens: int, gen_tokens: int, repetitions: int,
           warmup: int) -> dict[str, Any]:
    """Raw samples of pp, tg and request timings for an HF folder, with a KV cache, batch 1."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def prompt() -> torch.Tensor:
        return torch.randint(0, vocab, (1, prompt_tokens), generator=gen)

    def pp() -> float:
        ids = prompt()
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=True)
        return time.perf_counter() - t0

    def request(n_prompt_ids: torch.Tensor | None) -> tuple[float, list[float]]:
        ids = n_prompt_ids if n_prompt_ids is not None else torch.randint(0, vocab, (1, 1), generator=gen)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        first = time.perf_counter() - t0
        past, per_token = out.past_key_values, []
        for _ in range(gen_tokens - 1):
            t1 = time.perf_counter()
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            token, past = out.logits[:, -1:].argmax(-1), out.past_key_values
            per_token.append(time.perf_counter() - t1)
        return first, per_token

    with torch.inference_mode():
        for _ in range(warmup):
            pp()
            request(None)
        pp_s = [pp() for _ in range(repetitions)]
        tg_runs = [request(None) for _ in range(repetitions)]
        requests = [request(prompt()) for _ in range(repetitions)]
    return {"runtime": f"torch {torch.__version__}", "pp_s": pp_s,
            "tg_s": [first + sum(rest) for first, rest in tg_runs],
            "ttft_s": [r[0] for r in requests], "tpot_s": [t for r in requests for t in r[1]],
            "n_params": sum(p.numel() for p in model.parameters())}
