"""ELAD's report section: the learning-curve table and plot, stopping reasons and paired last points
(``report/sections/elad.{md,json}``, ``report/elad_curve.png``), rendered from ``elad/curve.jsonl``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arte_edge.methods.elad.config import EladConfig
from arte_edge.rundir import atomic_write_json, atomic_write_text, read_jsonl


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def curve_rows(root: Path) -> list[dict[str, Any]]:
    """The learning-curve points of a run directory (base first, then strategy by round)."""
    rows = read_jsonl(root / "elad" / "curve.jsonl")
    return sorted(rows, key=lambda r: (r["strategy"] != "base", r["strategy"], r["round"]))


def plot_curve(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Held-out accuracy vs teacher calls with 95% CI error bars, one line per strategy (from the base point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = [r for r in rows if r["strategy"] == "base"]
    names = list(dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "base"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(names):
        pts = base + [r for r in rows if r["strategy"] == name]
        x = [p["teacher_calls"] + 0.004 * i * max(1, pts[-1]["teacher_calls"]) for p in pts]  # dodge the bars
        y = [100 * p["accuracy"] for p in pts]
        err = [[100 * (p["accuracy"] - p["ci_low"]) for p in pts], [100 * (p["ci_high"] - p["accuracy"]) for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
    n = rows[0]["n"] if rows else 0
    ax.set(xlabel="teacher calls", ylabel=f"held-out accuracy % (n={n}, 95% CI)", title="ELAD learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def paired_final(root: Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each strategy's last point against the reference arm's on the same held-out items: the standard-distillation
    arm (``standard``) when the run has it, else ELAD's. Paired bootstrap 95% interval of the difference, exact
    McNemar with Holm's correction over the family, and the minimum detectable difference (80% power)."""
    from arte_edge.stats import holm, paired_comparison

    last = {}
    for r in rows:
        if r["strategy"] != "base":
            last[r["strategy"]] = r
    reference = "standard" if "standard" in last else "elad"
    if reference not in last:
        return []

    def flags(row: dict[str, Any]) -> dict[str, bool]:
        return {x["item_id"]: bool(x["correct"]) for x in read_jsonl(root / row["eval_file"])}

    ref = flags(last[reference])
    out = []
    for name, row in last.items():
        if name == reference:
            continue
        other = flags(row)
        common = [i for i in ref if i in other]
        if not common:
            continue
        cmp = paired_comparison([other[i] for i in common], [ref[i] for i in common])
        out.append({"strategy": name, "reference": reference, "n": len(common),
                    "accuracy": sum(other[i] for i in common) / len(common),
                    "reference_accuracy": sum(ref[i] for i in common) / len(common), **cmp,
                    "mcnemar_p": round(cmp["p"], 4)})
    for entry, adjusted in zip(out, holm([e["p"] for e in out]), strict=True):
        entry["p_holm"] = round(adjusted, 4)
    return out


def unanswered(root: Path, row: dict[str, Any]) -> int | None:
    """Held-out items of a curve point without a parseable final answer (cut at max_tokens, or no answer line)."""
    path = root / row["eval_file"]
    return sum(x.get("predicted") is None for x in read_jsonl(path)) if path.exists() else None


def render_section(info: dict[str, Any]) -> str:
    """The Markdown section ``report/sections/elad.md``."""
    lines = ["## ELAD: learning curve (held-out accuracy vs teacher calls)", "", info["setup"], "",
             "| strategy | round | teacher calls | n_train | accepted / sent | parse fail | still wrong | "
             "accuracy % | 95% CI | no answer | validation % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in info["rows"]:
        sent = f"{r.get('n_accepted', 0)} / {r.get('n_selected', 0)}" if r["strategy"] != "base" else "–"
        lines.append(f"| {r['strategy']} | {r['round']} | {r['teacher_calls']} | {r['n_train']} | {sent} | "
                     f"{r.get('n_parse_failure', '–')} | {r.get('n_still_wrong', '–')} | {_pct(r['accuracy'])} | "
                     f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}] | {r.get('n_no_answer', '–')} | "
                     f"{_pct(r.get('val_accuracy'))} |")
    lines += ["", "*no answer*: held-out items without a parseable final answer line (usually cut at "
              "`evaluate.max_tokens`); a drop there is the student learning the answer format, not the task."]
    lines += ["", "### Stopping decisions", ""]
    lines += [f"- **{name}**: after round {s['round']}: {s['reason']}" for name, s in info["stops"].items()]
    if info["paired"]:
        ref = info["paired"][0]["reference"]
        lines += ["", f"### Last points vs `{ref}` on the same held-out items (paired)", "",
                  f"| strategy | n | accuracy % | {ref} accuracy % | difference, pt [95% CI] | McNemar p | "
                  "p (Holm) | detectable difference, pt | items for this difference |",
                  "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {p['strategy']} | {p['n']} | {_pct(p['accuracy'])} | {_pct(p['reference_accuracy'])} | "
                  f"{100 * p['diff']:+.1f} [{100 * p['diff_low']:+.1f}, {100 * p['diff_high']:+.1f}] | "
                  f"{p['mcnemar_p']} | {p['p_holm']} | "
                  f"{_pct(p['mde'])} | {'–' if p.get('n_needed') is None else format(p['n_needed'], ',')} |"
                  for p in info["paired"]]
        lines += ["", "*difference*: strategy minus the reference, paired bootstrap; *p (Holm)*: exact McNemar "
                  "adjusted over the strategies; *detectable difference*: the smallest difference this n and "
                  "discordance could detect with 80% power (two-sided α = 0.05); *items for this difference*: the "
                  "held-out items a rerun would need to detect a true difference of the size seen here at the same "
                  "discordance (a plan for the next run, not evidence; as noisy as the difference it starts from)."]
    lines += ["", f"![ELAD learning curve]({info['plot_rel_md']})", ""]
    return "\n".join(lines)


def write_report(root: Path, setup: str, cfg: EladConfig) -> dict[str, Any]:
    """``report/sections/elad.{md,json}`` and ``report/elad_curve.png`` from ``elad/curve.jsonl``."""
    return _write_report(root, setup, cfg.model_dump(mode="json"))


def refresh_report(root: Path) -> bool:
    """Re-render the ELAD section of a finished loop (``arte-edge report``) from its curve and the setup and
    config recorded in ``report/sections/elad.json``; False when the run has no ELAD loop."""
    recorded = root / "report" / "sections" / "elad.json"
    if not (root / "elad" / "curve.jsonl").exists() or not recorded.exists():
        return False
    old = json.loads(recorded.read_text())
    _write_report(root, old["setup"], old["config"])
    return True


def _write_report(root: Path, setup: str, config: dict[str, Any]) -> dict[str, Any]:
    rows = [{**r, "n_no_answer": unanswered(root, r)} for r in curve_rows(root)]
    stops: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["strategy"] != "base":
            stops[r["strategy"]] = {"round": r["round"], "reason": r.get("stop_reason") or "not finished"}
    plot = root / "report" / "elad_curve.png"
    if rows:
        plot_curve(rows, plot)
    info = {"setup": setup, "rows": rows, "stops": stops, "paired": paired_final(root, rows),
            "plot": "report/elad_curve.png", "plot_rel_md": "elad_curve.png", "config": config}
    atomic_write_text(root / "report" / "sections" / "elad.md", render_section(info))
    atomic_write_json(root / "report" / "sections" / "elad.json", {k: v for k, v in info.items()
                                                                    if k != "plot_rel_md"})
    return info
