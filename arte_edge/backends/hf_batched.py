"""Continuous batching for transformers models on CPU: greedy rows leave the batch when done, queued ones take over.

``model.generate`` on a left-padded batch runs every row until the batch's longest answer ends: rows that answered
in 10 tokens wait, padded, for one that runs to the cap (a third of the slots did useful work on the demo's held-out
items). :class:`TorchBatchedDecoder` keeps one KV cache of the live rows instead. Each step decodes one token per
row; a finished row is dropped from the cache (``batch_select_indices``) and queued prompts are prefilled and
joined to it. Where a cached key sits does not matter to attention (its rotary position is in the key; the 2-D
mask says which cells count), so rows of different lengths share one cache, each right-aligned and masked on the
left; columns no row needs any more are trimmed. A prompt prefix shared by every conversation is decoded once and
its cells copied to each new row.

Greedy only, and only for models :func:`supports_model` accepts; outputs equal one-at-a-time decoding up to float
rounding (batched matmuls are not batch-invariant), which is why the evaluate stage still re-answers a sample one
at a time and reports the agreement.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TRIM_AT = 32  # leading columns masked in every row before they are cut from the cache


@dataclass
class _Row:
    """One greedy sequence in flight."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    finished: bool = False  # EOS or the caller's stop test, before the token limit
    next_pos: int = 0  # position of the token fed at the next step


# generation_config fields that make ``generate``'s greedy choice differ from a plain argmax, with their neutral values
_LOGITS_SETTINGS = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
                    "suppress_tokens": (None, []), "begin_suppress_tokens": (None, []), "sequence_bias": (None,),
                    "min_new_tokens": (None, 0), "min_length": (None, 0), "forced_bos_token_id": (None,),
                    "forced_eos_token_id": (None,), "encoder_repetition_penalty": (None, 1.0)}


def supports_model(model) -> bool:
    """Whether :class:`TorchBatchedDecoder` decodes ``model`` as ``generate`` would, greedily: every cache layer is
    full attention (rows can be dropped, joined and padded; sliding-window layers count positions, not cells) and the
    model's generation_config changes no logits (``_LOGITS_SETTINGS``: a repetition penalty, suppressed tokens...)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return False
    gen = model.generation_config
    return all(getattr(gen, name, None) in neutral for name, neutral in _LOGITS_SETTINGS.items())


class TorchBatchedDecoder:
    """Greedy continuous batching of a transformers causal LM: up to ``n_rows`` sequences in one KV cache."""

    def __init__(self, model, *, n_rows: int, eos_ids: Sequence[int], pad_id: int):
        self.model, self.n_rows, self.eos, self.pad = model, n_rows, set(eos_ids), pad_id

    def generate(self, prompts: Sequence[list[int]], max_new: int, stopped: Callable[[list[int]], bool],
                 shared: int = 0) -> list[tuple[list[int], bool]]:
        """Each prompt's new tokens (EOS not included) and whether it finished before ``max_new`` (EOS, or
        ``stopped(tokens)`` true after a token). ``shared``: leading tokens all prompts have in common (decoded
        once)."""
        import torch

        rows = [_Row(list(p)) for p in prompts]
        queue = deque(sorted(rows, key=lambda r: len(r.prompt)))
        prefix = None
        if shared:
            with torch.inference_mode():
                prefix = self.model(torch.tensor([prompts[0][:shared]]), past_key_values=self._new_cache(),
                                    use_cache=True, logits_to_keep=1).past_key_values
        live: list[_Row] = []
        cache = mask = None
        with torch.inference_mode():
            while queue or live:
                if queue and len(live) < self.n_rows:
                    admitted = [queue.popleft() for _ in range(min(self.n_rows - len(live), len(queue)))]
                    new_cache, new_mask, first = self._prefill(admitted, shared, prefix)
                    cache, mask = _join(cache, mask, new_cache, new_mask)
                    live += admitted
                    keep = [self._accept(r, tok, max_new, stopped) for r, tok in zip(admitted, first, strict=True)]
                    cache, mask, live = _drop(cache, mask, live, [True] * (len(live) - len(admitted)) + keep)
                    continue
                ids = torch.tensor([[r.tokens[-1]] for r in live])
                pos = torch.tensor([[r.next_pos] for r in live])
                mask = torch.cat([mask, torch.ones(len(live), 1, dtype=mask.dtype)], dim=1)
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                 use_cache=True)
                cache = out.past_key_values
                nxt = out.logits[:, -1, :].argmax(-1).tolist()
                for r in live:
                    r.next_pos += 1
                keep = [self._accept(r, tok, max_new, stopped) for r, tok in zip(live, nxt, strict=True)]
                cache, mask, live = _drop(cache, mask, live, keep)
        return [(r.tokens, r.finished) for r in rows]

    def _prefill(self, admitted: Sequence[_Row], shared: int, prefix):
        """Decode the admitted prompts together (left-padded; after the shared prefix's copied cells when given):
        their cache, 2-D mask and first greedy token each."""
        import torch

        bodies = [r.prompt[shared:] for r in admitted]
        width = max(len(b) for b in bodies)
        ids = torch.tensor([[self.pad] * (width - len(b)) + b for b in bodies])
        body_mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in bodies])
        full_mask = torch.cat([torch.ones(len(bodies), shared, dtype=body_mask.dtype), body_mask], dim=1)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        if prefix is not None:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(bodies))
        else:
            cache = self._new_cache()
        out = self.model(input_ids=ids, attention_mask=full_mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        for r in admitted:
            r.next_pos = len(r.prompt)
        return out.past_key_values, full_mask, out.logits[:, -1, :].argmax(-1).tolist()

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _accept(self, row: _Row, token: int, max_new: int, stopped: Callable[[list[int]], bool]) -> bool:
        """Take ``token`` into ``row``; False once the row is done (EOS, stop test, or ``max_new`` tokens)."""
        if token in self.eos:
            row.finished = True
            return False
        row.tokens.append(token)
        if stopped(row.tokens):
            row.finished = True
            return False
        return len(row.tokens) < max_new


def _join(cache, mask, new_cache, new_mask):
    """Stack two caches along the batch, the shorter one padded on the left (masked cells)."""
    import torch

    if cache is None:
        return new_cache, new_mask
    width, new_width = mask.shape[1], new_mask.shape[1]
    if new_width < width:
        _pad_left(new_cache, width - new_width)
        new_mask = torch.cat([torch.zeros(new_mask.shape[0], width - new_width, dtype=mask.dtype), new_mask], dim=1)
    elif width < new_width:
        _pad_left(cache, new_width - width)
        mask = torch.cat([torch.zeros(mask.shape[0], new_width - width, dtype=mask.dtype), mask], dim=1)
    for layer, new_layer in zip(cache.layers, new_cache.layers, strict=True):
        layer.keys = torch.cat([layer.keys, new_layer.keys], dim=0)
        layer.values = torch.cat([layer.values, new_layer.values], dim=0)
    return cache, torch.cat([mask, new_mask], dim=0)


def _pad_left(cache, n: int) -> None:
    import torch

    for layer in cache.layers:
        b, h, _, d = layer.keys.shape
        layer.keys = torch.cat([layer.keys.new_zeros(b, h, n, d), layer.keys], dim=2)
        layer.values = torch.cat([layer.values.new_zeros(b, h, n, d), layer.values], dim=2)


def _drop(cache, mask, live: list[_Row], keep: list[bool]):
    """Keep the rows marked in ``keep``; then cut leading columns masked in every remaining row."""
    import torch

    if all(keep):
        return cache, mask, live
    live = [r for r, k in zip(live, keep, strict=True) if k]
    if not live:
        return None, None, []
    index = torch.tensor([i for i, k in enumerate(keep) if k])
    cache.batch_select_indices(index)
    mask = mask.index_select(0, index)
    unused = int((mask.sum(0) == 0).long().cumprod(0).sum())
    if unused >= TRIM_AT:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
        mask = mask[:, unused:]
    return cache, mask, live
