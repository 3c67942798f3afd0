"""The report: one Markdown page and one JSON contract built from a run directory.

``report/report.json`` is a stable contract for CI users:
- ``artifacts``: one row per evaluated model (base student, merged student, each exported file) with
  ``name, format, quant, size_bytes, accuracy, ci_low, ci_high, n_eval, decode_tok_s, prompt_tok_s,
  ttft_ms_p50`` (accuracy and interval as fractions in [0, 1]; latency from the bench device).
- ``variants``: one row per training-data method or ablation with ``method, n_train, teacher_calls,
  accuracy, ci_low, ci_high, n_eval``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arte_edge.artifacts import Artifact, read_exported
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
    for name, acc in eval_summary.items():
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
            **{k: summary.get(k) for k in LATENCY_KEYS},
        })
    return rows


def variant_rows(manifest: dict[str, Any], eval_summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The untrained student and the run's method, each with its data size and teacher cost."""
    stages = manifest.get("stages", {})
    gen = stages.get("generate", {}).get("outputs", {})
    train = stages.get("train", {}).get("outputs", {})
    method = manifest.get("recipe", {}).get("method", "standard")
    extra = stages.get("variants", {}).get("outputs", {}).get("variants", {})
    candidates = [("none (base student)", "base", 0, 0),
                  (method, "merged", train.get("n_train"), gen.get("teacher_calls"))]
    candidates += [(name, f"variant-{name}", v.get("n_train"), v.get("teacher_calls")) for name, v in extra.items()]
    rows = []
    for label, key, n_train, calls in candidates:
        acc = eval_summary.get(key)
        if acc:
            rows.append({"method": label, "n_train": n_train, "teacher_calls": calls, "accuracy": acc["accuracy"],
                         "ci_low": acc["ci_low"], "ci_high": acc["ci_high"], "n_eval": acc["n_eval"],
                         "mcnemar_p_vs_base": acc.get("mcnemar_p_vs_base"),
                         "accuracy_flexible": acc.get("accuracy_flexible")})
    return rows


def recommend(rows: list[dict[str, Any]], max_drop_pt: float) -> dict[str, Any] | None:
    """Fastest artifact whose accuracy is within ``max_drop_pt`` points of the merged fp32 model."""
    merged = next((r for r in rows if r["name"] == "merged"), None)
    if merged is None:
        return None
    ok = [r for r in rows if r["name"] != "base" and r.get("decode_tok_s")
          and 100 * (merged["accuracy"] - r["accuracy"]) <= max_drop_pt]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["decode_tok_s"])
    return {"name": best["name"], "decode_tok_s": best["decode_tok_s"], "accuracy": best["accuracy"],
            "rule": f"fastest decode within {max_drop_pt} pt of the merged student's accuracy "
                    f"({merged['format']} {merged['quant']})"}


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [f"# arte-edge report: {report['run']}", "",
             f"Task **{report['task']}**, method **{report['method']}**, teacher `{report['teacher']}`, "
             f"student `{report['student']}`. Held-out n = {report['n_eval']}; accuracy with 95% Wilson interval; "
             f"latency on **{report.get('device') or 'not benchmarked'}** (medians). Accuracy is strict: the "
             "answer must be on the final `Answer:` line the app would parse; *flexible* also accepts an answer "
             "found elsewhere (a leading choice letter, the last number), so a gain only in *strict* is a gain "
             "in following the output format; *answered* is the share of outputs with a parseable answer.", "",
             "## Artifacts", "",
             "| artifact | format | quant | size MB | accuracy % | 95% CI | flexible % | answered % | "
             "Δ vs merged pt | decode tok/s | prompt tok/s | TTFT p50 ms | TTFT p90 ms | peak RSS MB |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["artifacts"]:
        lines.append(
            f"| {r['name']} | {r['format']} | {r['quant']} | {_fmt(r['size_bytes'], '.1f', 1e-6)} | "
            f"{_fmt(r['accuracy'], '.1f', 100)} | [{_fmt(r['ci_low'], '.1f', 100)}, {_fmt(r['ci_high'], '.1f', 100)}] "
            f"| {_fmt(r.get('accuracy_flexible'), '.1f', 100)} | {_fmt(r.get('answered'), '.0f', 100)} "
            f"| {_fmt(r['delta_vs_merged_pt'], '+.1f')} | {_fmt(r['decode_tok_s'], '.1f')} | "
            f"{_fmt(r['prompt_tok_s'], '.0f')} | {_fmt(r['ttft_ms_p50'], '.0f')} | {_fmt(r['ttft_ms_p90'], '.0f')} | "
            f"{_fmt(r['peak_rss_bytes'], '.0f', 1e-6)} |")
    lines += ["", "## Training-data variants", "",
              "| method | n_train | teacher calls | accuracy % | 95% CI | flexible % | McNemar p vs base |",
              "|---|---:|---:|---:|---|---:|---:|"]
    for v in report["variants"]:
        lines.append(f"| {v['method']} | {v['n_train']} | {v['teacher_calls']} | {_fmt(v['accuracy'], '.1f', 100)} | "
                     f"[{_fmt(v['ci_low'], '.1f', 100)}, {_fmt(v['ci_high'], '.1f', 100)}] | "
                     f"{_fmt(v.get('accuracy_flexible'), '.1f', 100)} | {_fmt(v.get('mcnemar_p_vs_base'), '.3f')} |")
    rec = report.get("recommendation")
    lines += ["", "## Recommendation", "",
              f"Ship **{rec['name']}** ({rec['decode_tok_s']:.1f} tok/s, {100 * rec['accuracy']:.1f}%): {rec['rule']}."
              if rec else "No artifact is both benchmarked and within the accuracy gate."]
    if report.get("pareto_png"):
        lines += ["", f"![accuracy vs latency](pareto.png)  Pareto front: {', '.join(report['pareto_front'])}"]
    lines += ["", "## Stage wall times", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report["stage_seconds"].items()]
    return "\n".join(lines) + "\n"


def write_report(run: RunDir, max_drop_pt: float = 1.0) -> dict[str, Any]:
    """Write report/report.md and report/report.json from what the run directory holds (the method's own
    sections under report/sections/ are appended as they are)."""
    manifest = run.read_manifest()
    recipe = manifest.get("recipe", {})
    eval_summary = _load_json(run.eval_summary_path) or {}
    device, bench = _bench_by_name(run)
    rows = artifact_rows(run, eval_summary, bench)
    report = {
        "run": recipe.get("name", run.root.name), "task": recipe.get("task"), "method": recipe.get("method"),
        "teacher": recipe.get("teacher", {}).get("model"), "student": recipe.get("student", {}).get("model"),
        "device": device, "n_eval": max((r["n_eval"] for r in rows), default=0),
        "artifacts": rows, "variants": variant_rows(manifest, eval_summary),
        "recommendation": recommend(rows, max_drop_pt),
        "stage_seconds": {k: v.get("seconds") for k, v in manifest.get("stages", {}).items() if k != "report"},
    }
    from arte_edge.evaluation.pareto import pareto_front, plot_pareto

    report["pareto_front"] = pareto_front(rows)
    plot = plot_pareto(rows, run.report_dir / "pareto.png",
                       f"{report['run']}: accuracy vs decode latency on {device or 'host'}")
    report["pareto_png"] = "report/pareto.png" if plot else None
    sections = sorted(run.section_path("*").parent.glob("*.md"))
    report["sections"] = [str(p.relative_to(run.root)) for p in sections]
    atomic_write_json(run.report_dir / "report.json", report)
    markdown = render_markdown(report) + "".join("\n" + p.read_text() for p in sections)
    atomic_write_text(run.report_dir / "report.md", markdown)
    return {"report": "report/report.md", "json": "report/report.json"}
