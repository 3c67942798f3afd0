"""ONNX artifacts (onnxruntime-genai folders) behind the chat interface, for evaluation."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

from arte_edge.backends.base import Completion, Message, SamplingParams


class OnnxChat:
    """Greedy/sampled chat generation with an onnxruntime-genai model folder."""

    def __init__(self, onnx_dir: str | Path, *, threads: int = 2, name: str | None = None):
        from arte_edge.backends.onnx_genai import OnnxGenaiRunner

        self.runner = OnnxGenaiRunner(onnx_dir, threads=threads)
        self.name = name or Path(onnx_dir).name

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        start = time.perf_counter()
        prompt_ids = self.runner.encode(messages)
        pattern = re.compile(params.stop_regex) if params.stop_regex else None
        stream = self.runner.tokenizer.create_stream()
        text, n_out, finish = "", 0, "length"
        for token in self.runner.generate_ids(prompt_ids, params.max_tokens, temperature=params.temperature,
                                              top_p=params.top_p, seed=params.seed):
            n_out += 1
            if token in self.runner.eos_token_ids:
                finish = "stop"
                break
            text += stream.decode(token)
            if any(s and s in text for s in params.stop):
                text = text[:min(text.find(s) for s in params.stop if s and s in text)]
                finish = "stop"
                break
            if pattern is not None and pattern.search(text):
                finish = "stop"
                break
        return Completion(text, len(prompt_ids), n_out, finish, time.perf_counter() - start)

    def chat_batch(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        return [self.chat(c, params) for c in conversations]

    def close(self) -> None:
        self.runner.close()
