"""Causal attention for each example of a padding-free batch, on CPU where there is no varlen flash kernel.

Padding-free training puts a batch's examples end to end in one sequence, kept apart by their position ids.
transformers' SDPA path gives that sequence a block-diagonal mask. PyTorch's CPU attention kernels compute every
block of a masked product, and with a mask they skip none of the causal upper half. A batch of four examples of
length L then costs (4L)^2 score products where four causal L x L blocks need 2L^2: eight times the work. On GPUs
flash-attention's varlen kernel does the per-example work. :func:`per_example_attention` does it on CPU. It runs
SDPA once per example with ``is_causal=True``, which is the same attention, summed in a different order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NAME = "sdpa_per_example"


def segments(position_ids) -> list[tuple[int, int]]:
    """``(start, end)`` of each packed example in a 1 x T ``position_ids`` row: a new example starts wherever the
    position does not follow on from the one before (the rule transformers uses to find packed sequences)."""
    row = position_ids[0].tolist()
    starts = [0] + [i for i in range(1, len(row)) if row[i] != row[i - 1] + 1]
    return list(zip(starts, [*starts[1:], len(row)], strict=True))


def sdpa_per_example(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     position_ids=None, **kwargs: Any):
    """transformers attention function: SDPA per packed example when the call is one packed training row without a
    cache. Any other call (generation, a padded batch) goes to transformers' own SDPA unchanged."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    packed = (position_ids is not None and query.shape[0] == 1 and position_ids.shape[0] == 1
              and query.shape[2] == key.shape[2] == position_ids.shape[1] > 1 and kwargs.get("softcap") is None)
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    parts = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout, scale=scaling, is_causal=True)
        for s, e in segments(position_ids)]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_per_example)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the block-diagonal mask, for the calls that fall back


def supports(model) -> bool:
    """Whether ``model`` attends with plain causal SDPA: no sliding window, no logit softcapping, on CPU."""
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return (getattr(config, "_attn_implementation", None) == "sdpa" and model.device.type == "cpu"
            and set(layer_types) == {"full_attention"} and not getattr(config, "sliding_window", None)
            and getattr(config, "attn_logit_softcapping", None) is None)


@contextmanager
def per_example_attention(model) -> Iterator[bool]:
    """While open, ``model`` (the transformers model, not a PEFT wrapper) attends per packed example; yields whether
    it does (False for models :func:`supports` rejects, which keep their attention)."""
    if not supports(model):
        yield False
        return
    _register()
    model.set_attn_implementation(NAME)
    try:
        yield True
    finally:
        model.set_attn_implementation("sdpa")
