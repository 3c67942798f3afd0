"""Stage `align`: a method's teacher-alignment step, run before `generate` for methods that list it in their
``extra_stages`` (ARTE: D_pref, elicitation, student preferences, DPO; see ``arte_edge/methods/arte/``).

The stage only dispatches; the algorithm and its files under ``align/`` belong to the method.
"""

from __future__ import annotations

from typing import Any

from arte_edge.errors import ArteError
from arte_edge.methods.registry import get_method
from arte_edge.runctx import RunContext


def run(ctx: RunContext) -> dict[str, Any]:
    """Run the recipe method's ``align`` stage; ArteError for a method without one."""
    method = get_method(ctx.recipe.method)
    if "align" not in method.extra_stages:
        raise ArteError(f"align: method {ctx.recipe.method} does not align a teacher (only methods with an align "
                        "stage do, e.g. arte)")
    return method.run_extra_stage("align", ctx)
