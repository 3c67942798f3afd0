"""PERsD's report section: report/sections/persd.{md,json}: the held-out table, each model against StanD (paired),
and the teacher cost per dataset."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.rundir import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from arte_edge.methods.persd.heldout import HeldoutSettings

LABELS = {"base": "base student", "merged": "PERsD (merged)", "variant-persd-refine": "PERsD-refine",
          "variant-persd-combined": "PERsD-combined", "variant-stand": "StanD", "variant-inpd": "InpD",
          "variant-stand-full": "StanD (full pool)"}
REFERENCE = "variant-stand"  # the method's standard_arm: StanD at the equal teacher budget B


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def compare_with_reference(results: dict[str, list[dict[str, Any]]],
                           reference: str = REFERENCE) -> list[dict[str, Any]]:
    """Each scored model against ``reference`` (StanD; the base student when StanD was not scored) on greedy
    pass@1, paired by problem: the difference with its paired-bootstrap 95% interval, the exact McNemar p, that p
    adjusted by Holm over these comparisons, and the minimum detectable difference (:func:`arte_edge.stats.
    paired_comparison`, the statistics of the run report's arm comparisons)."""
    from arte_edge.stats import holm, paired_comparison

    ref_name = reference if reference in results else "base"
    if ref_name not in results:
        return []
    ref = {r["item_id"]: bool(r["greedy_pass"]) for r in results[ref_name]}
    out: list[dict[str, Any]] = []
    for name, rows in results.items():
        flags = {r["item_id"]: bool(r["greedy_pass"]) for r in rows}
        shared = [i for i in ref if i in flags]
        if name == ref_name or not shared:
            continue
        out.append({"model": name, "reference": ref_name,
                    **paired_comparison([flags[i] for i in shared], [ref[i] for i in shared])})
    for row, adjusted in zip(out, holm([r["p"] for r in out]), strict=True):
        row["p_holm"] = adjusted
    return out


def _comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    if not comparisons:
        return []
    ref = LABELS.get(comparisons[0]["reference"], comparisons[0]["reference"])
    lines = ["", f"### Each model against {ref} (greedy pass@1, paired by problem)", "",
             "Difference in points with its paired-bootstrap 95% interval; exact McNemar p and p adjusted by Holm "
             "over these comparisons; the smallest difference these problems could detect (80% power); the problems a "
             "rerun would need to detect a true difference of the size seen here at the same discordance (a plan "
             "for the next run, not evidence; as noisy as the difference it starts from).", "",
             f"| model | diff vs {ref} (pt) | 95% CI | only model / only {ref} | McNemar p | Holm p | MDD (pt) | "
             "problems for this diff |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for c in comparisons:
        mde = "–" if c.get("mde") is None else f"{100 * c['mde']:.1f}"
        lines.append(f"| {LABELS.get(c['model'], c['model'])} | {100 * c['diff']:+.1f} | "
                     f"[{100 * c['diff_low']:+.1f}, {100 * c['diff_high']:+.1f}] | {c['only_a']} / {c['only_b']} | "
                     f"{c['p']:.3g} | {c['p_holm']:.3g} | {mde} | {_needed(c)} |")
    return lines


def _needed(comparison: dict[str, Any]) -> str:
    return "–" if comparison.get("n_needed") is None else f"{comparison['n_needed']:,}"


def _cost_lines(costs: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["", "### Teacher cost per training-data variant", "",
             "Equal budget = the arm spent exactly the B teacher calls of the paired comparison. StanD (full pool) "
             "and PERsD-combined spend more (every pool task; B refinements + the refined tasks' from-scratch "
             "solutions): they are not at equal cost.", "",
             "| variant | examples | teacher calls | equal budget | prompt tokens | completion tokens |",
             "|---|---:|---:|---|---:|---:|"]
    for name, c in costs.items():
        label = LABELS.get("merged" if name == "persd" else f"variant-{name}", name)
        equal = {True: "yes", False: "no (more calls)"}.get(c.get("equal_budget"), "–")
        lines.append(f"| {label} | {c.get('n_examples', '–')} | {c.get('teacher_calls', '–')} | {equal} | "
                     f"{c.get('prompt_tokens', '–')} | {c.get('completion_tokens', '–')} |")
    return lines


def render_section(task_name: str, s: HeldoutSettings, summary: dict[str, dict[str, Any]],
                   costs: dict[str, dict[str, Any]], comparisons: list[dict[str, Any]] | None = None) -> str:
    """The Markdown section: model × pass@1 {greedy, greedy + multi-step, n-sample, n-sample + multi-step} and
    student calls, each model against StanD, then the teacher cost."""
    n = max((v["n_items"] for v in summary.values()), default=0)
    runtime = (f"base, merged and variant students as GGUF {s.quant.upper()} in llama.cpp" if s.quant
               else "base, merged and variant students in fp32 (torch)") + "; other artifacts on their own runtime"
    lines = [f"## PERsD: held-out pass@1 on {task_name}", "",
             f"n = {n} items ({runtime}); greedy with 95% Wilson interval; multi-step = up to {s.rounds} "
             "self-repair rounds on the visible tests, scored on the hidden tests; "
             + (f"n-sample = unbiased pass@1 from {s.n_samples} samples at T={s.sample_temperature}, each sample "
                f"also repaired for up to {s.rounds} rounds (sampled) for the n-sample + multi-step column"
                if s.n_samples else "n-sample pass@1 not run (persd.pass_k_samples: 0)")
             + "; student calls = every generation of the student on these items (answers, samples, repairs). "
             "McNemar p is paired against the base student (greedy).", "",
             "| model | pass@1 greedy % | 95% CI | greedy + multi-step % | mean rounds | "
             f"pass@1 n={s.n_samples} % | n={s.n_samples} + multi-step % | student calls | McNemar p vs base |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    order = sorted(summary, key=lambda k: (list(LABELS).index(k) if k in LABELS else len(LABELS), k))
    for name in order:
        v = summary[name]
        p = v.get("mcnemar_p_vs_base")
        lines.append(f"| {LABELS.get(name, name)} | {_pct(v['pass1_greedy'])} | [{_pct(v['ci_low'])}, "
                     f"{_pct(v['ci_high'])}] | {_pct(v['pass1_multistep'])} | {v['mean_multistep_rounds']:.2f} | "
                     f"{_pct(v['pass1_sampled'])} | {_pct(v.get('pass1_sampled_multistep'))} | "
                     f"{v.get('student_calls', '–')} | {'–' if p is None else p} |")
    lines += _comparison_lines(comparisons or [])
    lines += _cost_lines(costs)
    return "\n".join(lines) + "\n"


def write_section(root: Path, task_name: str, s: HeldoutSettings, summary: dict[str, dict[str, Any]],
                  costs: dict[str, dict[str, Any]], comparisons: list[dict[str, Any]] | None = None) -> None:
    """Write report/sections/persd.md and persd.json."""
    atomic_write_text(root / "report" / "sections" / "persd.md",
                      render_section(task_name, s, summary, costs, comparisons))
    atomic_write_json(root / "report" / "sections" / "persd.json",
                      {"task": task_name, "settings": asdict(s), "models": summary, "teacher_cost": costs,
                       "comparisons_vs_standard": comparisons or []})
