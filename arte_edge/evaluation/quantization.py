"""What the quantization choices bought, for the report: the run's importance matrix against plain quantization
of the same type, and the auto mix against the fixed type of nearest size.

Both sides of each pair are verified against the merged student on the same texts (KL(merged || artifact) per
position and top-1 agreement, from the export's verification) and scored on the same held-out items (accuracy,
paired bootstrap interval of the difference, exact McNemar p adjusted by Holm over the imatrix pairs).
"""

from __future__ import annotations

from typing import Any

from arte_edge.artifacts import Artifact, read_exported
from arte_edge.evaluation.comparisons import item_flags
from arte_edge.formats import PLAIN_SUFFIX
from arte_edge.rundir import RunDir
from arte_edge.stats import holm, paired_comparison

AUTO = "gguf-auto"


def fidelity(artifact: Artifact) -> dict[str, Any]:
    """KL and top-1 agreement against the merged model from an artifact's verification (None when not verified)."""
    nxt = (artifact.verify or {}).get("next_token") or {}
    return {"kl": nxt.get("kl_mean"), "top1": nxt.get("top1"), "positions": nxt.get("n_positions")}


def _accuracy(summary: dict[str, Any], name: str) -> float | None:
    return (summary.get(name) or {}).get("accuracy")


def imatrix_pairs(run: RunDir, eval_summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per type exported both with the run's importance matrix and without it (``<name>-plain``)."""
    known = {a.name: a for a in read_exported(run.root)}
    rows: list[dict[str, Any]] = []
    for name, plain in ((n, known.get(n + PLAIN_SUFFIX)) for n in known):
        if plain is None or not known[name].details.get("imatrix"):
            continue  # no twin, or both plain (exported before imatrix: run)
        with_im, without = known[name], plain
        row: dict[str, Any] = {
            "artifact": name, "plain": plain.name, "quant": with_im.quant,
            "imatrix": with_im.details.get("imatrix"),
            "size_mb": with_im.size_bytes / 1e6, "plain_size_mb": without.size_bytes / 1e6,
            "with": fidelity(with_im), "without": fidelity(without),
            "accuracy": _accuracy(eval_summary, name), "plain_accuracy": _accuracy(eval_summary, plain.name),
        }
        a, b = item_flags(run, name), item_flags(run, plain.name)
        shared = [i for i in a if i in b]
        if shared:
            row["paired"] = paired_comparison([a[i] for i in shared], [b[i] for i in shared])
        rows.append(row)
    for row, adjusted in zip([r for r in rows if "paired" in r],
                             holm([r["paired"]["p"] for r in rows if "paired" in r]), strict=True):
        row["paired"]["p_holm"] = adjusted
    return rows


def auto_mix_row(run: RunDir, eval_summary: dict[str, Any]) -> dict[str, Any] | None:
    """The auto mix beside the fixed GGUF type of nearest size (both verified on the same texts)."""
    known = {a.name: a for a in read_exported(run.root)}
    auto = known.get(AUTO)
    if auto is None:
        return None
    mix = (auto.details.get("quant") or {}).get("source", {}).get("mix") or {}
    fixed = [a for a in known.values() if a.format == "gguf" and a.name != AUTO and not a.name.endswith(PLAIN_SUFFIX)]
    nearest = min(fixed, key=lambda a: abs(a.size_bytes - auto.size_bytes), default=None)
    row: dict[str, Any] = {
        "artifact": AUTO, "budget": mix.get("budget"), "size_mb": auto.size_bytes / 1e6, **fidelity(auto),
        "predicted_kl": (mix.get("plan") or {}).get("predicted_kl"),
        "type_histogram": (mix.get("plan") or {}).get("type_histogram"),
        "accuracy": _accuracy(eval_summary, AUTO),
    }
    if nearest is not None:
        row["nearest"] = {"artifact": nearest.name, "size_mb": nearest.size_bytes / 1e6, **fidelity(nearest),
                          "accuracy": _accuracy(eval_summary, nearest.name)}
        a, b = item_flags(run, AUTO), item_flags(run, nearest.name)
        shared = [i for i in a if i in b]
        if shared:
            row["paired"] = paired_comparison([a[i] for i in shared], [b[i] for i in shared])
    return row
