"""A deterministic teacher behind a real OpenAI-compatible HTTP server on 127.0.0.1, for pipeline tests.

It answers arithmetic questions of the test task correctly (with a short rationale) except for a fixed
subset it gets wrong, so checker rejection paths run too; asked to draft a new question, it writes one
determined by the request's sampling seed. ``delay_s`` slows it so tests can kill a run
mid-stage.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

QUESTION = re.compile(r"What is (\d+) ([+*-]) (\d+)\?")


def oracle_answer(text: str) -> str:
    """A rationale and answer line; wrong for about one question in five (by a stable hash)."""
    m = QUESTION.search(text)
    if not m:
        return "I am not sure.\nAnswer: 0"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    wrong = int(hashlib.sha256(m.group(0).encode()).hexdigest(), 16) % 5 == 0
    return f"We compute {a} {op} {b} step by step.\nAnswer: {value + 1 if wrong else value}"


def oracle_draft(seed: int) -> str:
    """A new arithmetic question with its key, different for each sampling seed (ARTE/standard drafting)."""
    a, b = 10 + seed % 37, 3 + (seed // 37) % 29
    return f"Question: What is {a} + {b}?\nAnswer: {a + b}"


def serve(delay_s: float = 0.0) -> tuple[ThreadingHTTPServer, str]:
    """Start the server on a free loopback port; returns it and its base URL (…/v1)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(delay_s)
            prompt = body["messages"][-1]["content"]
            text = (oracle_draft(int(body.get("seed") or 0)) if "Write ONE new question" in prompt
                    else oracle_answer(prompt))
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 20, "completion_tokens": 12}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


if __name__ == "__main__":  # standalone: python -m tests.helpers.oracle_teacher
    srv, url = serve(float(__import__("sys").argv[1]) if len(__import__("sys").argv) > 1 else 0.0)
    print(url, flush=True)
    srv.serve_forever()
