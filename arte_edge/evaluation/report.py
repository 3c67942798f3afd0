"""The report: one Markdown page and one JSON contract built from a run directory.

``report/report.json`` is a stable contract for CI users:
- ``artifacts``: one row per evaluated model (base student, merged student, each exported file) with
  ``name, format, quant, size_bytes, accuracy, ci_low, ci_high, n_eval, decode_tok_s, prompt_tok_s,
  ttft_ms_p50`` (accuracy and interval as fractions in [0, 1]; latency from the bench device).
  Each row also has ``margin_pt`` (points over the best trivial baseline), ``top_answer``/``top_share`` (its
  most frequent answer) and ``flags`` (why it must not be shipped: a collapse onto one answer, no gain over the
  best trivial baseline); a flagged row is never recommended.
- ``variants``: one row per training-data method or ablation with ``method, n_train, teacher_calls,
  accuracy, ci_low, ci_high, n_eval``.
- ``baselines``: chance, constant answer and format-only accuracies on the same items, the best of them, and the
  gold answer histogram; ``comparisons``: every arm against the reference arm (paired, Holm-adjusted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arte_edge.artifacts import Artifact, read_exported
from arte_edge.evaluation.baselines import FORMAT_ONLY
from arte_edge.rundir import RunDir, atomic_write_json, atomic_write_text

LATENCY_KEYS = ("decode_tok_s", "prompt_tok_s", "ttft_ms_p50", "ttft_ms_p90", "tpot_ms_p50", "tpot_ms_p90",
                "peak_rss_bytes")


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _bench_by_name(run: RunDir) -> tuple[str | None, dict[str, Any]]:
    files = sorted(run.bench_path("*").parent.glob("*.json"))
    if not files:
        return None, {}
    data = json.loads(files[0].read_text())
    return data.get("device", files[0].stem), data.get("artifacts", {})


def artifact_rows(run: RunDir, eval_summary: dict[str, Any], bench: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluated model, joining accuracy, latency and size."""
    known = {a.name: a for a in read_exported(run.root)}
    merged_acc = (eval_summary.get("merged") or {}).get("accuracy")
    rows = []
    first = ("base", FORMAT_ONLY, "merged")  # the untrained student, its format-only baseline, then what ships
    names = sorted(eval_summary, key=lambda n: first.index(n) if n in first else len(first))
    for name, acc in ((n, eval_summary[n]) for n in names):
        if name.startswith("variant-"):
            continue
        art: Artifact | None = known.get(name)
        fmt = acc.get("format") or (art.format if art else "hf")  # the runtime it was scored in
        quant = acc.get("quant") or (art.quant if art else "fp32")
        b = bench.get(name, {})
        if (b.get("format", fmt), b.get("quant", quant)) != (fmt, quant):
            b = {}  # benchmarked in another runtime (e.g. fp32 torch vs scored as GGUF): not this row's latency
        summary = b.get("summary", {})
        rows.append({
            "name": name,
            "format": fmt,
            "quant": quant,
            "size_bytes": b.get("size_bytes") or (art.size_bytes if art else None),
            "accuracy": acc["accuracy"], "ci_low": acc["ci_low"], "ci_high": acc["ci_high"], "n_eval": acc["n_eval"],
            "delta_vs_merged_pt": None if merged_acc is None else round(100 * (acc["accuracy"] - merged_acc), 2),
            "mcnemar_p_vs_base": acc.get("mcnemar_p_vs_base"),
            "accuracy_flexible": acc.get("accuracy_flexible"), "answered": acc.get("answered"),
            "margin_pt": (acc.get("vs_baseline") or {}).get("margin_pt"),
            "vs_baseline": acc.get("vs_baseline"), "top_answer": acc.get("top_answer"),
            "top_share": acc.get("top_share"), "answer_histogram": acc.get("answer_histogram"),
            "flags": flags_of(acc), "decoding": acc.get("decoding"), "batch1_check": acc.get("batch1_check"),
            **{k: summary.get(k) for k in LATENCY_KEYS},
        })
    return rows


def flags_of(acc: dict[str, Any]) -> list[str]:
    """Why a scored model must not be shipped (empty when nothing is wrong)."""
    flags = []
    if acc.get("collapsed"):
        flags.append(f"collapsed: answers {acc['top_answer']} on {100 * acc['top_share']:.0f}% of items")
    vs = acc.get("vs_baseline") or {}
    if vs.get("beats") is False:
        flags.append(f"not above the best trivial baseline ({vs['baseline']} {100 * vs['baseline_accuracy']:.1f}%; "
                     f"{vs['margin_pt']:+.1f} pt, p = {vs['p']:.3g})")
    return flags


def _baselines(run: RunDir) -> dict[str, Any]:
    """The trivial baselines without their per-item results (those stay in eval/baselines.json)."""
    record = _load_json(run.eval_baselines_path) or {}
    return {k: ({kk: vv for kk, vv in v.items() if kk != "correct"} if isinstance(v, dict) and "accuracy" in v else v)
            for k, v in record.items()}


def variant_rows(manifest: dict[str, Any], eval_summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The untrained student and the run's method, each with its data size and teacher cost."""
    stages = manifest.get("stages", {})
    gen = stages.get("generate", {}).get("outputs", {})
    train = stages.get("train", {}).get("outputs", {})
    method = manifest.get("recipe", {}).get("method", "standard")
    extra = stages.get("variants", {}).get("outputs", {}).get("variants", {})
    labels = gen.get("label_histograms", {})
    candidates = [("none (base student)", "base", 0, 0),
                  (method, "merged", train.get("n_train"), gen.get("teacher_calls"))]
    candidates += [(name, f"variant-{name}", v.get("n_train"), v.get("teacher_calls")) for name, v in extra.items()]
    if FORMAT_ONLY in eval_summary:
        candidates.insert(1, ("none (base student shown the seeds: format only)", FORMAT_ONLY, 0, 0))
    rows = []
    for label, key, n_train, calls in candidates:
        acc = eval_summary.get(key)
        if acc:
            rows.append({"method": label, "artifact": key, "n_train": n_train, "teacher_calls": calls,
                         "accuracy": acc["accuracy"], "ci_low": acc["ci_low"], "ci_high": acc["ci_high"],
                         "n_eval": acc["n_eval"], "mcnemar_p_vs_base": acc.get("mcnemar_p_vs_base"),
                         "accuracy_flexible": acc.get("accuracy_flexible"),
                         "margin_pt": (acc.get("vs_baseline") or {}).get("margin_pt"), "flags": flags_of(acc),
                         "label_histogram": labels.get("main" if key == "merged" else key.removeprefix("variant-"))})
    base = next((r["accuracy"] for r in rows if r["artifact"] == "base"), None)
    for r in rows:  # points of accuracy over the untrained student per 100 teacher calls
        r["gain_pt_per_100_calls"] = (round(100 * (r["accuracy"] - base) / r["teacher_calls"] * 100, 2)
                                      if base is not None and r["teacher_calls"] else None)
    return rows


def recommend(rows: list[dict[str, Any]], max_drop_pt: float) -> dict[str, Any] | None:
    """Fastest unflagged artifact whose accuracy is within ``max_drop_pt`` points of the merged fp32 model.

    Flagged artifacts (collapsed, or not above the best trivial baseline) are never recommended; the result names
    each artifact left out and why (``excluded``). None when nothing is left (``recommendation_blocked`` says why).
    """
    merged = next((r for r in rows if r["name"] == "merged"), None)
    if merged is None:
        return None
    excluded: dict[str, str] = {}
    ok = []
    for r in rows:
        if r["name"] in ("base", FORMAT_ONLY):
            continue
        if r.get("flags"):
            excluded[r["name"]] = "; ".join(r["flags"])
        elif not r.get("decode_tok_s"):
            excluded[r["name"]] = "not benchmarked"
        elif 100 * (merged["accuracy"] - r["accuracy"]) > max_drop_pt:
            excluded[r["name"]] = f"{100 * (merged['accuracy'] - r['accuracy']):.1f} pt below the merged student"
        else:
            ok.append(r)
    if not ok:
        return {"name": None, "excluded": excluded}
    best = max(ok, key=lambda r: r["decode_tok_s"])
    return {"name": best["name"], "decode_tok_s": best["decode_tok_s"], "accuracy": best["accuracy"],
            "margin_pt": best.get("margin_pt"), "excluded": excluded,
            "rule": f"fastest unflagged decode within {max_drop_pt} pt of the merged student's accuracy "
                    f"({merged['format']} {merged['quant']})"}


def write_report(run: RunDir, max_drop_pt: float = 1.0, standard_arm: str | None = None) -> dict[str, Any]:
    """Write report/report.md and report/report.json from what the run directory holds (the method's own
    sections under report/sections/ are appended as they are). ``standard_arm``: the method's variant that is
    standard distillation, the reference of the arm comparisons (else the untrained student)."""
    from arte_edge.evaluation.comparisons import compare_arms
    from arte_edge.evaluation.report_markdown import render_markdown

    manifest = run.read_manifest()
    recipe = manifest.get("recipe", {})
    eval_summary = _load_json(run.eval_summary_path) or {}
    device, bench = _bench_by_name(run)
    rows = artifact_rows(run, eval_summary, bench)
    variants = variant_rows(manifest, eval_summary)
    reference = f"variant-{standard_arm}" if standard_arm and f"variant-{standard_arm}" in eval_summary else "base"
    report = {
        "run": recipe.get("name", run.root.name), "task": recipe.get("task"), "method": recipe.get("method"),
        "teacher": recipe.get("teacher", {}).get("model"), "student": recipe.get("student", {}).get("model"),
        "device": device, "n_eval": max((r["n_eval"] for r in rows), default=0),
        "artifacts": rows, "variants": variants,
        "baselines": _baselines(run),
        "recommendation": recommend(rows, max_drop_pt),
        "n_contaminated": manifest.get("stages", {}).get("generate", {}).get("outputs", {}).get("n_contaminated"),
        "comparisons": compare_arms(run, [{"label": v["method"], "artifact": v["artifact"],
                                            "teacher_calls": v["teacher_calls"]} for v in variants], reference),
        "stage_seconds": {k: v.get("seconds") for k, v in manifest.get("stages", {}).items() if k != "report"},
    }
    from arte_edge.evaluation.pareto import pareto_front, plot_pareto

    report["pareto_front"] = pareto_front([r for r in rows if not r.get("flags")])  # flagged ones never ship
    plot = plot_pareto(rows, run.report_dir / "pareto.png",
                       f"{report['run']}: accuracy vs decode latency on {device or 'host'}")
    report["pareto_png"] = "report/pareto.png" if plot else None
    sections = sorted(run.section_path("*").parent.glob("*.md"))
    report["sections"] = [str(p.relative_to(run.root)) for p in sections]
    atomic_write_json(run.report_dir / "report.json", report)
    markdown = render_markdown(report) + "".join("\n" + p.read_text() for p in sections)
    atomic_write_text(run.report_dir / "report.md", markdown)
    return {"report": "report/report.md", "json": "report/report.json"}
