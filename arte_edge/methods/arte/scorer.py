"""Students that answer many questions after the same demonstration (ARTE's preference collection).

ARTE scores a rationale by asking the student every D_pref question with that rationale as the one-shot
demonstration: drafts × rationales × |D_pref| greedy generations. Every conversation of one rationale shares
the system prompt and the demonstration, so :class:`PrefixReuseScorer` evaluates that shared prefix once into
llama.cpp sequence 0 and copies it into ``batch`` slots (``llama_memory_seq_cp``: with a unified KV cache the
cells are shared, not copied). Every live slot decodes in one ``llama_decode`` per step; a slot whose answer is
complete (answer line or end of turn) is removed (``llama_memory_seq_rm``) and takes the next question at once,
its suffix prefilled in the same step (continuous batching: no slot idles while a long answer finishes).
:class:`ChatModelScorer` is the plain path over any :class:`ChatModel` (fp32 HF student, fakes in tests).
"""

from __future__ import annotations

import ctypes
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from arte_edge.backends.base import ChatModel, Message, SamplingParams
from arte_edge.errors import ArteError


class DemoScorer(Protocol):
    """A student answering questions after a fixed conversation prefix (system prompt + demonstrations)."""

    name: str

    def answer(self, prefix: Sequence[Message], questions: Sequence[str]) -> list[str]:
        """The student's greedy completion for each question asked after ``prefix``."""
        ...

    def close(self) -> None:
        """Free the model."""
        ...


class ChatModelScorer:
    """The straightforward scorer: one conversation per question through a :class:`ChatModel`."""

    def __init__(self, model: ChatModel, params: SamplingParams):
        self.model, self.params = model, params
        self.name = model.name

    def answer(self, prefix: Sequence[Message], questions: Sequence[str]) -> list[str]:
        """One ``chat_batch`` over ``prefix + [question]`` conversations; failed generations give ""."""
        conversations = [[*prefix, {"role": "user", "content": q}] for q in questions]
        return [c.text if c.ok else "" for c in self.model.chat_batch(conversations, self.params)]

    def close(self) -> None:
        """Free the model."""
        self.model.close()


def chat_prompt_tokens(llm: Any, messages: Sequence[Message]) -> list[int]:
    """The prompt tokens ``Llama.create_chat_completion`` would decode for ``messages`` (same formatter)."""
    from llama_cpp import llama_chat_format as fmt

    name = llm.chat_format or ""
    if name.startswith("chat_template."):
        key = "tokenizer.chat_template" + ("" if name == "chat_template.default" else name[len("chat_template"):])
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = fmt.Jinja2ChatFormatter(
            template=llm.metadata[key], eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
    else:
        formatter = getattr(fmt, f"format_{name.replace('-', '_').replace('.', '_')}", None)
        if formatter is None:
            raise ArteError(f"chat format {name!r} of {llm.model_path}: not supported by the prefix-reuse scorer; "
                            "set arte.preference_student: fp32")
    result = formatter(messages=list(messages))
    return llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)


def common_prefix_len(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all ``sequences``."""
    if not sequences:
        return 0
    n = min(len(s) for s in sequences)
    first = sequences[0]
    for i in range(n):
        if any(s[i] != first[i] for s in sequences[1:]):
            return i
    return n


class _Sequence:
    """One question being answered: its llama.cpp sequence id, output tokens and text so far."""

    def __init__(self, seq_id: int, suffix: list[int], start_pos: int):
        self.seq_id, self.suffix, self.pos = seq_id, suffix, start_pos
        self.tokens: list[int] = []
        self.data = b""
        self.done = False

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="ignore")


class PrefixReuseScorer:
    """Batched greedy answers from a GGUF student, evaluating each shared demonstration prefix once."""

    def __init__(self, gguf_path: str | Path, *, threads: int = 2, batch: int = 8, max_tokens: int = 160,
                 stop_regex: str | None = None, max_prompt_tokens: int = 1024, name: str | None = None):
        import llama_cpp as lc
        from llama_cpp import Llama

        from arte_edge.bench.llamacpp_runner import _silent_log
        from arte_edge.llama_build import check_llama_build

        check_llama_build()
        self.lc, self.path = lc, Path(gguf_path)
        self.name = name or self.path.stem
        self.batch_size, self.max_tokens = batch, max_tokens
        self.stop = re.compile(stop_regex) if stop_regex else None
        try:  # the high-level object gives the tokenizer and the exact chat formatter; its context stays tiny
            self.llm = Llama(model_path=str(self.path), n_ctx=256, n_threads=threads, n_batch=32, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ArteError(f"{self.path}: llama.cpp could not load this GGUF ({exc})") from exc
        lc.llama_log_set(_silent_log(), ctypes.c_void_p())
        self.n_batch = 512
        self.n_ctx = max_prompt_tokens + batch * (max_prompt_tokens // 2 + max_tokens) + 64
        cparams = lc.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = self.n_ctx, self.n_batch, self.n_batch
        cparams.n_seq_max = batch + 1
        cparams.kv_unified = True  # sequences share the prefix cells instead of copying them
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama(): same numerics as the naive path
        self.model = self.llm._model.model
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise ArteError(f"{self.path}: llama.cpp could not create a {self.n_ctx}-token context; "
                            "lower arte.score_batch")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.cbatch = lc.llama_batch_init(self.n_batch, 0, 1)
        self.mem = lc.llama_get_memory(self.ctx)

    # -- public --------------------------------------------------------------------------------------
    def answer(self, prefix: Sequence[Message], questions: Sequence[str]) -> list[str]:
        """Greedy completion of each question after ``prefix``; the shared tokens are decoded once."""
        if not questions:
            return []
        prompts = [chat_prompt_tokens(self.llm, [*prefix, {"role": "user", "content": q}]) for q in questions]
        shared = max(0, common_prefix_len(prompts) - 1)  # keep ≥ 1 suffix token per question for its logits
        if any(len(p) + self.max_tokens > self.n_ctx // 2 for p in prompts):
            raise ArteError(f"{self.path}: a demonstration + question is longer than the scorer's context; "
                            "shorten arte.max_tokens or raise max_prompt_tokens")
        self.lc.llama_memory_clear(self.mem, True)
        self._decode_tokens([(0, tok, pos, False) for pos, tok in enumerate(prompts[0][:shared])])
        return self._answer_all(prompts, shared)

    def close(self) -> None:
        """Free the llama.cpp context, batch and model."""
        if getattr(self, "ctx", None):
            self.lc.llama_batch_free(self.cbatch)
            self.lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None

    # -- internals -----------------------------------------------------------------------------------
    def _answer_all(self, prompts: list[list[int]], shared: int) -> list[str]:
        """Continuous batching over ``batch`` slots: a slot freed by a finished answer takes the next question
        in the same ``llama_decode`` step (its suffix is prefilled beside the other slots' decode tokens)."""
        lc = self.lc
        waiting = deque(enumerate(prompts))
        free = list(range(self.batch_size, 0, -1))  # sequence ids; 0 holds the shared prefix
        live: dict[int, tuple[int, _Sequence]] = {}
        texts = [""] * len(prompts)
        next_of: dict[int, int] = {}
        while waiting or live:
            entries: list[tuple[int, int, int, bool]] = []
            for seq_id, tok in next_of.items():
                index, seq = live[seq_id]
                if self._finish(seq, tok):
                    texts[index] = seq.text
                    del live[seq_id]
                    lc.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
                    free.append(seq_id)
                else:
                    entries.append((seq_id, tok, seq.pos, True))
                    seq.pos += 1
            while free and waiting:
                index, prompt = waiting.popleft()
                seq = _Sequence(free.pop(), prompt[shared:], shared)
                if shared:
                    lc.llama_memory_seq_cp(self.mem, 0, seq.seq_id, 0, shared)
                entries += [(seq.seq_id, tok, shared + i, i == len(seq.suffix) - 1) for i, tok in enumerate(seq.suffix)]
                seq.pos += len(seq.suffix)
                live[seq.seq_id] = (index, seq)
            if not entries:
                break
            wanted = [e[0] for e in entries if e[3]]
            next_of = dict(zip(wanted, self._decode_tokens(entries), strict=True))
        return texts

    def _finish(self, s: _Sequence, tok: int) -> bool:
        """Append ``tok`` to ``s`` unless it ends the answer; True when ``s`` is finished."""
        if self.lc.llama_vocab_is_eog(self.vocab, tok):
            s.done = True
            return True
        s.tokens.append(tok)
        s.data += self.llm.detokenize([tok])
        if len(s.tokens) >= self.max_tokens or (self.stop is not None and self.stop.search(s.text)):
            s.done = True
        return s.done

    def _decode_tokens(self, entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """Decode ``(seq_id, token, pos, want_logits)`` entries in n_batch chunks; returns the greedy next
        token of every entry that wants logits, in order."""
        lc, b = self.lc, self.cbatch
        wanted: list[int] = []
        for start in range(0, len(entries), self.n_batch):
            part = entries[start:start + self.n_batch]
            b.n_tokens = len(part)
            for i, (seq_id, tok, pos, want) in enumerate(part):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
                b.seq_id[i][0] = seq_id
                b.logits[i] = want
            if lc.llama_decode(self.ctx, b) != 0:
                raise ArteError(f"{self.path}: llama_decode failed (context of {self.n_ctx} tokens full?); "
                                "lower arte.score_batch")
            wanted += [self._argmax(i) for i, e in enumerate(part) if e[3]]
        return wanted

    def _argmax(self, i: int) -> int:
        import numpy as np

        ptr = self.lc.llama_get_logits_ith(self.ctx, i)
        return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())
