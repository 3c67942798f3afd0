"""Stage `generate`: the recipe's method writes the training data of every arm (see methods/base.py)."""

from __future__ import annotations

from typing import Any

from arte_edge.methods.registry import get_method
from arte_edge.runctx import RunContext


def run(ctx: RunContext) -> dict[str, Any]:
    """Generate training data with the recipe's method; resumes from what the files already hold."""
    return get_method(ctx.recipe.method).generate(ctx)
