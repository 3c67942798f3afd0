"""HFChat: batched generation that stops each row on its own stop string / regex."""

from __future__ import annotations

import re
from pathlib import Path

from arte_edge.backends.base import SamplingParams
from arte_edge.backends.hf import HFChat

CONVS = [[{"role": "user", "content": "What is 2+2?"}], [{"role": "user", "content": "Name a colour."}]]


def test_stop_regex_stops_only_the_row_that_matched(tiny_model_dir: Path) -> None:
    chat = HFChat(tiny_model_dir, threads=1, batch_size=2)
    free = chat.chat_batch(CONVS, SamplingParams(max_tokens=24, temperature=1.0, seed=3))
    assert all(c.completion_tokens > 4 for c in free), "random model should not stop on its own this early"
    # A pattern the first row writes a few tokens in, and the second row never writes.
    head = free[0].text[: max(3, len(free[0].text) // 4)]
    assert head not in free[1].text
    stopped = chat.chat_batch(CONVS, SamplingParams(max_tokens=24, temperature=1.0, seed=3, stop_regex=re.escape(head)))
    assert stopped[0].finish_reason == "stop"
    assert stopped[0].completion_tokens < free[0].completion_tokens
    assert stopped[0].text.startswith(head) and free[0].text.startswith(stopped[0].text)
    assert stopped[1].text == free[1].text and stopped[1].completion_tokens == free[1].completion_tokens


def test_stop_string_is_cut_from_the_text(tiny_model_dir: Path) -> None:
    chat = HFChat(tiny_model_dir, threads=1, batch_size=1)
    free = chat.chat(CONVS[0], SamplingParams(max_tokens=24, temperature=1.0, seed=3))
    marker = free.text[len(free.text) // 3: len(free.text) // 3 + 3]
    cut = chat.chat(CONVS[0], SamplingParams(max_tokens=24, temperature=1.0, seed=3, stop=(marker,)))
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(marker)]
    assert cut.completion_tokens < free.completion_tokens
