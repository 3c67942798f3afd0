"""Local GGUF models through llama-cpp-python (the fast path on CPU)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from arte_edge.backends.base import Completion, Message, SamplingParams
from arte_edge.errors import ArteError


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
        """Answer several conversations with batched decoding: one ``llama_decode`` per step for all of them.

        Up to ``batch_size`` conversations share a step (several sequences in one KV cache), which turns
        the per-token weight reads of batch-1 decoding into one read per step. Greedy output equals
        :meth:`chat`; sampled output uses numpy with a per-conversation seed (``params.seed + index``), so
        it is reproducible but not token-identical to llama.cpp's own sampler.
        """
        if self.batch_size <= 1 or len(conversations) <= 1:
            return [self.chat(conv, params) for conv in conversations]
        if self._batched is None:
            self._batched = BatchedDecoder(self.llm, n_seq=self.batch_size, n_ctx_per_seq=self.n_ctx,
                                           threads=self.threads)
        out: list[Completion] = []
        for lo in range(0, len(conversations), self.batch_size):
            chunk = conversations[lo:lo + self.batch_size]
            out += self._batched.generate(chunk, params, first_index=lo)
        return out

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


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens all ``prompts`` start with, leaving each at least one token of its own (whose logits start it)."""
    if not prompts:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(max(0, n)):
        tok = first[i]
        if any(p[i] != tok for p in prompts[1:]):
            return i
    return max(0, n)


@dataclass
class _Seq:
    """One conversation being decoded inside a batch."""

    index: int
    prompt: list[int]
    stop: list[str]
    rng: object
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    processed: int = 0  # prompt tokens this sequence decoded itself (the shared prefix counts once, for the first)


class BatchedDecoder:
    """Several conversations decoded together in one llama.cpp context (one sequence id each).

    Shares the loaded model of a ``llama_cpp.Llama`` and owns a second context with ``n_seq_max`` sequences
    and a unified KV cache. The prompts' common prefix (system prompt, instructions, demonstrations) is decoded
    once into sequence 0 and its KV cells shared with the others (``llama_memory_seq_cp``; ``share_prefix=False``
    decodes every prompt whole); the rest of each prompt is prefilled one sequence at a time (prefill is
    compute-bound already); every decode step then feeds one token per live sequence in a single ``llama_decode``.
    Each Completion's ``meta["prompt_tokens_processed"]`` says how many prompt tokens it cost.
    """

    def __init__(self, llm, *, n_seq: int, n_ctx_per_seq: int, threads: int, share_prefix: bool = True):
        import llama_cpp as lc
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.lc, self.llm, self.n_seq, self.share_prefix = lc, llm, n_seq, share_prefix
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_seq * n_ctx_per_seq
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_seq_max = n_seq
        cparams.kv_unified = True
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.ctx = lc.llama_init_from_model(llm.model, cparams)
        if not self.ctx:
            raise ArteError(f"llama.cpp could not create a {n_seq}-sequence context; lower batch_size or n_ctx")
        self.n_ctx_per_seq = n_ctx_per_seq
        self.batch = lc.llama_batch_init(512, 0, n_seq)
        self.vocab = lc.llama_model_get_vocab(llm.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        eos, bos = llm.token_eos(), llm.token_bos()
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ArteError(f"{llm.model_path}: no chat template in the GGUF; batched chat needs one")
        self.formatter = Jinja2ChatFormatter(
            template=template, eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])

    def _prompt(self, messages: Sequence[Message]) -> tuple[list[int], list[str]]:
        result = self.formatter(messages=list(messages))
        tokens = self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return tokens, [s for s in stop if s]

    def generate(self, conversations: Sequence[Sequence[Message]], params: SamplingParams,
                 first_index: int = 0) -> list[Completion]:
        """Decode ``conversations`` (at most ``n_seq``) together; one Completion each, in order."""
        import numpy as np

        start = time.perf_counter()
        seqs = []
        for i, conv in enumerate(conversations):
            prompt, stop = self._prompt(conv)
            seqs.append(_Seq(first_index + i, prompt, [*stop, *params.stop],
                             np.random.default_rng(params.seed + first_index + i)))
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        too_long = [s for s in seqs if len(s.prompt) + 1 >= self.n_ctx_per_seq]
        for seq in too_long:
            seq.finish = "error"
        live = [s for s in seqs if s.finish is None]
        shared = shared_prefix_len([s.prompt for s in live]) if self.share_prefix and len(live) > 1 else 0
        if shared:  # the common prefix (system prompt, demos) once into sequence 0, its cells shared by the rest
            self._prefill(live[0].prompt[:shared], 0, logits=False)
            mem = self.lc.llama_get_memory(self.ctx)
            for sid in range(1, len(live)):
                self.lc.llama_memory_seq_cp(mem, 0, sid, 0, shared)
        for sid, seq in enumerate(live):  # prefill the rest of each prompt, one sequence at a time
            self._prefill(seq.prompt[shared:], sid, start=shared)
            seq.processed = len(seq.prompt) - shared + (shared if sid == 0 else 0)
            self._accept(seq, self._sample(-1, seq, params), params)
        limit = [min(params.max_tokens, self.n_ctx_per_seq - len(s.prompt)) for s in live]
        while True:
            step = [(sid, s) for sid, s in enumerate(live) if s.finish is None and len(s.tokens) < limit[sid]]
            for sid, s in enumerate(live):
                if s.finish is None and len(s.tokens) >= limit[sid]:
                    s.finish = "length"
            if not step:
                break
            self._fill([(s.tokens[-1], len(s.prompt) + len(s.tokens) - 1, sid) for sid, s in step], logits="all")
            for row, (_, seq) in enumerate(step):
                self._accept(seq, self._sample(row, seq, params), params)
        seconds = time.perf_counter() - start
        return [self._completion(s, seconds) for s in seqs]

    def _prefill(self, tokens: list[int], sid: int, start: int = 0, logits: bool = True) -> None:
        """Decode ``tokens`` at positions ``start``.. of sequence ``sid``; logits of the last one when asked."""
        for lo in range(0, len(tokens), 512):
            chunk = tokens[lo:lo + 512]
            last = logits and lo + len(chunk) >= len(tokens)
            self._fill([(tok, start + lo + j, sid) for j, tok in enumerate(chunk)], logits="last" if last else "none")

    def _fill(self, entries: list[tuple[int, int, int]], logits: str) -> None:
        b = self.batch
        b.n_tokens = len(entries)
        for i, (tok, pos, sid) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = sid
            b.logits[i] = logits == "all" or (logits == "last" and i == len(entries) - 1)
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise ArteError("llama_decode failed in batched chat (KV cache full?)")

    def _sample(self, row: int, seq: _Seq, params: SamplingParams) -> int:
        import numpy as np

        ptr = self.lc.llama_get_logits_ith(self.ctx, row)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        if params.temperature <= 0:
            return int(logits.argmax())
        z = logits.astype(np.float64) / params.temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        if params.top_p < 1.0:
            order = np.argsort(-probs)
            keep = order[: int(np.searchsorted(np.cumsum(probs[order]), params.top_p)) + 1]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(seq.rng.choice(self.n_vocab, p=probs))

    def _accept(self, seq: _Seq, token: int, params: SamplingParams) -> None:
        if self.lc.llama_vocab_is_eog(self.vocab, token):
            seq.finish = "stop"
            return
        seq.tokens.append(token)
        seq.text = self.llm.detokenize(seq.tokens).decode("utf-8", errors="ignore")
        for stop in seq.stop:
            cut = seq.text.find(stop)
            if cut >= 0:
                seq.text, seq.finish = seq.text[:cut], "stop"
                return
        if params.stop_regex and re.search(params.stop_regex, seq.text):
            seq.finish = "stop"

    def _completion(self, seq: _Seq, seconds: float) -> Completion:
        if seq.finish == "error":
            return Completion("", len(seq.prompt), 0, "error", seconds,
                              error=f"llama.cpp: prompt of {len(seq.prompt)} tokens exceeds n_ctx "
                                    f"{self.n_ctx_per_seq}")
        return Completion(seq.text, len(seq.prompt), len(seq.tokens), seq.finish or "length", seconds,
                          meta={"batched": True, "prompt_tokens_processed": seq.processed})

    def close(self) -> None:
        """Free the context and the batch (the model belongs to the Llama object)."""
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
