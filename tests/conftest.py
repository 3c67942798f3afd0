"""Shared pytest fixtures: a tiny random-weight model with the real (repaired) SmolLM2 tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
SMOLLM2_TOKENIZER_DIR = DATA_DIR / "smollm2-tokenizer"


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir() -> Path:
    """The committed SmolLM2 tokenizer (rebuilt from the GGUF, verified against llama.cpp)."""
    return SMOLLM2_TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF folder with a random-weight 2-layer Llama (hidden 64) and the SmolLM2 tokenizer.

    Safetensors weights, the tokenizer files (ChatML template, eos ``<|im_end|>``, no BOS added) and a
    generation_config whose eos is ``<|im_end|>``. Builds in a few seconds with no download.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_model")
    tokenizer = AutoTokenizer.from_pretrained(str(SMOLLM2_TOKENIZER_DIR))
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(str(out), safe_serialization=True)
    for item in SMOLLM2_TOKENIZER_DIR.iterdir():
        shutil.copy2(item, out / item.name)
    return out
