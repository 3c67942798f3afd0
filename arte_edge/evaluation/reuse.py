"""Adopt per-item rows already scored with the very same model file, runtime and decoding.

A method that scores its own students while it works (ELAD scores every curve point one sequence at a time as the
Q8_0 GGUF it ships as) has already answered the held-out items with a file the evaluate stage would open again. The
method records how it decoded (:func:`runtime_record`: the file's SHA-256, batch mode, threads, context) beside the
rows. When the evaluate stage's file has those bytes, its runtime decodes the same way and the decoding settings and
prompts match, decoding again would only reproduce those rows: the evaluate stage copies them instead, and each
adopted row names its source (``adopted_from``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arte_edge.backends.base import ChatModel, SamplingParams
from arte_edge.rundir import atomic_write_text, read_jsonl


@dataclass(frozen=True)
class ScoredRows:
    """Rows a method already scored: ``rows`` (JSONL, one per item) answered in llama.cpp by a GGUF whose bytes had
    the SHA-256 ``sha256``, ``batch_size`` conversations at a time, with ``threads``, ``n_ctx`` and the decoding
    ``params`` (no demonstrations), all as recorded when the rows were scored (:func:`runtime_record`).
    ``source`` names them in the adopted rows (e.g. ``elad/base``); with ``row_key`` only rows written under that
    key count (the method's own cache key for that model)."""

    source: str
    sha256: str
    rows: Path
    batch_size: int
    threads: int
    n_ctx: int
    params: SamplingParams
    row_key: str | None = None


def runtime_record(model: ChatModel) -> dict[str, Any] | None:
    """How a llama.cpp model decodes, for a method to keep beside the rows it scores: the SHA-256 of its file,
    its batch size, threads and context. None for a model without a GGUF file (torch, ONNX)."""
    path = getattr(model, "path", None)
    if path is None or not Path(path).is_file() or Path(path).suffix != ".gguf":
        return None
    return {"sha256": file_digest(Path(path)), "batch_size": int(getattr(model, "batch_size", 0) or 0),
            "threads": getattr(model, "threads", None), "n_ctx": getattr(model, "n_ctx", None)}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (about a second for a 0.5B Q8_0 GGUF), kept for the process while its size and
    mtime are unchanged."""
    stat = path.stat()
    stamp = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if stamp not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[stamp] = digest.hexdigest()
    return _DIGESTS[stamp]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def same_run(model: ChatModel, params: SamplingParams, scored: ScoredRows) -> bool:
    """Whether ``model`` answering with ``params`` (no demonstrations) would decode exactly as ``scored`` did:
    the same file bytes, runtime and decoding settings."""
    record = runtime_record(model)
    if record is None or not scored.rows.exists():
        return False
    return record == {"sha256": scored.sha256, "batch_size": scored.batch_size, "threads": scored.threads,
                      "n_ctx": scored.n_ctx} and params == scored.params


def adopt_rows(model: ChatModel, params: SamplingParams, item_ids: list[str], out_path: Path, key: str,
               candidates: list[ScoredRows]) -> str | None:
    """Copy into ``out_path`` (under ``key``) the rows of the first candidate that ran the same file the same way,
    for the items ``out_path`` does not already hold under ``key``; return its ``source``, or None when nothing
    was copied. Rows already in ``out_path`` under another key are dropped (as :func:`~arte_edge.evaluation.
    scoring.evaluate_model` would); items the candidate lacks are left for the caller to decode."""
    if not candidates:
        return None
    kept = {r["item_id"]: r for r in read_jsonl(out_path) if r.get("key") == key}
    missing = [i for i in item_ids if i not in kept]
    if not missing:
        return None
    for scored in candidates:
        if not same_run(model, params, scored):
            continue
        found = {r["item_id"]: r for r in read_jsonl(scored.rows)
                 if scored.row_key is None or r.get("key") == scored.row_key}
        new: dict[str, dict[str, Any]] = {i: {**found[i], "key": key, "adopted_from": scored.source}
                                          for i in missing if i in found}
        if not new:
            continue
        rows = {**kept, **new}
        atomic_write_text(out_path, "".join(json.dumps(rows[i], ensure_ascii=False) + "\n"
                                            for i in item_ids if i in rows))
        return scored.source
    return None


def adoption(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """For an artifact's summary row: ``adopted_from`` (the sources) and ``n_adopted`` (how many of its ``rows``)
    when some rows were adopted; empty otherwise."""
    sources = [r["adopted_from"] for r in rows if r.get("adopted_from")]
    return {"adopted_from": sorted(set(sources)), "n_adopted": len(sources)} if sources else {}
