"""OpenAI-compatible chat servers (vLLM, llama.cpp server, Ollama, OpenAI) with retries and a server fleet.

Requests are spread over one or more base URLs (least in-flight first, round-robin on ties, at most
``max_inflight_per_url`` each; a URL that keeps failing sits out a cool-down), run with bounded
concurrency, and retried with exponential backoff and full jitter on timeouts, connection errors, 429 and
5xx (``Retry-After`` honoured). A body that is not valid JSON or has no ``choices[0].message`` is
*malformed*: it is re-asked up to ``max_malformed`` times. A request that still fails comes back as a
``Completion`` with ``error`` set: never an exception that ends a run.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from arte_edge.backends.base import Completion, Message, SamplingParams

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one request, and when to rest a failing server."""

    max_retries: int = 5
    timeout_s: float = 120.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    max_malformed: int = 2  # re-asks after a malformed body (separate from transport retries)
    url_failure_threshold: int = 3  # consecutive failures before a URL sits out
    url_cooldown_s: float = 10.0


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens; zero means "not priced" (local servers)."""

    prompt_per_m: float = 0.0
    completion_per_m: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of one request."""
        return (prompt_tokens * self.prompt_per_m + completion_tokens * self.completion_per_m) / 1e6


@dataclass
class Usage:
    """Token and request accounting across the client's life (thread-safe)."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    malformed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **deltas: float) -> None:
        """Add ``deltas`` to the named counters atomically."""
        with self._lock:
            for key, value in deltas.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, float]:
        """The counters as a plain dict (cost rounded to 1e-6 USD)."""
        out: dict[str, float] = {k: getattr(self, k) for k in ("requests", "retries", "failures", "malformed",
                                                                "prompt_tokens", "completion_tokens")}
        out["cost_usd"] = round(self.cost_usd, 6)
        return out


@dataclass
class _Endpoint:
    """One base URL: how busy it is and whether it is resting after repeated failures."""

    url: str
    slots: threading.Semaphore
    in_flight: int = 0
    consecutive_failures: int = 0
    down_until: float = 0.0
    stats: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})


class OpenAIChat:
    """Chat completions against one or more OpenAI-compatible servers."""

    def __init__(self, base_urls: str | Sequence[str], model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 parallel: int = 4, retry: RetryPolicy | None = None, name: str | None = None,
                 price: Price | None = None, max_inflight_per_url: int | None = None,
                 reask_on_length: bool = False):
        import httpx

        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("OpenAIChat needs at least one base URL")
        self.model = model
        self.name = name or model
        self.parallel = parallel
        self.retry = retry or RetryPolicy()
        self.price = price or Price()
        self.reask_on_length = reask_on_length
        self.usage = Usage()
        per_url = max_inflight_per_url or parallel
        self.endpoints = [_Endpoint(u.rstrip("/"), threading.Semaphore(per_url)) for u in urls]
        self.base_urls = [e.url for e in self.endpoints]
        key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(headers=headers, timeout=self.retry.timeout_s,
                                    limits=httpx.Limits(max_connections=max(parallel, per_url) * 2))
        self._lock = threading.Lock()
        self._turn = 0

    # -- URL choice and health ---------------------------------------------------------------------
    def _pick(self) -> _Endpoint:
        """The healthy endpoint with the fewest requests in flight (round-robin on ties)."""
        now = time.monotonic()
        with self._lock:
            self._turn += 1
            n = len(self.endpoints)
            order = [self.endpoints[(self._turn + i) % n] for i in range(n)]
            healthy = [e for e in order if e.down_until <= now]
            # All resting: use the one that comes back first rather than stall the run.
            pool = healthy or [min(order, key=lambda e: e.down_until)]
            chosen = min(pool, key=lambda e: e.in_flight)
            chosen.in_flight += 1
        return chosen

    def _release(self, endpoint: _Endpoint, ok: bool) -> None:
        with self._lock:
            endpoint.in_flight -= 1
            endpoint.stats["ok" if ok else "failed"] += 1
            if ok:
                endpoint.consecutive_failures = 0
                return
            endpoint.consecutive_failures += 1
            if endpoint.consecutive_failures >= self.retry.url_failure_threshold and len(self.endpoints) > 1:
                endpoint.down_until = time.monotonic() + self.retry.url_cooldown_s
                endpoint.consecutive_failures = 0

    def health(self) -> list[dict[str, object]]:
        """Per-URL counters: successes, failures, whether it is resting now."""
        now = time.monotonic()
        with self._lock:
            return [{"url": e.url, **e.stats, "resting": e.down_until > now} for e in self.endpoints]

    # -- requests ----------------------------------------------------------------------------------
    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        """Answer one conversation; failures come back as ``Completion.error``, never as exceptions."""
        body: dict[str, object] = {"model": self.model, "messages": list(messages), "max_tokens": params.max_tokens,
                                   "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed}
        if params.stop:
            body["stop"] = list(params.stop)
        start = time.perf_counter()
        last_error, retries, malformed = "no attempt", 0, 0
        while True:
            self.usage.add(requests=1)
            result, last_error, wait, bad_body = self._attempt(body)
            if result is not None and self.reask_on_length and result["choices"][0].get("finish_reason") == "length":
                result, last_error, wait, bad_body = None, "truncated answer (finish_reason=length)", 0.0, True
            if result is not None:
                return self._completion(result, time.perf_counter() - start, retries + malformed)
            if bad_body:
                malformed += 1
                self.usage.add(malformed=1)
                if malformed > self.retry.max_malformed:
                    break
            else:
                if wait is None or retries >= self.retry.max_retries:
                    break
                time.sleep(wait if wait > 0 else self._backoff(retries))
                retries += 1
            self.usage.add(retries=1)
        self.usage.add(failures=1)
        return Completion("", 0, 0, "error", time.perf_counter() - start, error=last_error,
                          meta={"attempts": retries + malformed + 1})

    def _attempt(self, body: dict) -> tuple[dict | None, str, float | None, bool]:
        """One request: (json, "", None, False) on success, else (None, error, wait, malformed) where
        ``wait`` None means "do not retry"."""
        import httpx

        endpoint = self._pick()
        url = f"{endpoint.url}/chat/completions"
        ok = False
        try:
            with endpoint.slots:
                try:
                    resp = self._client.post(url, json=body)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    return None, f"{type(exc).__name__} from {url}: {exc}"[:300], 0.0, False
            if resp.status_code in RETRY_STATUS:
                return None, f"HTTP {resp.status_code} from {url}", _retry_after(resp), False
            if resp.status_code >= 400:
                ok = True  # the server is up; the request itself is wrong
                return None, f"HTTP {resp.status_code} from {url}: {resp.text[:200]}", None, False
            data = _parse_body(resp)
            if data is None:
                return None, f"malformed response from {url}: {resp.text[:120]!r}", 0.0, True
            ok = True
            return data, "", None, False
        finally:
            self._release(endpoint, ok)

    def _completion(self, data: dict, seconds: float, retries: int) -> Completion:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        cost = self.price.cost(prompt, completion)
        self.usage.add(prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost)
        return Completion(text=choice["message"].get("content") or "", prompt_tokens=prompt,
                          completion_tokens=completion, finish_reason=choice.get("finish_reason") or "stop",
                          seconds=seconds, meta={"attempts": retries + 1, "cost_usd": cost})

    def _backoff(self, attempt: int) -> float:
        cap = min(self.retry.backoff_max_s, self.retry.backoff_base_s * 2 ** attempt)
        return random.uniform(0, cap)  # full jitter

    def chat_batch(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        """Answer several conversations concurrently (at most ``parallel`` in flight); order preserved.

        Conversation i is sent with seed ``params.seed + i``, so identical prompts still get different samples.
        """
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            return list(pool.map(lambda ic: self.chat(ic[1], replace(params, seed=params.seed + ic[0])),
                                 enumerate(conversations)))

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


def _parse_body(resp) -> dict | None:
    """The JSON body when it is a usable chat completion, else None (malformed or truncated)."""
    try:
        data = resp.json()
        message = data["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("content") or "", str):
        return None
    return data


def _retry_after(resp) -> float:
    value = resp.headers.get("retry-after")
    try:
        return min(60.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0
