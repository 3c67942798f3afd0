"""OpenAI-compatible chat servers (vLLM, llama.cpp server, Ollama, OpenAI) with retries and a server fleet.

Requests are spread round-robin over one or more base URLs, run with bounded concurrency, retried with
exponential backoff and jitter on timeouts, connection errors, 429 and 5xx (``Retry-After`` honoured), and a
request that still fails is returned as a ``Completion`` with ``error`` set: never an exception that ends a run.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from arte_edge.backends.base import Completion, Message, SamplingParams

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one request."""

    max_retries: int = 5
    timeout_s: float = 120.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0


@dataclass
class Usage:
    """Token and request accounting across the client's life (thread-safe)."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **deltas: int) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("requests", "retries", "failures", "prompt_tokens",
                                                "completion_tokens")}


class OpenAIChat:
    """Chat completions against one or more OpenAI-compatible servers."""

    def __init__(self, base_urls: str | Sequence[str], model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 parallel: int = 4, retry: RetryPolicy | None = None, name: str | None = None):
        import httpx

        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self.base_urls = [u.rstrip("/") for u in urls]
        self.model = model
        self.name = name or model
        self.parallel = parallel
        self.retry = retry or RetryPolicy()
        self.usage = Usage()
        key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(headers=headers, timeout=self.retry.timeout_s,
                                    limits=httpx.Limits(max_connections=parallel * 2))
        self._next_url = itertools.cycle(self.base_urls)
        self._url_lock = threading.Lock()

    def _pick_url(self) -> str:
        with self._url_lock:
            return next(self._next_url)

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        body = {"model": self.model, "messages": list(messages), "max_tokens": params.max_tokens,
                "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed}
        if params.stop:
            body["stop"] = list(params.stop)
        start = time.perf_counter()
        last_error = "no attempt"
        for attempt in range(self.retry.max_retries + 1):
            if attempt:
                self.usage.add(retries=1)
            self.usage.add(requests=1)
            result, last_error, wait = self._attempt(body)
            if result is not None:
                return _completion_from(result, time.perf_counter() - start)
            if wait is None:
                break
            time.sleep(wait if wait > 0 else self._backoff(attempt))
        self.usage.add(failures=1)
        return Completion("", 0, 0, "error", time.perf_counter() - start, error=last_error)

    def _attempt(self, body: dict) -> tuple[dict | None, str, float | None]:
        """One request: (json, "", None) on success; (None, error, wait) where wait None = do not retry."""
        import httpx

        url = f"{self._pick_url()}/chat/completions"
        try:
            resp = self._client.post(url, json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300], 0.0
        if resp.status_code in RETRY_STATUS:
            return None, f"HTTP {resp.status_code} from {url}", _retry_after(resp)
        if resp.status_code >= 400:
            return None, f"HTTP {resp.status_code} from {url}: {resp.text[:200]}", None
        try:
            data = resp.json()
            data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None, f"malformed response from {url}: {resp.text[:120]!r}", 0.0
        usage = data.get("usage") or {}
        self.usage.add(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                       completion_tokens=int(usage.get("completion_tokens") or 0))
        return data, "", None

    def _backoff(self, attempt: int) -> float:
        cap = min(self.retry.backoff_max_s, self.retry.backoff_base_s * 2 ** attempt)
        return random.uniform(0, cap)  # full jitter

    def chat_batch(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            return list(pool.map(lambda c: self.chat(c, params), conversations))

    def close(self) -> None:
        self._client.close()


def _retry_after(resp) -> float:
    value = resp.headers.get("retry-after")
    try:
        return min(60.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def _completion_from(data: dict, seconds: float) -> Completion:
    choice = data["choices"][0]
    usage = data.get("usage") or {}
    return Completion(
        text=choice["message"].get("content") or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choice.get("finish_reason") or "stop",
        seconds=seconds,
    )
