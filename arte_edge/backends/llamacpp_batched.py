"""Continuous batching for llama.cpp: many conversations through a few sequence slots of one context.

How llama-server serves its slots, inside one Python process: a queue of conversations, ``n_seq`` slots in one
llama.cpp context with a unified KV cache, and one ``llama_decode`` per step that carries the next token of every
generating slot plus prompt chunks of newly admitted ones. A finished conversation frees its slot at once and the
next one in the queue takes it, so the batch stays full instead of waiting for the longest answer of a window.
The queue's common prompt prefix (system prompt, instructions, demonstrations) is decoded once and its KV cells
shared by every slot (``llama_memory_seq_cp``); a slot's own cells are dropped when it is reused
(``llama_memory_seq_rm`` from the end of the prefix).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from arte_edge.backends.base import Completion, Message, SamplingParams
from arte_edge.errors import ArteError

N_BATCH = 512  # tokens per llama_decode call (decode tokens first, then prompt chunks)

# ``followup(i, completion)``: the next turn's whole conversation for conversation i, or None when it is done
FollowUp = Callable[[int, Completion], Sequence[Message] | None]


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
    """One conversation being decoded in a slot."""

    prompt: list[int]
    stop: list[str]
    rng: object
    params: SamplingParams
    index: int = 0  # the conversation it answers
    followup: bool = False  # a next turn (never followed up itself)
    tokens: list[int] = field(default_factory=list)
    cached: int = 0  # tokens of prompt + answer whose KV cells are in its slot
    text: str = ""
    finish: str | None = None
    fed: int = 0  # prompt tokens in the KV cache so far (the shared prefix included)
    processed: int = 0  # prompt tokens this sequence decoded itself (the shared prefix counts once, for the first)
    limit: int = 0  # completion tokens allowed (max_tokens, or what the context leaves)
    started: float = 0.0
    seconds: float = 0.0


class BatchedDecoder:
    """Several conversations decoded together in one llama.cpp context, ``n_seq`` at a time (continuous batching).

    Shares the loaded model of a ``llama_cpp.Llama`` and owns a second context with ``n_seq`` sequences and a
    unified KV cache. :meth:`generate` takes any number of conversations: ``n_seq`` are decoded at once and each
    finished one hands its slot to the next. ``share_prefix=False`` decodes every prompt whole (no shared cells).
    Each Completion's ``meta["prompt_tokens_processed"]`` says how many prompt tokens it cost and ``seconds`` is its
    own time from admission to its last token.
    """

    def __init__(self, llm, *, n_seq: int, n_ctx_per_seq: int, threads: int, share_prefix: bool = True):
        import llama_cpp as lc
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.lc, self.llm, self.n_seq, self.share_prefix = lc, llm, n_seq, share_prefix
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_seq * n_ctx_per_seq
        cparams.n_batch = cparams.n_ubatch = N_BATCH
        cparams.n_seq_max = n_seq
        cparams.kv_unified = True
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.ctx = lc.llama_init_from_model(llm.model, cparams)
        if not self.ctx:
            raise ArteError(f"llama.cpp could not create a {n_seq}-sequence context; lower batch_size or n_ctx")
        self.n_ctx_per_seq = n_ctx_per_seq
        self.batch = lc.llama_batch_init(N_BATCH, 0, n_seq)
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
        """Answer every conversation, ``n_seq`` in flight at a time; one Completion each, in order.

        Sampled output is seeded by position (``params.seed + first_index + i``), whatever slot it runs in.
        """
        return [first for first, _ in self.generate_then(conversations, params, first_index=first_index)]

    def generate_then(self, conversations: Sequence[Sequence[Message]], params: SamplingParams,
                      followup: FollowUp | None = None, followup_params: SamplingParams | None = None,
                      first_index: int = 0) -> list[tuple[Completion, Completion | None]]:
        """:meth:`generate`, and where ``followup(i, completion)`` returns a next turn's conversation as soon as
        conversation i finishes, that turn is answered in the same slot with ``followup_params``. The slot keeps the
        KV cells of the prompt and answer it already holds, so only the new turn's tokens are processed (the longest
        common token prefix is kept, as llama-server's prompt cache does). ``(first, follow-up or None)`` each.
        """
        import numpy as np

        seqs = [self._seq(conv, params, np.random.default_rng(params.seed + first_index + i), i)
                for i, conv in enumerate(conversations)]
        mem = self.lc.llama_get_memory(self.ctx)
        self.lc.llama_memory_clear(mem, True)
        live = [s for s in seqs if s.finish is None]
        n_slots = min(self.n_seq, len(live))
        shared = shared_prefix_len([s.prompt for s in live]) if self.share_prefix and len(live) > 1 else 0
        if shared:  # the common prefix once into slot 0, its cells shared by every other slot
            for lo in range(0, shared, N_BATCH):
                chunk = live[0].prompt[lo:min(shared, lo + N_BATCH)]
                self._fill([(tok, lo + j, 0, False) for j, tok in enumerate(chunk)])
            for sid in range(1, n_slots):
                self.lc.llama_memory_seq_cp(mem, 0, sid, 0, shared)
        for k, seq in enumerate(live):
            seq.fed = seq.cached = shared
            seq.processed = len(seq.prompt) - shared + (shared if k == 0 else 0)
        followups: dict[int, _Seq] = {}
        then = None
        next_params = followup_params or params
        if followup is not None:
            def then(seq: _Seq) -> _Seq | None:
                conv = followup(seq.index, self._completion(seq))
                if conv is None:
                    return None
                nxt = self._seq(conv, next_params, np.random.default_rng(next_params.seed + first_index + seq.index),
                                seq.index)
                nxt.followup = True
                followups[seq.index] = nxt
                return nxt
        self._run(deque(live), n_slots, shared, mem, then)
        return [(self._completion(s), self._completion(followups[s.index]) if s.index in followups else None)
                for s in seqs]

    def _seq(self, conversation: Sequence[Message], params: SamplingParams, rng, index: int) -> _Seq:
        """A conversation ready to queue (finished as an error when its prompt leaves no room to answer)."""
        prompt, stop = self._prompt(conversation)
        seq = _Seq(prompt, [*stop, *params.stop], rng, params, index)
        seq.limit = min(params.max_tokens, self.n_ctx_per_seq - len(prompt))
        if len(prompt) + 1 >= self.n_ctx_per_seq:
            seq.finish = "error"
        return seq

    def _run(self, queue: deque[_Seq], n_slots: int, shared: int, mem,
             then: Callable[[_Seq], _Seq | None] | None = None) -> None:
        """Decode until the queue and every slot are empty: one ``llama_decode`` per step for all slots. A finished
        sequence for which ``then`` gives a next one hands its slot (and the cells they share) to it."""
        slots: list[_Seq | None] = [None] * n_slots
        elsewhere: list[_Seq] = []
        while queue or any(slots):
            for sid in range(n_slots):
                if slots[sid] is None and queue:
                    slots[sid] = queue.popleft()
                    slots[sid].started = time.perf_counter()
            entries: list[tuple[int, int, int, bool]] = []
            rows: list[tuple[int, _Seq]] = []
            for sid, s in enumerate(slots):  # one token for every generating slot
                if s is not None and s.fed == len(s.prompt):
                    entries.append((s.tokens[-1], len(s.prompt) + len(s.tokens) - 1, sid, True))
                    rows.append((len(entries) - 1, s))
                    s.cached = len(s.prompt) + len(s.tokens)
            for sid, s in enumerate(slots):  # then prompt chunks of admitted slots, as far as the batch has room
                if s is None or s.fed == len(s.prompt) or len(entries) >= N_BATCH:
                    continue
                take = min(N_BATCH - len(entries), len(s.prompt) - s.fed)
                entries += [(s.prompt[pos], pos, sid, pos == len(s.prompt) - 1) for pos in range(s.fed, s.fed + take)]
                s.fed = s.cached = s.fed + take
                if s.fed == len(s.prompt):
                    rows.append((len(entries) - 1, s))
            self._fill(entries)
            for row, s in rows:
                self._accept(s, self._sample(row, s))
            for sid, s in enumerate(slots):
                if s is not None and s.fed == len(s.prompt) and (s.finish or len(s.tokens) >= s.limit):
                    s.finish = s.finish or "length"
                    s.seconds = time.perf_counter() - s.started
                    nxt = then(s) if then is not None and not s.followup else None
                    slots[sid] = None
                    if nxt is not None and nxt.finish is None:
                        slots[sid] = self._continue(s, nxt, sid, shared, mem)
                        if slots[sid] is None:
                            elsewhere.append(nxt)
                    if slots[sid] is None:
                        self.lc.llama_memory_seq_rm(mem, sid, shared, -1)  # keep the shared prefix's cells
        if elsewhere:  # follow-ups that do not start with the shared prefix: decoded whole, afterwards
            self.lc.llama_memory_clear(mem, True)
            for s in elsewhere:
                s.fed = s.cached = 0
                s.processed = len(s.prompt)
            self._run(deque(elsewhere), min(self.n_seq, len(elsewhere)), 0, mem)

    def _continue(self, done: _Seq, nxt: _Seq, sid: int, shared: int, mem) -> _Seq | None:
        """Start ``nxt`` in ``done``'s slot on the cells of their longest common token prefix (at least one of its
        prompt tokens is decoded again, for the logits of its first answer token); None when that prefix is
        shorter than the shared one (a chat template that renders earlier turns differently): the slot must keep
        the shared cells for the queue."""
        held = (done.prompt + done.tokens)[:done.cached]
        keep = 0
        limit = min(len(held), len(nxt.prompt) - 1)
        while keep < limit and held[keep] == nxt.prompt[keep]:
            keep += 1
        if keep < shared:
            return None
        self.lc.llama_memory_seq_rm(mem, sid, keep, -1)
        nxt.fed = nxt.cached = keep
        nxt.processed = len(nxt.prompt) - keep
        nxt.started = time.perf_counter()
        return nxt

    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of ``(token, position, sequence, wants_logits)`` entries."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (tok, pos, sid, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = sid
            b.logits[i] = logits
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise ArteError("llama_decode failed in batched chat (KV cache full?)")

    def _sample(self, row: int, seq: _Seq) -> int:
        import numpy as np

        params = seq.params
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

    def _accept(self, seq: _Seq, token: int) -> None:
        params = seq.params
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

    def _completion(self, seq: _Seq) -> Completion:
        if seq.finish == "error":
            return Completion("", len(seq.prompt), 0, "error", 0.0,
                              error=f"llama.cpp: prompt of {len(seq.prompt)} tokens exceeds n_ctx "
                                    f"{self.n_ctx_per_seq}")
        return Completion(seq.text, len(seq.prompt), len(seq.tokens), seq.finish or "length", seq.seconds,
                          meta={"batched": True, "prompt_tokens_processed": seq.processed})

    def close(self) -> None:
        """Free the context and the batch (the model belongs to the Llama object)."""
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
