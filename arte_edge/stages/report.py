"""Stage `report`: the method re-renders its own section(s), then report.md/report.json are written
(:mod:`arte_edge.evaluation.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arte_edge.evaluation.report import write_report
from arte_edge.methods.registry import get_method
from arte_edge.runctx import RunContext
from arte_edge.rundir import RunDir


def rewrite(run_dir: Path, max_drop_pt: float = 1.0) -> dict[str, Any]:
    """The report of an existing run directory (``arte-edge report``), with the method named in its manifest."""
    run = RunDir(run_dir)
    method = get_method(run.read_manifest().get("recipe", {}).get("method") or "standard")
    method.refresh_report(run.root)  # e.g. ELAD's learning curve, rendered by this version
    return write_report(run, max_drop_pt, standard_arm=method.standard_arm)


def run(ctx: RunContext) -> dict[str, Any]:
    """Write the run's report."""
    return rewrite(ctx.run.root, ctx.recipe.report.max_accuracy_drop)
