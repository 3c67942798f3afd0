"""The report: one Markdown page and one JSON contract built from a run directory.

``report/report.json`` is a stable contract for CI users:
- ``artifacts``: one row per evaluated model (base student, merged student, each exported file) with
  ``name, format, quant, size_bytes, accuracy, ci_low, ci_high, n_eval, decode_tok_s, prompt_tok_s,
  ttft_ms_p50`` (accuracy and interval as fractions in [0, 1]; latency from the bench device), and
  ``bytes_per_param``: its size over the merged student's parameter count (None when either is unknown).
  Each row also has ``margin_pt`` (points over the best trivial baseline), ``top_answer``/``top_share`` (its
  most frequent answer) and ``flags`` (why it must not be shipped: a collapse onto one answer, no gain over the
  best trivial baseline, failing the accuracy gate); a flagged row is never recommended. ``accuracy_gate``: an
  exported artifact against the merged student (see :func:`accuracy_gate`; None for base/format-only/merged).
- ``accuracy_gate``: the gate's settings and the artifacts whose relative gate was not applied (too few items).
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
from arte_edge.config import ReportConfig
from arte_edge.evaluation.baselines import FORMAT_ONLY
from arte_edge.evaluation.comparisons import compare_arms, item_flags
from arte_edge.formats import PLAIN_SUFFIX
from arte_edge.rundir import RunDir, atomic_write_json, atomic_write_text
from arte_edge.stats import mcnemar_worse_p

LATENCY_KEYS = ("decode_tok_s", "prompt_tok_s", "ttft_ms_p50", "ttft_ms_p90", "tpot_ms_p50", "tpot_ms_p90",
                "peak_rss_bytes")
GATE_REFERENCE = "merged"  # what every exported artifact is gated against
GATE_ALPHA = 0.05
MIN_RELATIVE_ACCURACY: float = ReportConfig.model_fields["min_relative_accuracy"].default
GATE_MIN_ITEMS: int = ReportConfig.model_fields["gate_min_items"].default
_UNGATED = ("base", FORMAT_ONLY, GATE_REFERENCE)


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _bench_by_name(run: RunDir) -> tuple[str | None, dict[str, Any]]:
    files = sorted(run.bench_path("*").parent.glob("*.json"))
    if not files:
        return None, {}
    data = json.loads(files[0].read_text())
    return data.get("device", files[0].stem), data.get("artifacts", {})


def artifact_rows(run: RunDir, eval_summary: dict[str, Any], bench: dict[str, Any], *,
                  min_relative_accuracy: float = MIN_RELATIVE_ACCURACY,
                  gate_min_items: int = GATE_MIN_ITEMS) -> list[dict[str, Any]]:
    """One row per evaluated model, joining accuracy, latency and size; each exported artifact is gated against
    the merged student on its per-item results (``eval/<name>.jsonl``, see :func:`accuracy_gate`)."""
    known = {a.name: a for a in read_exported(run.root)}
    n_params = parameter_count(run.merged_dir)
    merged = eval_summary.get(GATE_REFERENCE)
    merged_acc = (merged or {}).get("accuracy")
    merged_items = item_flags(run, GATE_REFERENCE) if merged else {}
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
        gate = (None if merged is None or name in _UNGATED else
                accuracy_gate(acc, merged, _items_of(run, name, acc, merged, merged_items), merged_items,
                              min_relative=min_relative_accuracy, min_items=gate_min_items))
        size = b.get("size_bytes") or (art.size_bytes if art else None)
        rows.append({
            "name": name,
            "format": fmt,
            "quant": quant,
            "size_bytes": size,
            "bytes_per_param": round(size / n_params, 4) if size and n_params else None,
            "accuracy": acc["accuracy"], "ci_low": acc["ci_low"], "ci_high": acc["ci_high"], "n_eval": acc["n_eval"],
            "delta_vs_merged_pt": None if merged_acc is None else round(100 * (acc["accuracy"] - merged_acc), 2),
            "mcnemar_p_vs_base": acc.get("mcnemar_p_vs_base"),
            "accuracy_flexible": acc.get("accuracy_flexible"), "answered": acc.get("answered"),
            "margin_pt": (acc.get("vs_baseline") or {}).get("margin_pt"),
            "vs_baseline": acc.get("vs_baseline"), "top_answer": acc.get("top_answer"),
            "top_share": acc.get("top_share"), "answer_histogram": acc.get("answer_histogram"),
            "flags": flags_of(acc, gate), "accuracy_gate": gate,
            "decoding": acc.get("decoding"), "batch1_check": acc.get("batch1_check"),
            "adopted_from": acc.get("adopted_from"), "n_adopted": acc.get("n_adopted"),
            **{k: summary.get(k) for k in LATENCY_KEYS},
        })
    return rows


def parameter_count(hf_dir: Path) -> int | None:
    """Parameters of an HF folder, summed over its safetensors headers (a tied matrix is stored, and counted,
    once); None when it has no readable safetensors."""
    import math
    import struct

    files = sorted(hf_dir.glob("*.safetensors")) if hf_dir.is_dir() else []
    total = 0
    try:
        for path in files:
            with path.open("rb") as fh:
                header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
            total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return total or None


def _items_of(run: RunDir, name: str, acc: dict[str, Any], merged: dict[str, Any],
              merged_items: dict[str, bool]) -> dict[str, bool]:
    """``{item_id: correct}`` of ``name``; an export that is the merged student's own file was scored once, as
    ``merged`` (no ``eval/<name>.jsonl``; same runtime, accuracy and n), so it has the merged student's results."""
    items = item_flags(run, name)
    same = ("format", "quant", "accuracy", "n_eval")
    if not items and merged_items and all(acc.get(k) == merged.get(k) for k in same):
        return merged_items
    return items


def flags_of(acc: dict[str, Any], gate: dict[str, Any] | None = None) -> list[str]:
    """Why a scored model must not be shipped (empty when nothing is wrong): a collapse onto one answer, no gain
    over the best trivial baseline, and (with ``gate``, from :func:`accuracy_gate`) failing the accuracy gate."""
    flags = []
    if acc.get("collapsed"):
        flags.append(f"collapsed: answers {acc['top_answer']} on {100 * acc['top_share']:.0f}% of items")
    vs = acc.get("vs_baseline") or {}
    if vs.get("beats") is False:
        flags.append(f"not above the best trivial baseline ({vs['baseline']} {100 * vs['baseline_accuracy']:.1f}%; "
                     f"{vs['margin_pt']:+.1f} pt, p = {vs['p']:.3g})")
    if gate and gate["below_relative"]:
        flags.append(f"below {100 * gate['min_relative_accuracy']:g}% of merged ({100 * acc['accuracy']:.1f}% < "
                     f"{100 * gate['threshold']:.1f}% on {gate['n']} items)")
    if gate and gate["worse"]:
        flags.append(f"worse than merged (p={gate['p_worse']:.2g}, exact one-sided McNemar on {gate['n_paired']} "
                     f"items: right only in merged {gate['only_merged']}, only here {gate['only_artifact']})")
    return flags


def accuracy_gate(acc: dict[str, Any], merged: dict[str, Any], items: dict[str, bool],
                  merged_items: dict[str, bool], *, min_relative: float = MIN_RELATIVE_ACCURACY,
                  min_items: int = GATE_MIN_ITEMS, alpha: float = GATE_ALPHA) -> dict[str, Any]:
    """An exported artifact against the merged student (MLPerf-style: at least ``min_relative`` of its accuracy).

    ``acc``/``merged``: their summary rows; ``items``/``merged_items``: ``{item_id: correct}``. Two checks:

    - **relative**: accuracy < ``min_relative`` × the merged accuracy, applied only when both were scored on at
      least ``min_items`` items (on fewer, n is too small to judge so small a drop; ``note`` says so);
    - **paired**: an exact one-sided McNemar test on the shared items (H1: the artifact is worse), ``worse``
      when ``p_worse < alpha``; not run without per-item results for both.
    """
    n = min(int(acc["n_eval"]), int(merged["n_eval"]))
    applied = n >= min_items
    threshold = min_relative * merged["accuracy"]
    shared = [i for i in merged_items if i in items]
    only_artifact = sum(1 for i in shared if items[i] and not merged_items[i])
    only_merged = sum(1 for i in shared if merged_items[i] and not items[i])
    p_worse = mcnemar_worse_p(only_artifact, only_merged) if shared else None
    notes = []
    if not applied:
        notes.append(f"relative gate not applied: n = {n} < {min_items} items (paired test only)")
    if not shared:
        notes.append("paired test not run: no per-item results shared with merged")
    return {"reference": GATE_REFERENCE, "min_relative_accuracy": min_relative, "min_items": min_items,
            "alpha": alpha, "n": n, "threshold": threshold, "relative": (acc["accuracy"] / merged["accuracy"]
                                                                       if merged["accuracy"] else None),
            "relative_applied": applied, "below_relative": applied and acc["accuracy"] < threshold - 1e-12,
            "n_paired": len(shared), "only_artifact": only_artifact, "only_merged": only_merged,
            "p_worse": p_worse,
            "worse": p_worse is not None and p_worse < alpha, "note": "; ".join(notes) or None}


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

    Flagged artifacts (collapsed, not above the best trivial baseline, or failing the accuracy gate against the
    merged student) are never recommended; the result names each artifact left out and why (``excluded``), and
    the rule states the gate. ``name`` is None when nothing is left; None when there is no merged row.
    """
    merged = next((r for r in rows if r["name"] == GATE_REFERENCE), None)
    if merged is None:
        return None
    excluded: dict[str, str] = {}
    ok = []
    for r in rows:
        if r["name"] in ("base", FORMAT_ONLY):
            continue
        if r["name"].endswith(PLAIN_SUFFIX):
            excluded[r["name"]] = "comparison arm: quantized without the run's importance matrix"
        elif r.get("flags"):
            excluded[r["name"]] = "; ".join(r["flags"])
        elif not r.get("decode_tok_s"):
            excluded[r["name"]] = "not benchmarked"
        elif 100 * (merged["accuracy"] - r["accuracy"]) > max_drop_pt:
            excluded[r["name"]] = f"{100 * (merged['accuracy'] - r['accuracy']):.1f} pt below the merged student"
        else:
            ok.append(r)
    if not ok:
        return {"name": None, "excluded": excluded, "gate": gate_rule(rows)}
    best = max(ok, key=lambda r: r["decode_tok_s"])
    gate = gate_rule(rows)
    note = (best.get("accuracy_gate") or {}).get("note")
    return {"name": best["name"], "decode_tok_s": best["decode_tok_s"], "accuracy": best["accuracy"],
            "margin_pt": best.get("margin_pt"), "excluded": excluded, "gate": gate, "gate_note": note,
            "rule": f"fastest unflagged decode within {max_drop_pt} pt of the merged student's accuracy "
                    f"({merged['format']} {merged['quant']})" + (f" that passes the accuracy gate ({gate})" if gate
                                                                  else "")}


def gate_rule(rows: list[dict[str, Any]]) -> str | None:
    """The accuracy gate in words, from the first gated row (None when no row was gated)."""
    g = next((r["accuracy_gate"] for r in rows if r.get("accuracy_gate")), None)
    if g is None:
        return None
    return (f"at least {100 * g['min_relative_accuracy']:g}% of the merged student's accuracy when scored on "
            f"≥ {g['min_items']} items, and not worse than it by an exact one-sided McNemar test on the same items "
            f"(p < {g['alpha']:g})")


def gate_summary(rows: list[dict[str, Any]], min_relative_accuracy: float, gate_min_items: int) -> dict[str, Any]:
    """The report's ``accuracy_gate``: its settings and the artifacts whose relative gate was not applied."""
    return {"reference": GATE_REFERENCE, "min_relative_accuracy": min_relative_accuracy,
            "min_items": gate_min_items, "alpha": GATE_ALPHA, "rule": gate_rule(rows),
            "relative_not_applied": {r["name"]: r["accuracy_gate"]["n"] for r in rows
                                     if r.get("accuracy_gate") and not r["accuracy_gate"]["relative_applied"]}}


def _gate_settings(recipe: dict[str, Any], min_relative_accuracy: float | None,
                   gate_min_items: int | None) -> tuple[float, int]:
    """Explicit values, else the run's recipe (``report`` section), else the defaults."""
    section = recipe.get("report") or {}
    rel = min_relative_accuracy if min_relative_accuracy is not None else section.get("min_relative_accuracy")
    n = gate_min_items if gate_min_items is not None else section.get("gate_min_items")
    return (MIN_RELATIVE_ACCURACY if rel is None else float(rel)), (GATE_MIN_ITEMS if n is None else int(n))


def write_report(run: RunDir, max_drop_pt: float = 1.0, standard_arm: str | None = None, *,
                 min_relative_accuracy: float | None = None, gate_min_items: int | None = None) -> dict[str, Any]:
    """Write report/report.md and report/report.json from what the run directory holds (the method's own
    sections under report/sections/ are appended as they are). ``standard_arm``: the method's variant that is
    standard distillation, the reference of the arm comparisons (else the untrained student).
    ``min_relative_accuracy``/``gate_min_items``: the accuracy gate (default: the run's recipe ``report``
    section, else :class:`arte_edge.config.ReportConfig`'s defaults)."""
    from arte_edge.evaluation.quantization import auto_mix_row, imatrix_pairs
    from arte_edge.evaluation.report_markdown import render_markdown

    manifest = run.read_manifest()
    recipe = manifest.get("recipe", {})
    eval_summary = _load_json(run.eval_summary_path) or {}
    device, bench = _bench_by_name(run)
    rel, min_items = _gate_settings(recipe, min_relative_accuracy, gate_min_items)
    rows = artifact_rows(run, eval_summary, bench, min_relative_accuracy=rel, gate_min_items=min_items)
    variants = variant_rows(manifest, eval_summary)
    reference = f"variant-{standard_arm}" if standard_arm and f"variant-{standard_arm}" in eval_summary else "base"
    report = {
        "run": recipe.get("name", run.root.name), "task": recipe.get("task"), "method": recipe.get("method"),
        "teacher": recipe.get("teacher", {}).get("model"), "student": recipe.get("student", {}).get("model"),
        "device": device, "n_eval": max((r["n_eval"] for r in rows), default=0),
        "artifacts": rows, "variants": variants,
        "baselines": _baselines(run),
        "recommendation": recommend(rows, max_drop_pt),
        "accuracy_gate": gate_summary(rows, rel, min_items),
        "n_contaminated": manifest.get("stages", {}).get("generate", {}).get("outputs", {}).get("n_contaminated"),
        "comparisons": compare_arms(run, [{"label": v["method"], "artifact": v["artifact"],
                                            "teacher_calls": v["teacher_calls"]} for v in variants], reference),
        "stage_seconds": {k: v.get("seconds") for k, v in manifest.get("stages", {}).items() if k != "report"},
        "imatrix": imatrix_pairs(run, eval_summary),
        "auto_mix": auto_mix_row(run, eval_summary),
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
