"""Do our GGUFs work in an unmodified llama.cpp? ``llama-server`` built from the same sdist, on 127.0.0.1.

    .venv/bin/python benchmarks/llama_cpp_compat.py GGUF... --hf MERGED_HF_DIR [--max-tokens 200]

``llama-server`` is built once from the llama-cpp-python sdist that the runtime was compiled from (same
llama.cpp commit; cached beside llama-bench in ``<arte-edge cache>/tools/``). For each GGUF the script starts
the server on a free loopback port and checks, against the merged HF folder the GGUF was exported from:

- ``/props``: the chat template is the HF tokenizer's, byte for byte;
- ``/tokenize``: fixed strings tokenize to the HF tokenizer's ids (special tokens parsed);
- ``/v1/chat/completions`` (greedy) on fixed questions: the reply ends because the model emitted its EOS
  (``finish_reason == "stop"`` before ``--max-tokens``), carries no chat-template markers, and is the same
  text that llama-cpp-python (the product's runtime) gives for the same GGUF and messages (server started
  with ``-fa off`` as llama-cpp-python runs; with flash attention on, near-tie greedy tokens can differ).

Prints a table and writes ``benchmarks/results/llama_cpp_compat.json``; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_bench_compare import CMAKE_FLAGS, _sdist_source, log, tools_dir

RESULTS = Path(__file__).resolve().parent / "results" / "llama_cpp_compat.json"
SERVER_FLAGS = [f for f in CMAKE_FLAGS if not f.startswith("-DLLAMA_BUILD_SERVER")] + ["-DLLAMA_BUILD_SERVER=ON"]
TOKENIZE_STRINGS = ["Hello world", " 12345 + 678 = 13023", "def f(x):\n    return x*2\n",
                    "<|im_start|>user\nWhich planet is red?<|im_end|>\n", "naïve café — ünïcode ✓"]
QUESTIONS = ["Which gas do plants take in from the air to make food? Answer in one sentence.",
             "What is 12 + 30? Reply with the number only.",
             "Name one planet in the solar system."]


def llama_server_binary(jobs: int = 2) -> Path:
    """The cached ``llama-server`` of the runtime's llama.cpp commit, built on first use (minutes).

    Built in llama-bench's build tree (same flags, ``LLAMA_BUILD_SERVER`` switched on), so ggml and libllama
    are compiled once for both tools.
    """
    from llama_bench_compare import LLAMA_CPP_PYTHON

    root = tools_dir()
    build = root / "build"
    binary = build / "bin" / "llama-server"
    if binary.is_file():
        return binary
    source = _sdist_source(root, LLAMA_CPP_PYTHON)
    log(f"building llama-server in {build} (several minutes on 2 cores)")
    subprocess.run(["cmake", "-S", str(source / "vendor" / "llama.cpp"), "-B", str(build), *SERVER_FLAGS],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["ninja", "-C", str(build), f"-j{jobs}", "llama-server"], check=True)
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict[str, Any] | None = None, timeout: float = 120) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class LlamaServer:
    """``llama-server -m GGUF`` on 127.0.0.1, stopped on exit."""

    def __init__(self, binary: Path, gguf: Path, threads: int, ctx: int = 2048):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = RESULTS.parent / f"llama-server-{gguf.stem}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.args = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port), "-t",
                     str(threads), "-c", str(ctx), "--jinja", "-np", "1", "--no-webui",
                     # llama-cpp-python runs with flash attention off; the server's "auto" turns it on for
                     # CPU, which reorders float sums and flips near-tie greedy tokens. Same settings, same text.
                     "-fa", "off"]

    def __enter__(self) -> LlamaServer:
        self.proc = subprocess.Popen(self.args, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama-server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if _http(f"{self.url}/health", timeout=2).get("status") == "ok":
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"llama-server did not become healthy in 120 s; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def check_gguf(binary: Path, gguf: Path, hf_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """All checks for one GGUF; each check is recorded with what was expected and what came back."""
    from transformers import AutoTokenizer

    from arte_edge.backends.base import SamplingParams
    from arte_edge.backends.llamacpp import LlamaCppChat

    tok = AutoTokenizer.from_pretrained(hf_dir)
    python_runtime = LlamaCppChat(gguf, threads=args.threads, n_ctx=2048)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    checks: dict[str, Any] = {}
    with LlamaServer(binary, gguf, args.threads) as server:
        props = _http(f"{server.url}/props")
        template = props.get("chat_template", "")
        checks["chat_template"] = {"ok": template == tok.chat_template, "server_chars": len(template),
                                   "hf_chars": len(tok.chat_template or "")}
        tokenize = []
        for text in TOKENIZE_STRINGS:
            ours = _http(f"{server.url}/tokenize", {"content": text, "add_special": False, "parse_special": True})
            hf = tok(text, add_special_tokens=False)["input_ids"]
            tokenize.append({"text": text, "ok": ours["tokens"] == hf, "server": ours["tokens"], "hf": hf})
        checks["tokenize"] = {"ok": all(t["ok"] for t in tokenize), "strings": tokenize}
        replies = []
        for question in QUESTIONS:
            messages = [{"role": "user", "content": question}]
            reply = _http(f"{server.url}/v1/chat/completions",
                          {"messages": messages, "temperature": 0.0, "max_tokens": args.max_tokens, "seed": 0})
            choice = reply["choices"][0]
            text = choice["message"]["content"]
            runtime = python_runtime.chat(messages, params)
            markers = [m for m in ("<|im_start|>", "<|im_end|>", "<|endoftext|>") if m in text]
            replies.append({"question": question, "server_text": text, "runtime_text": runtime.text,
                            "finish_reason": choice["finish_reason"],
                            "completion_tokens": reply["usage"]["completion_tokens"], "markers_in_text": markers,
                            "ok": choice["finish_reason"] == "stop" and not markers
                            and text.strip() == runtime.text.strip()})
        checks["chat"] = {"ok": all(r["ok"] for r in replies), "replies": replies}
        checks["eos"] = {"ok": True, "server_eos": props.get("eos_token"), "hf_eos": tok.eos_token}
        checks["eos"]["ok"] = props.get("eos_token") in (None, tok.eos_token)
    python_runtime.close()
    return {"gguf": str(gguf), "size_bytes": gguf.stat().st_size, "ok": all(c["ok"] for c in checks.values()),
            "checks": checks}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one row per GGUF, one column per check."""
    lines = ["| GGUF | size MB | chat template | tokenize | stops at EOS, same text as runtime | all |",
             "|---|---:|---|---|---|---|"]
    for r in rows:
        c = r["checks"]
        chat = c["chat"]["replies"]
        tokens = ", ".join(str(x["completion_tokens"]) for x in chat)
        stops = f"{sum(x['ok'] for x in chat)}/{len(chat)} (tokens {tokens})"
        lines.append(f"| {Path(r['gguf']).name} | {r['size_bytes'] / 1e6:.1f} | {_mark(c['chat_template']['ok'])} | "
                     f"{sum(s['ok'] for s in c['tokenize']['strings'])}/{len(TOKENIZE_STRINGS)} | {stops} | "
                     f"{_mark(r['ok'])} |")
    return "\n".join(lines)


def _mark(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    """Build (once), check every GGUF, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="+", type=Path)
    parser.add_argument("--hf", type=Path, required=True, help="The merged HF folder the GGUFs were exported from.")
    parser.add_argument("--threads", "-t", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    binary = llama_server_binary()
    rows = [check_gguf(binary, g, args.hf, args) for g in args.gguf]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"llama_server": str(binary), "results": rows}, indent=2, ensure_ascii=False))
    print(table(rows))
    print(f"\nJSON: {args.out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
