"""The Pareto plot of a report: held-out accuracy (95% CI) against decode latency, one point per artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_front(rows: list[dict[str, Any]]) -> list[str]:
    """Names of artifacts no other artifact beats on both accuracy and decode speed."""
    timed = [r for r in rows if r.get("decode_tok_s")]
    front = []
    for r in timed:
        dominated = any(o is not r and o["accuracy"] >= r["accuracy"] and o["decode_tok_s"] >= r["decode_tok_s"]
                        and (o["accuracy"] > r["accuracy"] or o["decode_tok_s"] > r["decode_tok_s"]) for o in timed)
        if not dominated:
            front.append(r["name"])
    return front


def plot_pareto(rows: list[dict[str, Any]], out: Path, title: str) -> Path | None:
    """Write a PNG (ms per decoded token vs accuracy %); None when nothing was benchmarked."""
    timed = [r for r in rows if r.get("decode_tok_s")]
    if not timed:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = set(pareto_front(rows))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    points = []
    for r in timed:
        ms = 1000.0 / r["decode_tok_s"]
        acc, lo, hi = 100 * r["accuracy"], 100 * r["ci_low"], 100 * r["ci_high"]
        ax.errorbar(ms, acc, yerr=[[acc - lo], [hi - acc]], fmt="o", capsize=3,
                    color="tab:red" if r["name"] in front else "tab:blue")
        points.append((ms, acc, r["name"]))
    ax.set_xscale("log")  # a quantized GGUF and an fp32 model differ ~10x in latency
    from matplotlib.ticker import FormatStrFormatter

    for axis_format in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis_format(FormatStrFormatter("%g"))
    ax.autoscale_view()
    _label_without_overlap(ax, points)
    ax.set_xlabel("decode latency, ms per token (lower is better)")
    ax.set_ylabel("held-out accuracy, % (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def _label_without_overlap(ax: Any, points: list[tuple[float, float, str]]) -> None:
    """Name each point; labels that would sit on an earlier one (same accuracy, close latency) move down."""
    placed: list[tuple[float, float]] = []  # label anchors, in points
    to_points = 72.0 / ax.figure.dpi
    for ms, acc, name in sorted(points):
        x, y = (v * to_points for v in ax.transData.transform((ms, acc)))
        dy = 4.0
        while any(abs(px - x) < 45 and abs(py - (y + dy)) < 9 for px, py in placed):
            dy -= 10.0
        placed.append((x, y + dy))
        ax.annotate(name, (ms, acc), textcoords="offset points", xytext=(5, dy), fontsize=8)
