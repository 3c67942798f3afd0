"""Errors shared by the export backends (ONNX and GGUF)."""

from __future__ import annotations

from arte_edge.errors import ArteError


class VerificationError(ArteError):
    """An exported artifact failed a check against its source model; the message names the artifact and check."""
