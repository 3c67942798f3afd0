"""GGUF latency through llama.cpp's C API, measured the way llama-bench does.

- pp (prompt processing): one ``llama_decode`` of ``prompt_tokens`` random tokens into an empty cache.
- tg (text generation): ``gen_tokens`` single-token ``llama_decode`` calls from an empty cache.
- request: prompt then greedy decode, giving TTFT (prompt + first token) and time per output token.
Each is repeated after warm-up; raw samples are returned. No Python sampling loop sits inside pp/tg timing.
"""

from __future__ import annotations

import ctypes
import random
import time
from pathlib import Path
from typing import Any


class LlamaCppBench:
    """One loaded GGUF and a context big enough for the configured test."""

    def __init__(self, path: str | Path, *, threads: int, n_ctx: int, n_batch: int, extra_buffer_types: bool = True):
        """``extra_buffer_types=False`` turns off ggml's extra CPU buffer types (weight repacking and the AMX
        path); only ``benchmarks/llama_amx_fallback.py`` uses it, to measure what that fallback costs."""
        import llama_cpp as lc

        from arte_edge.llama_build import check_llama_build

        if extra_buffer_types:  # without them the AMX path cannot run, so any build is safe
            check_llama_build()
        self.lc = lc
        lc.llama_backend_init()
        lc.llama_log_set(_silent_log(), ctypes.c_void_p())
        mparams = lc.llama_model_default_params()
        mparams.use_extra_bufts = extra_buffer_types
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, n_batch, n_batch
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(vocab)
        self.bos = lc.llama_vocab_bos(vocab)
        self.vocab = vocab
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        self.n_batch = n_batch
        self.rng = random.Random(0)

    def _clear(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)

    def _decode(self, tokens: list[int], start_pos: int, want_logits: bool) -> None:
        b = self.batch
        b.n_tokens = len(tokens)
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = start_pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = want_logits and i == len(tokens) - 1
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _random_tokens(self, n: int) -> list[int]:
        return [self.bos if self.bos >= 0 else 0] + [self.rng.randrange(self.n_vocab) for _ in range(n - 1)]

    def time_pp(self, n: int) -> float:
        """Seconds to process ``n`` prompt tokens (in chunks of n_batch)."""
        self._clear()
        tokens = self._random_tokens(n)
        t0 = time.perf_counter()
        for start in range(0, n, self.n_batch):
            self._decode(tokens[start:start + self.n_batch], start, start + self.n_batch >= n)
        self.lc.llama_synchronize(self.ctx)
        return time.perf_counter() - t0

    def time_tg(self, n: int) -> float:
        """Seconds to decode ``n`` tokens one at a time."""
        self._clear()
        tokens = self._random_tokens(n)
        t0 = time.perf_counter()
        for pos, tok in enumerate(tokens):
            self._decode([tok], pos, True)
        self.lc.llama_synchronize(self.ctx)
        return time.perf_counter() - t0

    def time_request(self, n_prompt: int, n_gen: int) -> tuple[float, list[float]]:
        """TTFT and per-token decode times for prompt + greedy generation."""
        import numpy as np

        self._clear()
        prompt = self._random_tokens(n_prompt)
        t0 = time.perf_counter()
        for start in range(0, n_prompt, self.n_batch):
            self._decode(prompt[start:start + self.n_batch], start, start + self.n_batch >= n_prompt)
        token = self._argmax(np)
        ttft = time.perf_counter() - t0
        per_token = []
        for i in range(n_gen - 1):
            t1 = time.perf_counter()
            self._decode([token], n_prompt + i, True)
            token = self._argmax(np)
            per_token.append(time.perf_counter() - t1)
        return ttft, per_token

    def _argmax(self, np) -> int:
        logits = self.lc.llama_get_logits_ith(self.ctx, -1)
        return int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def describe(self) -> dict[str, Any]:
        buf = ctypes.create_string_buffer(256)
        self.lc.llama_model_desc(self.model, buf, 256)
        return {"model_desc": buf.value.decode(), "n_params": int(self.lc.llama_model_n_params(self.model)),
                "model_size_bytes": int(self.lc.llama_model_size(self.model)),
                "system_info": self.lc.llama_print_system_info().decode(errors="replace").strip()}

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


_LOG_CB = None


def _silent_log():
    import llama_cpp as lc

    global _LOG_CB
    if _LOG_CB is None:
        # llama-cpp-python 0.3.36 names the ctypes type llama_log_callback (ggml_log_callback in C).
        callback_type = getattr(lc, "llama_log_callback", None) or lc.ggml_log_callback
        _LOG_CB = callback_type(lambda level, text, user_data: None)
    return _LOG_CB


def run_gguf(path: str | Path, *, threads: int, prompt_tokens: int, gen_tokens: int, repetitions: int,
             warmup: int) -> dict[str, Any]:
    """Raw samples of pp, tg and request timings for one GGUF."""
    n_batch = min(512, max(32, prompt_tokens))
    bench = LlamaCppBench(path, threads=threads, n_ctx=prompt_tokens + gen_tokens + 16, n_batch=n_batch)
    try:
        for _ in range(warmup):
            bench.time_pp(prompt_tokens)
            bench.time_tg(min(gen_tokens, 16))
        pp = [bench.time_pp(prompt_tokens) for _ in range(repetitions)]
        tg = [bench.time_tg(gen_tokens) for _ in range(repetitions)]
        requests = [bench.time_request(prompt_tokens, gen_tokens) for _ in range(repetitions)]
        info = bench.describe()
    finally:
        bench.close()
    return {"runtime": "llama.cpp", "pp_s": pp, "tg_s": tg, "ttft_s": [r[0] for r in requests],
            "tpot_s": [t for r in requests for t in r[1]], **info}
