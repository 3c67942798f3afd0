"""llama.cpp's log, captured: the quantizer and the model loader report their reasons only there."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def capture_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log chunks while the block runs, then restore llama-cpp-python's default logger."""
    import llama_cpp
    from llama_cpp import _logger

    chunks: list[str] = []

    @llama_cpp.llama_log_callback
    def _collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        chunks.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
    try:
        yield chunks
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def last_error(log: list[str], default: str | None = None) -> str:
    """The last line of a captured log that mentions an error or a failure (at most 300 characters).

    Without one: ``default`` when given, else the log's last line (or ``no log``).
    """
    lines = [ln.strip() for ln in "".join(log).splitlines() if ln.strip()]
    fallback = default if default is not None else lines[-1] if lines else "no log"
    return next((ln for ln in reversed(lines) if "error" in ln.lower() or "fail" in ln.lower()), fallback)[:300]
