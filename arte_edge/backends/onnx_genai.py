"""An onnxruntime-genai model folder as a token generator, timing first token and decode separately.

Used by the ONNX chat backend (evaluation), by ONNX verification and by the bench runner. onnxruntime-genai
keeps the token loop in C++, which is why it decodes ~11x faster here than optimum's Python-side
ORTModelForCausalLM (docs/onnx.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from arte_edge.errors import ArteError

Message = dict[str, str]


class GenerationResult(NamedTuple):
    """One generation. ``decode_s`` runs from the first token to the last, so decode tok/s is
    ``(n_generated - 1) / decode_s``; an eos token that ended the answer counts in ``n_generated``."""

    text: str
    n_prompt_tokens: int
    n_generated: int
    ttft_s: float
    decode_s: float


def load_genai_model(onnx_dir: str | Path, threads: int | None = None) -> Any:
    """An ``onnxruntime_genai.Model`` on CPU, with ``intra_op_num_threads`` overridden when given."""
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        raise ArteError("running ONNX models needs onnxruntime-genai: pip install 'arte-edge[onnx]'") from exc
    onnx_dir = Path(onnx_dir)
    if not (onnx_dir / "genai_config.json").is_file():
        raise ArteError(f"{onnx_dir}: no genai_config.json; export the model with `arte-edge export --format onnx`")
    config = og.Config(str(onnx_dir))
    if threads is not None:
        if threads < 1:
            raise ArteError(f"threads must be >= 1, got {threads}")
        options = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    try:
        return og.Model(config)
    except Exception as exc:  # og raises plain RuntimeError with the ORT message
        raise ArteError(f"{onnx_dir}: onnxruntime-genai could not load the model ({exc}); re-export it") from exc


class OnnxGenaiRunner:
    """A loaded onnxruntime-genai model and tokenizer; greedy (or sampled) generation with stop strings.

    ``threads`` overrides the folder's ``intra_op_num_threads`` (None keeps the folder's setting).
    """

    def __init__(self, onnx_dir: str | Path, threads: int | None = 1):
        import onnxruntime_genai as og

        self.onnx_dir = Path(onnx_dir)
        self.threads = threads
        self.model = load_genai_model(self.onnx_dir, threads)
        self.tokenizer = og.Tokenizer(self.model)
        genai = json.loads((self.onnx_dir / "genai_config.json").read_text(encoding="utf-8"))
        self.context_length = int(genai["model"]["context_length"])
        self.vocab_size = int(genai["model"]["vocab_size"])
        self.eos_token_ids = frozenset(int(t) for t in self.tokenizer.eos_token_ids)

    def apply_chat_template(self, messages: Sequence[Message]) -> str:
        """The prompt text for ``messages`` with the assistant turn opened (the folder's own chat template)."""
        try:
            return self.tokenizer.apply_chat_template(json.dumps(list(messages)), add_generation_prompt=True)
        except Exception as exc:
            raise ArteError(f"{self.onnx_dir}: the chat template could not be applied ({exc})") from exc

    def encode(self, messages_or_prompt_text: Sequence[Message] | str) -> list[int]:
        """Token ids: a string is used as is; a list of messages goes through the chat template."""
        text = (messages_or_prompt_text if isinstance(messages_or_prompt_text, str)
                else self.apply_chat_template(messages_or_prompt_text))
        return [int(t) for t in self.tokenizer.encode(text)]

    def generate_ids(
        self, prompt_ids: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
        top_p: float = 1.0, seed: int | None = None,
    ) -> Iterator[int]:
        """Yield new token ids one by one (eos included, then stop); greedy unless ``temperature`` > 0."""
        import numpy as np
        import onnxruntime_genai as og

        if not prompt_ids:
            raise ArteError("cannot generate from an empty prompt")
        max_length = min(len(prompt_ids) + max_new_tokens, self.context_length)
        if len(prompt_ids) >= max_length:
            raise ArteError(f"{self.onnx_dir}: prompt of {len(prompt_ids)} tokens leaves no room in the "
                            f"{self.context_length}-token context; shorten the prompt")
        options: dict[str, Any] = {"max_length": max_length, "min_length": 0, "repetition_penalty": 1.0}
        if temperature > 0:
            # top_k=0 makes og 0.18 sample outside the top-p nucleus; the full vocabulary means "no top-k".
            options.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=self.vocab_size)
            if seed is not None:
                options["random_seed"] = int(seed)
        else:
            options.update(do_sample=False, num_beams=1)
        params = og.GeneratorParams(self.model)
        params.set_search_options(**options)
        generator = og.Generator(self.model, params)
        generator.append_tokens(np.asarray([list(prompt_ids)], dtype=np.int32))
        while not generator.is_done():
            generator.generate_next_token()
            yield int(generator.get_next_tokens()[0])

    def generate(
        self, messages_or_prompt_text: Sequence[Message] | str, max_new_tokens: int,
        stop: Sequence[str] = (), **sampling: Any,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens``; stop at eos or at the first ``stop`` string (cut from the text)."""
        prompt_ids = self.encode(messages_or_prompt_text)
        stream = self.tokenizer.create_stream()
        pieces: list[str] = []
        n_generated, ttft_s, first_at = 0, 0.0, 0.0
        start = time.perf_counter()
        for token in self.generate_ids(prompt_ids, max_new_tokens, **sampling):
            now = time.perf_counter()
            if n_generated == 0:
                ttft_s, first_at = now - start, now
            n_generated += 1
            if token in self.eos_token_ids:
                break
            pieces.append(stream.decode(token))
            cut = _stop_position("".join(pieces), stop) if stop else -1
            if cut >= 0:
                pieces = ["".join(pieces)[:cut]]
                break
        decode_s = (time.perf_counter() - first_at) if n_generated > 1 else 0.0
        return GenerationResult("".join(pieces), len(prompt_ids), n_generated, ttft_s, decode_s)

    def time_request(self, prompt_ids: Sequence[int], n_gen: int) -> tuple[float, list[float]]:
        """Prefill seconds (or TTFT: prefill + first token, when ``n_gen`` > 0) and per-token decode seconds
        for a greedy decode of exactly ``n_gen`` tokens (eos suppressed)."""
        import numpy as np
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        total = len(prompt_ids) + max(n_gen, 1)
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        generator = og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(np.asarray([list(prompt_ids)], dtype=np.int32))
        if n_gen == 0:
            return time.perf_counter() - start, []
        generator.generate_next_token()
        generator.get_next_tokens()
        ttft = time.perf_counter() - start
        per_token = []
        for _ in range(n_gen - 1):
            t0 = time.perf_counter()
            generator.generate_next_token()
            generator.get_next_tokens()
            per_token.append(time.perf_counter() - t0)
        return ttft, per_token

    def close(self) -> None:
        """Drop the model (the native memory goes with the last reference)."""
        self.tokenizer = None
        self.model = None

    def __enter__(self) -> OnnxGenaiRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_position(text: str, stop: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else -1
