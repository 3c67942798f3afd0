"""The llama.cpp chat backend: batched decoding with a shared prompt prefix, against the one-at-a-time path."""

from __future__ import annotations

from pathlib import Path

import pytest

from arte_edge.backends.base import SamplingParams
from arte_edge.backends.llamacpp import shared_prefix_len


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from arte_edge.export.converter import convert_to_gguf

    return convert_to_gguf(tiny_model_dir, tmp_path_factory.mktemp("llamacpp-gguf") / "tiny.f16.gguf")


def test_shared_prefix_len_leaves_each_prompt_a_token_of_its_own() -> None:
    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7]]) == 2
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts: the last token is each one's own
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3, 4, 5]]) == 2
    assert shared_prefix_len([[5, 1], [6, 1]]) == 0
    assert shared_prefix_len([]) == 0


def test_batched_decoding_with_a_shared_prefix_matches_batch_one(tiny_gguf: Path) -> None:
    from arte_edge.backends.llamacpp import BatchedDecoder, LlamaCppChat

    system = {"role": "system", "content": "Answer the question. Think step by step and end with 'Answer: N'. " * 3}
    demo = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4.\nAnswer: 4"}]
    conversations = [[system, *demo, {"role": "user", "content": f"What is {a} + {b}?"}]
                     for a, b in [(3, 4), (10, 7), (25, 25), (1, 99), (6, 6)]]
    params = SamplingParams(max_tokens=16, temperature=0.0)
    model = LlamaCppChat(tiny_gguf, threads=1, n_ctx=512, batch_size=4)
    try:
        one_by_one = [model.chat(c, params) for c in conversations]
        shared = model.chat_batch(conversations, params)
        whole = BatchedDecoder(model.llm, n_seq=4, n_ctx_per_seq=512, threads=1, share_prefix=False)
        try:
            unshared = whole.generate(conversations[:4], params) + whole.generate(conversations[4:], params)
        finally:
            whole.close()
    finally:
        model.close()
    # Greedy text is the same whichever way the prompt's KV cells were made (f16 tiny model, 1 thread).
    assert [c.text for c in shared] == [c.text for c in one_by_one] == [c.text for c in unshared]
    assert all(c.meta["batched"] for c in shared)
    # The common prefix is decoded once per window: the first sequence pays for it, the others only their suffix.
    first, rest = shared[0].meta["prompt_tokens_processed"], [c.meta["prompt_tokens_processed"] for c in shared[1:4]]
    assert first == shared[0].prompt_tokens and all(0 < r < shared[0].prompt_tokens / 2 for r in rest)
    assert [c.meta["prompt_tokens_processed"] for c in unshared] == [c.prompt_tokens for c in unshared]
    assert sum(c.meta["prompt_tokens_processed"] for c in shared) < 0.5 * sum(c.prompt_tokens for c in shared)
