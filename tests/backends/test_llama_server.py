"""A real llama.cpp server fleet (python -m llama_cpp.server) on 127.0.0.1, clean and behind the fault proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from arte_edge.backends.base import SamplingParams
from arte_edge.backends.fleet import llama_fleet, server_available
from arte_edge.backends.openai import OpenAIChat, RetryPolicy
from tests.helpers.fault_proxy import FaultPlan, FaultProxy

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(server_available() is not None, reason=str(server_available()))]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from arte_edge.export.converter import convert_to_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny.f16.gguf"
    convert_to_gguf(tiny_model_dir, out, "f16")
    return out


def convs(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"What is {i} + {2 * i}?"}] for i in range(n)]


@pytest.mark.timeout(300)
def test_fleet_through_fault_proxy_gives_clean_answers(tiny_gguf: Path, tmp_path: Path) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0)
    prompts = convs(16)
    with llama_fleet(tiny_gguf, n_servers=2, threads=1, n_ctx=256, log_dir=tmp_path) as urls:
        clean = OpenAIChat(urls, "teacher", parallel=2).chat_batch(prompts, params)
        assert all(c.ok and c.completion_tokens > 0 for c in clean), [c.error for c in clean]
        plan = FaultPlan(rates={"drop": 0.05, "429": 0.05, "500": 0.05, "truncate": 0.05, "malformed": 0.05},
                         seed=3, poison="What is 7 + 14?")
        retry = RetryPolicy(max_retries=8, timeout_s=30, backoff_base_s=0.02, backoff_max_s=0.1, max_malformed=4)
        proxies = [FaultProxy(u, plan) for u in urls]
        for p in proxies:
            p.__enter__()
        try:
            client = OpenAIChat([p.url for p in proxies], "teacher", parallel=4, retry=retry)
            faulty = client.chat_batch(prompts, params)
        finally:
            for p in proxies:
                p.__exit__()
    injected = sum(sum(p.injected.values()) for p in proxies)
    total = sum(sum(p.counts.values()) for p in proxies)
    assert injected / total >= 0.2
    # Every prompt is accounted for: the poisoned one failed with its reason, the rest equal the clean run.
    assert not faulty[7].ok and "HTTP 500" in (faulty[7].error or "")
    assert [c.text for i, c in enumerate(faulty) if i != 7] == [c.text for i, c in enumerate(clean) if i != 7]
    assert client.usage.failures == 1
