"""A fault-injecting HTTP proxy on 127.0.0.1 between an OpenAI-compatible client and a server.

Each POST is forwarded to the upstream unless the (seeded) plan injects a fault instead:
- ``drop``: close the connection without a response;
- ``delay``: sleep ``delay_s`` (longer than the client's timeout) before forwarding;
- ``429``: Too Many Requests with ``Retry-After``; ``500``: Internal Server Error;
- ``truncate``: forward, but cut the connection halfway through the body (Content-Length promises more);
- ``malformed``: a complete 200 response whose JSON body is cut in half.
Prompts containing ``poison`` always get a 500, so the client's give-up path runs deterministically.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULT_KINDS = ("drop", "delay", "429", "500", "truncate", "malformed")


@dataclass
class FaultPlan:
    """Probability of each fault kind per request (the rest are forwarded untouched)."""

    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    delay_s: float = 1.5
    retry_after_s: float = 0.05
    poison: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(FAULT_KINDS)
        if unknown or sum(self.rates.values()) > 1:
            raise ValueError(f"bad fault rates {self.rates}")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self) -> str | None:
        """The fault for the next request, or None to forward it."""
        with self._lock:
            x = self._rng.random()
        for kind, rate in self.rates.items():
            if x < rate:
                return kind
            x -= rate
        return None


class FaultProxy:
    """Run with ``with FaultProxy(upstream, plan) as proxy: proxy.url``; ``proxy.counts`` tallies outcomes."""

    def __init__(self, upstream: str, plan: FaultPlan):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/")  # e.g. /v1
        self.plan = plan
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{self.prefix}"

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                status, headers, body = proxy.forward("GET", self.path, b"")
                self._send(status, body, headers)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                poisoned = proxy.plan.poison is not None and proxy.plan.poison.encode() in body
                fault = "500" if poisoned else proxy.plan.draw()
                proxy._count(("poison-" if poisoned else "") + (fault or "forwarded"))
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault in ("429", "500"):
                    extra = {"Retry-After": str(proxy.plan.retry_after_s)} if fault == "429" else {}
                    self._send(int(fault), b'{"error": "injected"}', extra)
                    return
                if fault == "delay":
                    time.sleep(proxy.plan.delay_s)
                status, _, payload = proxy.forward("POST", self.path, body)
                if fault == "truncate":
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(status, payload[: len(payload) // 2] if fault == "malformed" else payload)

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        return Handler

    def forward(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send one request upstream; a dead upstream becomes a 502."""
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=600)
        try:
            conn.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, {}, resp.read()
        except OSError as exc:
            return 502, {}, f'{{"error": "upstream: {exc}"}}'.encode()
        finally:
            conn.close()

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def injected(self) -> dict[str, int]:
        """Injected faults by kind (poisoned requests included as ``poison-500``)."""
        return {k: v for k, v in self.counts.items() if k != "forwarded"}
