"""PERsD's report section: report/sections/persd.{md,json}, the held-out table and the teacher cost per dataset."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.rundir import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from arte_edge.methods.persd.heldout import HeldoutSettings

LABELS = {"base": "base student", "merged": "PERsD (merged)", "variant-persd-refine": "PERsD-refine",
          "variant-persd-combined": "PERsD-combined", "variant-stand": "StanD", "variant-inpd": "InpD"}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def render_section(task_name: str, s: HeldoutSettings, summary: dict[str, dict[str, Any]],
                   costs: dict[str, dict[str, Any]]) -> str:
    """The Markdown section: model × pass@1 {greedy, greedy + multi-step, n-sample}, then teacher cost."""
    n = max((v["n_items"] for v in summary.values()), default=0)
    runtime = (f"base, merged and variant students as GGUF {s.quant.upper()} in llama.cpp" if s.quant
               else "base, merged and variant students in fp32 (torch)") + "; other artifacts on their own runtime"
    lines = [f"## PERsD: held-out pass@1 on {task_name}", "",
             f"n = {n} items ({runtime}); greedy with 95% Wilson interval; multi-step = up to {s.rounds} "
             "self-repair rounds on the visible tests, scored on the hidden tests; "
             + (f"n-sample = unbiased pass@1 from {s.n_samples} samples at T={s.sample_temperature}" if s.n_samples
                else "n-sample pass@1 not run (persd.pass_k_samples: 0)")
             + ". McNemar p is paired against the base student (greedy).", "",
             "| model | pass@1 greedy % | 95% CI | greedy + multi-step % | mean rounds | "
             f"pass@1 n={s.n_samples} % | McNemar p vs base |",
             "|---|---:|---|---:|---:|---:|---:|"]
    order = sorted(summary, key=lambda k: (list(LABELS).index(k) if k in LABELS else len(LABELS), k))
    for name in order:
        v = summary[name]
        p = v.get("mcnemar_p_vs_base")
        lines.append(f"| {LABELS.get(name, name)} | {_pct(v['pass1_greedy'])} | [{_pct(v['ci_low'])}, "
                     f"{_pct(v['ci_high'])}] | {_pct(v['pass1_multistep'])} | {v['mean_multistep_rounds']:.2f} | "
                     f"{_pct(v['pass1_sampled'])} | {'–' if p is None else p} |")
    lines += ["", "### Teacher cost per training-data variant (equal budget)", "",
              "| variant | examples | teacher calls | prompt tokens | completion tokens |", "|---|---:|---:|---:|---:|"]
    for name, c in costs.items():
        label = LABELS.get("merged" if name == "persd" else f"variant-{name}", name)
        lines.append(f"| {label} | {c.get('n_examples', '–')} | {c.get('teacher_calls', '–')} | "
                     f"{c.get('prompt_tokens', '–')} | {c.get('completion_tokens', '–')} |")
    return "\n".join(lines) + "\n"


def write_section(root: Path, task_name: str, s: HeldoutSettings, summary: dict[str, dict[str, Any]],
                  costs: dict[str, dict[str, Any]]) -> None:
    """Write report/sections/persd.md and persd.json."""
    atomic_write_text(root / "report" / "sections" / "persd.md", render_section(task_name, s, summary, costs))
    atomic_write_json(root / "report" / "sections" / "persd.json",
                      {"task": task_name, "settings": asdict(s), "models": summary, "teacher_cost": costs})
