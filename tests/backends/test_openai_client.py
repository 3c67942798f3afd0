"""OpenAIChat against real loopback HTTP servers: retries, malformed re-asks, cost, load spreading, URL health."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from arte_edge.backends.base import SamplingParams
from arte_edge.backends.openai import OpenAIChat, Price, RetryPolicy
from tests.helpers.fault_proxy import FaultPlan, FaultProxy
from tests.helpers.oracle_teacher import serve

FAST = RetryPolicy(max_retries=8, timeout_s=1.0, backoff_base_s=0.01, backoff_max_s=0.05, max_malformed=8)
# (8 re-asks: at a 35 % fault rate a request fails 9 times in a row with p = 8e-5; with 3 one of 12 did so now
# and then, depending on which thread drew which fault)
PARAMS = SamplingParams(max_tokens=16)


def ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is {i} + 1?"}]


@pytest.fixture()
def oracle():
    server, url = serve()
    yield url
    server.shutdown()


class _Counting:
    """A slow loopback chat server recording how many requests it held at once."""

    def __init__(self, delay_s: float = 0.05):
        self.active = self.peak = self.total = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.active += 1
                    outer.total += 1
                    outer.peak = max(outer.peak, outer.active)
                time.sleep(delay_s)
                with outer.lock:
                    outer.active -= 1
                body = json.dumps({"choices": [{"message": {"content": "Answer: 1"}, "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 1000, "completion_tokens": 500}}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens here: connection refused


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["drop", "delay", "429", "500", "truncate", "malformed"])
def test_each_fault_kind_is_retried_to_success(oracle: str, kind: str) -> None:
    plan = FaultPlan(rates={kind: 0.35}, seed=1, delay_s=1.5)
    with FaultProxy(oracle, plan) as proxy:
        client = OpenAIChat(proxy.url, "oracle", parallel=4, retry=FAST)
        out = client.chat_batch([ask(i) for i in range(12)], PARAMS)
        client.close()
    assert proxy.injected.get(kind, 0) >= 3
    assert all(c.ok for c in out), [c.error for c in out if not c.ok]
    assert [c.text.splitlines()[-1] for c in out] == [f"Answer: {i + 1}" for i in range(12)] or all(
        "Answer:" in c.text for c in out)
    usage = client.usage.as_dict()
    assert usage["failures"] == 0 and usage["retries"] >= proxy.injected[kind]
    if kind == "malformed":
        assert usage["malformed"] == proxy.injected[kind]


@pytest.mark.timeout(30)
def test_malformed_forever_is_a_bounded_recorded_failure(oracle: str) -> None:
    with FaultProxy(oracle, FaultPlan(rates={"malformed": 1.0})) as proxy:
        client = OpenAIChat(proxy.url, "oracle", parallel=1, retry=FAST)
        out = client.chat(ask(1), PARAMS)
    assert not out.ok and "malformed" in (out.error or "")
    assert proxy.injected["malformed"] == FAST.max_malformed + 1  # first ask + bounded re-asks
    assert client.usage.failures == 1


@pytest.mark.timeout(30)
def test_retry_after_is_honoured(oracle: str) -> None:
    plan = FaultPlan(rates={"429": 1.0}, retry_after_s=0.3)
    with FaultProxy(oracle, plan):
        pass
    with FaultProxy(oracle, plan) as proxy:
        client = OpenAIChat(proxy.url, "oracle", parallel=1,
                            retry=RetryPolicy(max_retries=2, timeout_s=1.0, backoff_base_s=0.0, backoff_max_s=0.0))
        start = time.perf_counter()
        out = client.chat(ask(1), PARAMS)
        elapsed = time.perf_counter() - start
    assert not out.ok and "HTTP 429" in (out.error or "")
    assert elapsed >= 0.6  # two waits of Retry-After 0.3 s, although the backoff itself is 0


@pytest.mark.timeout(30)
def test_client_errors_are_not_retried() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(400)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = OpenAIChat(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", retry=FAST)
    out = client.chat(ask(1), PARAMS)
    server.shutdown()
    assert not out.ok and "HTTP 400" in (out.error or "") and client.usage.requests == 1


@pytest.mark.timeout(30)
def test_tokens_and_cost_are_accounted() -> None:
    server = _Counting(delay_s=0.0)
    client = OpenAIChat(server.url, "m", parallel=2, price=Price(prompt_per_m=2.0, completion_per_m=10.0))
    out = client.chat_batch([ask(i) for i in range(4)], PARAMS)
    server.close()
    assert all(c.meta["cost_usd"] == pytest.approx(0.007) for c in out)  # 1000*2e-6 + 500*1e-5
    usage = client.usage.as_dict()
    assert usage["prompt_tokens"] == 4000 and usage["completion_tokens"] == 2000
    assert usage["cost_usd"] == pytest.approx(0.028)


@pytest.mark.timeout(30)
def test_load_is_spread_and_capped_per_url() -> None:
    servers = [_Counting(delay_s=0.05) for _ in range(3)]
    client = OpenAIChat([s.url for s in servers], "m", parallel=6, max_inflight_per_url=2, retry=FAST)
    out = client.chat_batch([ask(i) for i in range(30)], PARAMS)
    for s in servers:
        s.close()
    assert all(c.ok for c in out)
    assert [s.total for s in servers] == [10, 10, 10] or min(s.total for s in servers) >= 7
    assert max(s.peak for s in servers) <= 2


@pytest.mark.timeout(30)
def test_dead_url_rests_and_work_moves_to_healthy_ones() -> None:
    good = _Counting(delay_s=0.0)
    retry = RetryPolicy(max_retries=4, timeout_s=1.0, backoff_base_s=0.01, backoff_max_s=0.02,
                        url_failure_threshold=2, url_cooldown_s=30.0)
    client = OpenAIChat([_dead_url(), good.url], "m", parallel=1, retry=retry)
    out = [client.chat(ask(i), PARAMS) for i in range(20)]
    good.close()
    assert all(c.ok for c in out)
    dead = client.health()[0]
    assert dead["resting"] and dead["failed"] == 2  # two strikes, then no more traffic for the cool-down
    assert client.health()[1]["ok"] == 20
