"""ARTE's files under ``align/``: durable row maps that resume a killed loop, whole-file JSONL writes, and the
wall time of each step accumulated across resumes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from arte_edge.rundir import JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl


class StepTimer:
    """Wall seconds per ARTE step, accumulated across resumes in ``align/timings.json``."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to step ``name`` and save the file (also on failure)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)
            atomic_write_json(self.path, self.seconds)


def durable_map(path: Path) -> tuple[dict[str, dict[str, Any]], JsonlAppender]:
    """The rows already in ``path`` by id, and an appender that adds more (flushed and fsynced per batch)."""
    return {r["id"]: r for r in read_jsonl(path)}, JsonlAppender(path)


def chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``seq`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Replace ``path`` atomically with ``rows``, one JSON object a line."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
