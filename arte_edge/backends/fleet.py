"""A local fleet of llama.cpp servers (``python -m llama_cpp.server``) on 127.0.0.1, for tests and benchmarks.

llama-cpp-python's server answers one request at a time per process (an async lock around the model; it has
no ``--parallel`` slots, unlike upstream ``llama-server``), so concurrency on one host comes from several
server processes behind :class:`~arte_edge.backends.openai.OpenAIChat`'s URL list. The same client drives a
remote vLLM fleet unchanged (see docs/scale.md).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from arte_edge.errors import ArteError


def server_available() -> str | None:
    """None when ``llama_cpp.server`` can start here, else why not (the ``[server]`` extra is missing)."""
    try:
        import fastapi  # noqa: F401
        import llama_cpp.server.app  # noqa: F401
        import sse_starlette  # noqa: F401
        import starlette_context  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"llama_cpp.server needs the [server] extra (pip install -e '.[server]'): {exc}"
    return None


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: str | Path, *, port: int, threads: int = 1, n_ctx: int = 1024, alias: str = "teacher",
                 log_path: Path | None = None) -> subprocess.Popen:
    """Start one llama.cpp server process (not waiting for it; see :func:`wait_ready`)."""
    from arte_edge.llama_build import check_llama_build

    check_llama_build()  # the server process would load the same build
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
           "--n_threads_batch", str(threads), "--verbose", "False"]
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Block until ``url``/models answers 200; raise if the process dies or the time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ArteError(f"llama.cpp server for {url} exited with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise ArteError(f"llama.cpp server at {url} not ready after {timeout_s:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """Terminate one server process (kill after 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def llama_fleet(model: str | Path, *, n_servers: int = 1, threads: int = 1, n_ctx: int = 1024,
                log_dir: Path | None = None, timeout_s: float = 180.0) -> Iterator[list[str]]:
    """Run ``n_servers`` llama.cpp servers on loopback; yields their base URLs (``http://127.0.0.1:P/v1``)."""
    reason = server_available()
    if reason:
        raise ArteError(reason)
    procs: list[subprocess.Popen] = []
    urls: list[str] = []
    try:
        for i in range(n_servers):
            port = free_port()
            log = log_dir / f"server{i}.log" if log_dir else None
            procs.append(start_server(model, port=port, threads=threads, n_ctx=n_ctx, log_path=log))
            urls.append(f"http://127.0.0.1:{port}/v1")
        for url, proc in zip(urls, procs, strict=True):
            wait_ready(url, proc, timeout_s)
        yield urls
    finally:
        for proc in procs:
            stop(proc)
