"""Fixtures for the bench tests: a tiny random-weight Llama GGUF that llama.cpp loads in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

N_EMBD, N_HEAD, N_KV_HEAD, N_FF, N_LAYER, N_CTX = 32, 2, 1, 64, 2, 128


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 32) with a byte-level SentencePiece vocabulary, written with gguf.GGUFWriter
    using llama.cpp's tensor names; every tensor is f32 so any llama.cpp build can run it."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁a", "▁b", "▁the"]
    types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
             + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * 3)
    n_vocab, head_dim = len(tokens), N_EMBD // N_HEAD
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_block_count(N_LAYER)
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_KV_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        data = np.ones(shape, np.float32) if len(shape) == 1 else rng.normal(0, 0.02, shape).astype(np.float32)
        writer.add_tensor(name, data)

    # numpy shapes are (out, in): ggml stores them reversed.
    tensor("token_embd.weight", n_vocab, N_EMBD)
    for i in range(N_LAYER):
        tensor(f"blk.{i}.attn_norm.weight", N_EMBD)
        tensor(f"blk.{i}.attn_q.weight", N_HEAD * head_dim, N_EMBD)
        tensor(f"blk.{i}.attn_k.weight", N_KV_HEAD * head_dim, N_EMBD)
        tensor(f"blk.{i}.attn_v.weight", N_KV_HEAD * head_dim, N_EMBD)
        tensor(f"blk.{i}.attn_output.weight", N_EMBD, N_HEAD * head_dim)
        tensor(f"blk.{i}.ffn_norm.weight", N_EMBD)
        tensor(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    tensor("output_norm.weight", N_EMBD)
    tensor("output.weight", n_vocab, N_EMBD)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama GGUF (about 100 KB) that llama.cpp loads and runs."""
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf")
