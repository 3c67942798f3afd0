"""Local GGUF models through llama-cpp-python (the fast path on CPU)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

from arte_edge.backends.base import Completion, Message, SamplingParams, answer_followups
from arte_edge.backends.llamacpp_batched import BatchedDecoder, FollowUp
from arte_edge.errors import ArteError

QUEUE_PER_SLOT = 4  # a chat_batch call of 4 conversations per slot keeps the slots full until the last few


class LlamaCppChat:
    """A GGUF chat model; uses the chat template stored in the GGUF."""

    def __init__(self, gguf_path: str | Path, *, threads: int = 2, n_ctx: int = 2048, seed: int = 0,
                 name: str | None = None, batch_size: int = 8):
        from llama_cpp import Llama

        from arte_edge.llama_build import check_llama_build

        check_llama_build()
        self.path = Path(gguf_path)
        self.name = name or self.path.stem
        try:
            self.llm = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                             n_batch=512, seed=seed, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ArteError(f"{self.path}: llama.cpp could not load this GGUF ({exc}); "
                            "check it with `arte-edge models info PATH`") from exc
        self.n_ctx = n_ctx
        self.threads = threads
        self.batch_size = batch_size  # conversations decoded together by chat_batch
        # conversations worth handing to one chat_batch call (one at a time: nothing to keep full)
        self.window = QUEUE_PER_SLOT * batch_size if batch_size > 1 else 1
        self._batched = None

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        if params.stop_regex:
            return self._chat_until(messages, params)
        start = time.perf_counter()
        try:
            out = self.llm.create_chat_completion(
                messages=list(messages), max_tokens=params.max_tokens, temperature=params.temperature,
                top_p=params.top_p, seed=params.seed, stop=list(params.stop) or None)
        except ValueError as exc:  # prompt longer than the context window
            return Completion("", 0, 0, "error", time.perf_counter() - start, error=f"llama.cpp: {exc}")
        choice = out["choices"][0]
        usage = out.get("usage", {})
        return Completion(
            text=choice["message"].get("content") or "",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            finish_reason=choice.get("finish_reason") or "stop",
            seconds=time.perf_counter() - start,
        )

    def _chat_until(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        """Stream tokens and stop once the text matches ``params.stop_regex`` (saves decode time)."""
        pattern = re.compile(params.stop_regex or "")
        start = time.perf_counter()
        text, n_chunks, finish = "", 0, "length"
        try:
            stream = self.llm.create_chat_completion(
                messages=list(messages), max_tokens=params.max_tokens, temperature=params.temperature,
                top_p=params.top_p, seed=params.seed, stop=list(params.stop) or None, stream=True)
            for chunk in stream:
                choice = chunk["choices"][0]
                text += choice["delta"].get("content") or ""
                n_chunks += 1
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                if pattern.search(text):
                    finish = "stop"
                    break
        except ValueError as exc:
            return Completion("", 0, 0, "error", time.perf_counter() - start, error=f"llama.cpp: {exc}")
        n_out = max(0, n_chunks - 1)  # the first chunk carries the role only
        prompt_tokens = max(0, self.llm.n_tokens - n_out)
        return Completion(text, prompt_tokens, n_out, finish, time.perf_counter() - start)

    def chat_batch(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        """Answer several conversations with continuous batching: one ``llama_decode`` per step for all of them.

        Up to ``batch_size`` conversations are in flight at once (several sequences in one KV cache, their common
        prompt prefix decoded once), and a finished one hands its slot to the next; that turns the per-token
        weight reads of batch-1 decoding into one read per step. Give it many conversations at once (see
        ``window``): the slots stay full. Greedy output equals :meth:`chat` up to float rounding (llama.cpp
        batching is not batch-invariant); sampled output uses numpy with a per-conversation seed
        (``params.seed + index``), so it is reproducible but not token-identical to llama.cpp's own sampler.
        """
        if self.batch_size <= 1 or len(conversations) <= 1:
            return [self.chat(conv, params) for conv in conversations]
        if self._batched is None:
            self._batched = BatchedDecoder(self.llm, n_seq=self.batch_size, n_ctx_per_seq=self.n_ctx,
                                           threads=self.threads)
        return self._batched.generate(conversations, params)

    def chat_batch_then(self, conversations: Sequence[Sequence[Message]], params: SamplingParams,
                        followup: FollowUp, followup_params: SamplingParams,
                        ) -> list[tuple[Completion, Completion | None]]:
        """:meth:`chat_batch`, and a next turn wherever ``followup(i, completion)`` asks for one, answered in the
        same slot as soon as the first turn ends: the conversation's KV cells are kept, so only the new turn's
        tokens are processed (see :meth:`BatchedDecoder.generate_then`)."""
        if self.batch_size <= 1 or len(conversations) <= 1:
            return answer_followups(self, self.chat_batch(conversations, params), followup, followup_params)
        if self._batched is None:
            self._batched = BatchedDecoder(self.llm, n_seq=self.batch_size, n_ctx_per_seq=self.n_ctx,
                                           threads=self.threads)
        return self._batched.generate_then(conversations, params, followup, followup_params)

    def close(self) -> None:
        """Free the batched context and the model."""
        batched = getattr(self, "_batched", None)
        if batched is not None:
            batched.close()
            self._batched = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None
