"""The run directory: the only place stages read from and write to.

``runs/<name>/manifest.json`` holds the resolved recipe, library versions, model sha256s, splits, and each
stage's status and outputs. Writes are atomic (temp file + fsync + rename), JSONL files are append-only with
flush + fsync per batch, so a ``kill -9`` at any moment loses at most the batch in flight and never leaves a
half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError

STAGES = ("generate", "align", "train", "merge", "export", "evaluate", "variants", "bench", "report")
METHOD_STAGES = ("align",)  # run only for a method that lists them in its ``extra_stages``


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def partial_path(path: Path) -> Path:
    """Where ``path`` (a file or a folder) is written until it is complete: ``<path>.partial``."""
    return path.with_name(path.name + ".partial")


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Build a folder under ``<path>.partial`` and move it to ``path`` only when the block finishes, replacing
    what was there; a crash leaves the old folder (or none), never a half-written one."""
    tmp = partial_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def ensure_free_space(folder: Path, need_bytes: int, what: str) -> None:
    """ArteError naming ``folder`` when its disk has fewer than ``need_bytes`` free for ``what``."""
    free = free_bytes(folder)
    if free < need_bytes:
        raise ArteError(f"{folder}: {what} needs about {need_bytes / 1e9:.1f} GB but the disk has "
                        f"{free / 1e9:.1f} GB free; free space (old runs' merged/ folders and .gguf files are the "
                        "largest) and rerun: finished steps are kept")


def stable_id(*parts: Any) -> str:
    """A short content hash of what produced a record (prompt, seed, model...), for idempotent resume."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file, ignoring a torn last line left by a crash mid-write."""
    if not path.exists():
        return []
    rows = []
    with open(path) as fh:
        lines = fh.read().split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if lineno >= len(lines) - 1:  # torn tail from a kill mid-write: drop it
                break
            raise ArteError(f"{path}:{lineno}: corrupt JSONL line ({exc.msg}); delete the line or the file") from exc
    return rows


class JsonlAppender:
    """Append records durably: each ``write_batch`` is flushed and fsynced before returning."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1  # drop the partial line a crash left behind
            fh.truncate(cut)

    def write_batch(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` and make them durable."""
        lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        if not lines:
            return
        with open(self.path, "a") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())


def is_main_process() -> bool:
    """False on the non-zero ranks of a distributed launch (``RANK`` set by accelerate/torchrun)."""
    return os.environ.get("RANK", "0") == "0"


class RunDir:
    """Paths and manifest of one run (``runs/<name>/``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()  # stages store paths relative to it; both sides must be absolute

    # -- paths -------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def path(self, *parts: str) -> Path:
        """A path inside the run directory (parents created)."""
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def examples_path(self) -> Path:
        return self.path("data", "examples.jsonl")

    @property
    def rejected_path(self) -> Path:
        return self.path("data", "rejected.jsonl")

    def variant_example_files(self) -> list[Path]:
        """Every ``data/variants/<arm>/examples.jsonl`` present, by arm name."""
        base = self.root / "data" / "variants"
        return sorted(base.glob("*/examples.jsonl")) if base.exists() else []

    def variant_examples_path(self, arm: str) -> Path:
        """``data/variants/<arm>/examples.jsonl``: a comparison arm's training set."""
        return self.path("data", "variants", arm, "examples.jsonl")

    @property
    def artifacts_dir(self) -> Path:
        """``artifacts/``: exported GGUF files and ONNX folders, their registry and verify.json."""
        return self.path("artifacts", ".keep").parent

    @property
    def student_dir(self) -> Path:
        """``student/``: the main student's adapter/, merged/, checkpoints/ and training.json."""
        return self.path("student", ".keep").parent

    @property
    def merged_dir(self) -> Path:
        """``student/merged``: the whole trained student (exported and evaluated)."""
        return self.student_dir / "merged"

    def variant_student_dir(self, arm: str) -> Path:
        """``student/variants/<arm>/``: an arm's adapter/, merged/, checkpoints/ and training.json."""
        return self.path("student", "variants", arm, ".keep").parent

    def eval_rows_path(self, artifact: str) -> Path:
        """``eval/<artifact>.jsonl``: per-item predictions of one artifact."""
        return self.path("eval", f"{artifact}.jsonl")

    def eval_batch1_path(self, artifact: str) -> Path:
        """``eval/<artifact>.batch1.json``: a batched row's check against batch-1 decoding, kept for resumes."""
        return self.path("eval", f"{artifact}.batch1.json")

    @property
    def eval_summary_path(self) -> Path:
        """``eval/summary.json``: accuracy summaries of every scored artifact."""
        return self.path("eval", "summary.json")

    @property
    def eval_baselines_path(self) -> Path:
        """``eval/baselines.json``: chance, constant-answer and format-only baselines on the held-out items."""
        return self.path("eval", "baselines.json")

    def eval_model_dir(self, name: str) -> Path:
        """``eval/models/<name>/``: a student exported only to be scored in the runtime it ships in."""
        return self.path("eval", "models", name, ".keep").parent

    def bench_path(self, device: str) -> Path:
        """``bench/<device>.json``: raw samples and summaries of every artifact on one device."""
        return self.path("bench", f"{device}.json")

    @property
    def report_dir(self) -> Path:
        """``report/``: report.md, report.json, the plots, and ``sections/`` written by the method."""
        return self.path("report", ".keep").parent

    def section_path(self, method: str, suffix: str = ".md") -> Path:
        """``report/sections/<method><suffix>``: a method's own report section (Markdown, or its JSON data)."""
        return self.path("report", "sections", f"{method}{suffix}")

    # -- manifest ----------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        """The manifest, or an empty skeleton for a new run."""
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ArteError(f"{self.manifest_path}: corrupt manifest ({exc.msg}); "
                            "restore it or start a new run directory") from exc

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        # Under `accelerate launch` every rank runs the stage; only the main process (RANK 0) records it.
        if is_main_process():
            atomic_write_json(self.manifest_path, manifest)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge top-level ``fields`` into the manifest atomically."""
        manifest = self.read_manifest()
        manifest.update(fields)
        self._write_manifest(manifest)
        return manifest

    def stage_info(self, stage: str) -> dict[str, Any]:
        """The manifest entry for ``stage`` ({} when it never ran)."""
        return self.read_manifest().get("stages", {}).get(stage, {})

    def is_done(self, stage: str) -> bool:
        """Whether ``stage`` finished in this run directory."""
        return self.stage_info(stage).get("status") == "done"

    def set_stage(self, stage: str, status: str, **fields: Any) -> None:
        """Record a stage's status (running/done/failed) and outputs."""
        manifest = self.read_manifest()
        entry = manifest.setdefault("stages", {}).setdefault(stage, {})
        entry.update(status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"), **fields)
        self._write_manifest(manifest)

    def reset_from(self, stage: str) -> None:
        """Mark ``stage`` and every later stage as not done (``--from STAGE``)."""
        manifest = self.read_manifest()
        stages = manifest.setdefault("stages", {})
        for name in STAGES[STAGES.index(stage):]:
            if name in stages:
                stages[name]["status"] = "pending"
        self._write_manifest(manifest)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Run a stage: marks it running, then done with its outputs and wall time, or failed."""
        start = time.perf_counter()
        self.set_stage(name, "running")
        outputs: dict[str, Any] = {}
        try:
            yield outputs
        except BaseException as exc:
            self.set_stage(name, "failed", error=str(exc)[:500], seconds=round(time.perf_counter() - start, 2))
            raise
        self.set_stage(name, "done", seconds=round(time.perf_counter() - start, 2), outputs=outputs)
