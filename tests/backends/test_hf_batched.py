"""TorchBatchedDecoder: continuous batching gives the tokens one-at-a-time greedy decoding gives."""

from __future__ import annotations

from pathlib import Path

import pytest

import arte_edge.backends.hf_batched as hb
from arte_edge.backends.base import SamplingParams
from arte_edge.backends.hf import HFChat


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's config and tokenizer with large random weights: its greedy tokens depend on the whole
    context (at the usual 0.02 init, attention barely moves the argmax and a misplaced cache goes unnoticed)."""
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("sharp_model")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.5
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
    for item in tiny_model_dir.iterdir():
        if not (out / item.name).exists():
            shutil.copy2(item, out / item.name)
    return out


def _stop_by_first_token(tokens: list[int]) -> bool:
    """A data-dependent stop, so rows finish at different steps and queued ones join mid-batch."""
    return len(tokens) >= 2 + tokens[0] % 11


def _one_at_a_time(model, prompt: list[int], max_new: int, eos: int) -> tuple[list[int], bool]:
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos)[0, len(prompt):].tolist()
    tokens: list[int] = []
    for tok in out:
        if tok == eos:
            return tokens, True
        tokens.append(tok)
        if _stop_by_first_token(tokens):
            return tokens, True
    return tokens, False


def _prompts(head: list[int]) -> list[list[int]]:
    return [head + [(37 * i + 11 * k) % 900 + 50 for k in range(3 + 4 * i % 13)] for i in range(9)]


@pytest.mark.parametrize("shared_head", [0, 20])
@pytest.mark.parametrize("trim_at", [hb.TRIM_AT, 1])
def test_continuous_batching_equals_one_at_a_time(sharp_model_dir: Path, shared_head: int, trim_at: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    chat = HFChat(sharp_model_dir, threads=1, batch_size=3)
    eos = chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
    monkeypatch.setattr(hb, "TRIM_AT", trim_at)
    prompts = _prompts([(13 * k) % 700 + 40 for k in range(shared_head)])
    decoder = hb.TorchBatchedDecoder(chat.model, n_rows=3, eos_ids=[eos], pad_id=chat.tokenizer.pad_token_id)
    got = decoder.generate(prompts, 10, _stop_by_first_token, shared=shared_head)
    want = [_one_at_a_time(chat.model, p, 10, eos) for p in prompts]
    assert got == want
    lengths = {len(tokens) for tokens, _ in got}
    assert len(lengths) > 2, "rows should finish at different steps, or the test does not exercise joining"


def test_greedy_chat_batch_equals_chat_and_sampling_keeps_generate(sharp_model_dir: Path) -> None:
    system = {"role": "system", "content": "You answer science questions with one letter. " * 3}
    convs = [[system, {"role": "user", "content": f"Question {i}: " + "why? " * i}] for i in range(5)]
    chat = HFChat(sharp_model_dir, threads=1, batch_size=2)
    params = SamplingParams(max_tokens=10, temperature=0.0, stop_regex=r"[aeiou]{2}")
    batched = chat.chat_batch(convs, params)
    single = [chat.chat(c, params) for c in convs]
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in batched] == \
        [(c.text, c.completion_tokens, c.finish_reason) for c in single]
    assert {c.finish_reason for c in batched} <= {"stop", "length"}
    chat.continuous = False
    assert [c.text for c in chat.chat_batch(convs, params)] == [c.text for c in batched]


def test_models_generate_would_decode_differently_keep_generate(sharp_model_dir: Path) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    chat = HFChat(sharp_model_dir, threads=1, batch_size=2)
    assert chat.continuous and hb.supports_model(chat.model)
    chat.model.generation_config.repetition_penalty = 1.1  # generate's greedy choice is no longer a plain argmax
    assert not hb.supports_model(chat.model)
    sliding = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                                               sliding_window=4))
    assert not hb.supports_model(sliding), "sliding-window layers count positions, so padded rows would shift them"


def test_rows_ended_by_eos_count_the_same_both_ways_when_pad_is_not_eos(sharp_model_dir: Path) -> None:
    """completion_tokens and finish_reason agree between continuous batching and generate (pad ≠ eos, as in Qwen)."""
    convs = [[{"role": "user", "content": f"Item {i}: " + "tell me more. " * i}] for i in range(6)]
    chat = HFChat(sharp_model_dir, threads=1, batch_size=3)
    free = chat.chat_batch(convs, SamplingParams(max_tokens=12, temperature=0.0))
    ids = chat.tokenizer([c.text for c in free], add_special_tokens=False)["input_ids"]
    frequent = max({t for row in ids for t in row[2:]}, key=lambda t: sum(row.count(t) for row in ids))
    chat.model.generation_config.eos_token_id = [chat.tokenizer.eos_token_id, frequent]  # rows now end early
    chat.tokenizer.pad_token = "<|endoftext|>"
    assert chat.tokenizer.pad_token_id not in chat._eos_ids()
    params = SamplingParams(max_tokens=12, temperature=0.0)
    batched = chat.chat_batch(convs, params)
    single = [chat.chat(c, params) for c in convs]
    key = [(c.text, c.completion_tokens, c.finish_reason) for c in batched]
    assert key == [(c.text, c.completion_tokens, c.finish_reason) for c in single]
    assert any(c.finish_reason == "stop" and c.completion_tokens < 12 for c in batched)
