"""Hugging Face transformers models (torch): reference fp32 path and trained students.

Greedy batches go through continuous batching (:mod:`arte_edge.backends.hf_batched`): a finished row leaves the
batch and the next conversation takes its place, and a prompt prefix shared by every conversation of a call
(system prompt, few-shot turns) is decoded once. Sampled batches and single conversations use ``model.generate``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from arte_edge.backends.base import Completion, Message, SamplingParams
from arte_edge.backends.llamacpp_batched import shared_prefix_len

if TYPE_CHECKING:
    from transformers import StoppingCriteriaList

MIN_SHARED_PREFIX = 16  # shorter common prefixes are decoded with each row
WINDOW_BATCHES = 4  # conversations per evaluate call = 4 batches, so finished rows are replaced from the queue


class HFChat:
    """A transformers causal LM: greedy batches by continuous batching, the rest by ``generate`` (module docstring)."""

    def __init__(self, model_dir: str | Path, *, threads: int = 2, batch_size: int = 8, name: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.path = Path(model_dir)
        self.name = name or self.path.name
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
        self.model.eval()
        self.batch_size = batch_size
        self.window = WINDOW_BATCHES * batch_size if batch_size > 1 else 1
        from arte_edge.backends.hf_batched import supports_model

        # continuous batching when it decodes as generate would (False: one generate call per batch, which waits
        # for its longest row)
        self.continuous = supports_model(self.model)

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        return self.chat_batch([messages], params)[0]

    def chat_batch(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        """Answer every conversation, ``batch_size`` at a time: greedy ones with continuous batching (see the module
        docstring), sampled ones in ``generate`` batches seeded by ``params.seed``."""
        if self.continuous and params.temperature <= 0 and len(conversations) > 1 and self.batch_size > 1:
            return self._continuous(conversations, params)
        out: list[Completion] = []
        for i in range(0, len(conversations), self.batch_size):
            out.extend(self._generate(conversations[i:i + self.batch_size], params))
        return out

    def _generate(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        import torch

        texts = [self.tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        start = time.perf_counter()
        sample = params.temperature > 0
        torch.manual_seed(params.seed)
        prompt_len = enc["input_ids"].shape[1]
        criteria = _text_stop_criteria(self.tokenizer, prompt_len, params)
        with torch.inference_mode():
            gen = self.model.generate(
                **enc, max_new_tokens=params.max_tokens, do_sample=sample,
                temperature=params.temperature if sample else None, top_p=params.top_p if sample else None,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self._eos_ids(),
                stopping_criteria=criteria)
        seconds = (time.perf_counter() - start) / max(1, len(conversations))
        results = []
        eos = set(self._eos_ids())
        for row, mask in zip(gen, enc["attention_mask"], strict=True):
            new = _own_tokens(row[prompt_len:].tolist(), eos, self.tokenizer.pad_token_id)
            n_new = len(new)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            text, stopped = _cut_at_stop(text, params.stop)
            stopped = stopped or bool(params.stop_regex and re.search(params.stop_regex, text))
            finish = "stop" if stopped or n_new < params.max_tokens else "length"
            results.append(Completion(text, int(mask.sum()), n_new, finish, seconds))
        return results

    def _continuous(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        from arte_edge.backends.hf_batched import TorchBatchedDecoder

        start = time.perf_counter()
        prompts = [self.tokenizer(self.tokenizer.apply_chat_template(list(c), tokenize=False,
                                                                     add_generation_prompt=True),
                                  add_special_tokens=False)["input_ids"] for c in conversations]
        shared = shared_prefix_len(prompts)
        stopped = _text_stop_test(self.tokenizer, params) or (lambda tokens: False)
        decoder = TorchBatchedDecoder(self.model, n_rows=self.batch_size, eos_ids=self._eos_ids(),
                                      pad_id=self.tokenizer.pad_token_id)
        outs = decoder.generate(prompts, params.max_tokens, stopped,
                                shared=shared if shared >= MIN_SHARED_PREFIX else 0)
        seconds = (time.perf_counter() - start) / len(conversations)
        results = []
        for prompt, (tokens, finished) in zip(prompts, outs, strict=True):
            text, cut = _cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
            results.append(Completion(text, len(prompt), len(tokens), "stop" if finished or cut else "length",
                                      seconds))
        return results

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = self.model.generation_config.eos_token_id
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return sorted(i for i in ids if i is not None)

    def close(self) -> None:
        self.model = None


def _own_tokens(new: list[int], eos: set[int], pad: int) -> list[int]:
    """A row's generated tokens without the EOS that ended it and the padding ``generate`` added after it (the same
    count the continuous path and llama.cpp report)."""
    cut = next((k for k, tok in enumerate(new) if tok in eos), None)
    if cut is not None:
        return new[:cut]
    while new and new[-1] == pad:  # a row a stopping criterion ended is padded to the batch's length
        new = new[:-1]
    return new


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _text_stop_test(tokenizer, params: SamplingParams) -> Callable[[list[int]], bool] | None:
    """Whether generated tokens, as text, contain a stop string or match ``stop_regex`` (None: nothing to test)."""
    if not params.stop and not params.stop_regex:
        return None
    pattern = re.compile(params.stop_regex) if params.stop_regex else None

    def stopped(tokens) -> bool:
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return any(s in text for s in params.stop if s) or bool(pattern and pattern.search(text))

    return stopped


def _text_stop_criteria(tokenizer, prompt_len: int, params: SamplingParams) -> StoppingCriteriaList | None:
    """Stop each row of a batch once its new text contains a stop string or matches ``stop_regex``.

    Without this a row that has already written its answer line keeps decoding to ``max_tokens``, which
    dominates evaluation time on CPU. Rows stop independently (transformers pads finished rows).
    """
    stopped = _text_stop_test(tokenizer, params)
    if stopped is None:
        return None
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _TextStop(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for i, row in enumerate(input_ids[:, prompt_len:]):
                done[i] = stopped(row)
            return done

    return StoppingCriteriaList([_TextStop()])
