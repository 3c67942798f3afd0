"""The llama.cpp chat backend: batched decoding with a shared prompt prefix, against the one-at-a-time path."""

from __future__ import annotations

from pathlib import Path

import pytest

from arte_edge.backends.base import SamplingParams
from arte_edge.backends.llamacpp_batched import shared_prefix_len


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
    from arte_edge.backends.llamacpp import LlamaCppChat
    from arte_edge.backends.llamacpp_batched import BatchedDecoder

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


def test_continuous_batching_refills_slots_and_matches_batch_one(tiny_gguf: Path) -> None:
    from arte_edge.backends.llamacpp import LlamaCppChat
    from arte_edge.methods.common import teacher_window

    system = {"role": "system", "content": "Answer with a number, then stop. " * 4}
    conversations = [[system, {"role": "user", "content": f"How many legs do {n} spiders have? " * (1 + n % 3)}]
                     for n in range(11)]
    params = SamplingParams(max_tokens=12, temperature=0.0)
    model = LlamaCppChat(tiny_gguf, threads=1, n_ctx=512, batch_size=3)
    try:
        assert teacher_window(model) == model.window == 12  # a call keeps 3 slots busy with 4 conversations each
        one_by_one = [model.chat(c, params) for c in conversations]
        together = model.chat_batch(conversations, params)  # 11 conversations through 3 slots
        again = model.chat_batch(conversations, params)
    finally:
        model.close()
    assert [c.text for c in together] == [c.text for c in one_by_one]
    assert [c.text for c in again] == [c.text for c in together]  # the schedule is deterministic
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in one_by_one]
    # the prefix is decoded once for the whole call, not once per slot or per refill
    processed = [c.meta["prompt_tokens_processed"] for c in together]
    assert processed[0] == together[0].prompt_tokens
    assert all(p < c.prompt_tokens for p, c in zip(processed[1:], together[1:], strict=True))
    assert all(c.seconds > 0 for c in together)


def test_follow_up_turns_continue_in_their_slot_and_match_a_fresh_prompt(tiny_gguf: Path) -> None:
    from arte_edge.backends.llamacpp import LlamaCppChat
    from arte_edge.methods.common import chat_then

    system = {"role": "system", "content": "Answer with a number, then stop. " * 4}
    conversations = [[system, {"role": "user", "content": f"How many legs do {n} cats have? " * (1 + n % 2)}]
                     for n in range(7)]
    params, again = SamplingParams(max_tokens=10, temperature=0.0), SamplingParams(max_tokens=6, temperature=0.0)

    def followup(i: int, first) -> list[dict[str, str]] | None:  # every other conversation gets a second turn
        if i % 2:
            return None
        return [*conversations[i], {"role": "assistant", "content": first.text},
                {"role": "user", "content": "Only the number, please."}]

    model = LlamaCppChat(tiny_gguf, threads=1, n_ctx=512, batch_size=3)
    try:
        in_place = chat_then(model, conversations, params, followup, again)
        firsts = [model.chat(c, params) for c in conversations]
        fresh = {i: model.chat(conv, again) for i, first in enumerate(firsts)
                 if (conv := followup(i, first)) is not None}
    finally:
        model.close()
    assert [first.text for first, _ in in_place] == [c.text for c in firsts]
    assert {i: nxt.text for i, (_, nxt) in enumerate(in_place) if nxt is not None} == {
        i: c.text for i, c in fresh.items()}  # greedy: the kept cells give what a fresh prompt gives (f16, 1 thread)
    assert [i for i, (_, nxt) in enumerate(in_place) if nxt is not None] == [0, 2, 4, 6]
    for i, (first, nxt) in enumerate(in_place):
        if nxt is None:
            continue
        # only the new turn's tokens (plus the answer's last token) were processed, not the conversation again
        assert nxt.prompt_tokens == fresh[i].prompt_tokens
        assert 0 < nxt.meta["prompt_tokens_processed"] < nxt.prompt_tokens - first.prompt_tokens + 2
