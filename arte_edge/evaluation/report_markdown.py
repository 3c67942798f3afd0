"""The human-readable report (Markdown) rendered from the report's JSON contract."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def _histogram(counts: dict[str, int] | None, top: int = 6) -> str:
    if not counts:
        return "–"
    items = list(counts.items())
    shown = ", ".join(f"{k} {v}" for k, v in items[:top])
    return shown + (f", … ({len(items) - top} more)" if len(items) > top else "")


def _intro(report: dict[str, Any]) -> list[str]:
    return [f"# arte-edge report: {report['run']}", "",
            f"Task **{report['task']}**, method **{report['method']}**, teacher `{report['teacher']}`, "
            f"student `{report['student']}`. Held-out n = {report['n_eval']}; accuracy with 95% Wilson interval; "
            f"latency on **{report.get('device') or 'not benchmarked'}** (medians). Accuracy is strict: the "
            "answer must be on the final `Answer:` line the app would parse; *flexible* also accepts an answer "
            "found elsewhere (a leading choice letter, the last number), so a gain only in *strict* is a gain "
            "in following the output format; *answered* is the share of outputs with a parseable answer. A gain "
            "counts only over the best trivial baseline on the same items (*vs baseline*).", ""]


def _baselines(report: dict[str, Any]) -> list[str]:
    b = report.get("baselines") or {}
    if not b.get("best"):
        return []
    lines = ["## Trivial baselines on the same items", "", "| baseline | accuracy % | what it is |", "|---|---:|---|"]
    if "chance" in b:
        lines.append(f"| chance | {_fmt(b['chance']['accuracy'], '.1f', 100)} | a uniform guess among each item's "
                     "choices |")
    if "constant" in b:
        lines.append(f"| constant answer `{b['constant']['answer']}` | {_fmt(b['constant']['accuracy'], '.1f', 100)} "
                     "| the one answer that scores best on these items (chosen knowing the gold answers) |")
    if "format_only" in b:
        lines.append(f"| format only | {_fmt(b['format_only']['accuracy'], '.1f', 100)} | the untrained student "
                     "shown the seed examples (`base-fewshot`) |")
    lines += ["", f"Best: **{b['best']['name']}** ({_fmt(b['best']['accuracy'], '.1f', 100)}%). Gold answers: "
              f"{_histogram(b.get('gold_histogram'))}.", ""]
    return lines


def _artifacts(report: dict[str, Any]) -> list[str]:
    lines = ["## Artifacts", "",
             "| artifact | format | quant | size MB | bytes/param | accuracy % | 95% CI | vs baseline pt | "
             "flexible % | answered % | top answer | Δ vs merged pt | decode tok/s | prompt tok/s | TTFT p50 ms | "
             "TTFT p90 ms | peak RSS MB | flags |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["artifacts"]:
        top = f"{r['top_answer']} ({_fmt(r.get('top_share'), '.0f', 100)}%)" if r.get("top_answer") else "–"
        lines.append(
            f"| {r['name']} | {r['format']} | {r['quant']} | {_fmt(r['size_bytes'], '.1f', 1e-6)} | "
            f"{_fmt(r.get('bytes_per_param'), '.3f')} | "
            f"{_fmt(r['accuracy'], '.1f', 100)} | [{_fmt(r['ci_low'], '.1f', 100)}, {_fmt(r['ci_high'], '.1f', 100)}] "
            f"| {_fmt(r.get('margin_pt'), '+.1f')} | {_fmt(r.get('accuracy_flexible'), '.1f', 100)} "
            f"| {_fmt(r.get('answered'), '.0f', 100)} | {top} | {_fmt(r['delta_vs_merged_pt'], '+.1f')} "
            f"| {_fmt(r['decode_tok_s'], '.1f')} | {_fmt(r['prompt_tok_s'], '.0f')} | {_fmt(r['ttft_ms_p50'], '.0f')} "
            f"| {_fmt(r['ttft_ms_p90'], '.0f')} | {_fmt(r['peak_rss_bytes'], '.0f', 1e-6)} "
            f"| {'; '.join(r.get('flags') or []) or 'ok'} |")
    lines += _gate(report)
    lines += ["", "Answers given (most frequent first; `(none)` = no parseable answer):", ""]
    lines += [f"- {r['name']}: {_histogram(r.get('answer_histogram'))}" for r in report["artifacts"]]
    decoded = [r for r in report["artifacts"] if r.get("decoding")]
    if decoded:
        if any(r["decoding"] != "batch 1" for r in decoded):
            why = ("Batched rows are fp32 references (batched decoding is not batch-invariant: the check "
                   "re-answers their first items one at a time); shipped files are scored one sequence at a time, "
                   "as a device runs them.")
        else:
            why = "Every row is scored one sequence at a time (batch 1)."
        lines += ["", "Decoding while scoring (greedy): " + "; ".join(_decoding(r) for r in decoded) + ". " + why]
    return lines


def _gate(report: dict[str, Any]) -> list[str]:
    gate = report.get("accuracy_gate") or {}
    if not gate.get("rule"):
        return []
    lines = ["", f"Accuracy gate (each exported artifact against the merged student): {gate['rule']}; an artifact "
             "that fails it is flagged and never recommended."]
    small = gate.get("relative_not_applied") or {}
    if small:
        names = ", ".join(f"{name} (n = {n})" for name, n in small.items())
        lines[-1] += (f" The relative gate was **not applied** to {names}: n is too small (fewer than "
                      f"{gate['min_items']} items), so only the paired test gated them.")
    return lines


def _decoding(row: dict[str, Any]) -> str:
    check, adopted = row.get("batch1_check"), row.get("adopted_from")
    text = f"{row['name']} {row['decoding']}"
    if adopted:  # the method scored this very file the same way (evaluation.reuse): its rows, not a second decode
        count = f"{row['n_adopted']} of {row['n_eval']} rows" if row.get("n_adopted") is not None else "rows"
        text += f" ({count} adopted from {', '.join(adopted)}: the same file bytes, runtime and decoding)"
    if not check:
        return text
    return (f"{text} (vs batch 1 on {check['n']} items: {check['identical']} identical, "
            f"{check['same_answer']} same answer)")


def _arms(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Training-data arms", "",
             "| arm | n_train | answers in its data | teacher calls | accuracy % | 95% CI | vs baseline pt | "
             "pt over base per 100 calls | flexible % | McNemar p vs base | flags |",
             "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for v in report["variants"]:
        lines.append(f"| {v['method']} | {v['n_train']} | {_histogram(v.get('label_histogram'), 5)} | "
                     f"{v['teacher_calls']} | {_fmt(v['accuracy'], '.1f', 100)} | "
                     f"[{_fmt(v['ci_low'], '.1f', 100)}, {_fmt(v['ci_high'], '.1f', 100)}] | "
                     f"{_fmt(v.get('margin_pt'), '+.1f')} | {_fmt(v.get('gain_pt_per_100_calls'), '+.2f')} | "
                     f"{_fmt(v.get('accuracy_flexible'), '.1f', 100)} | {_fmt(v.get('mcnemar_p_vs_base'), '.3f')} | "
                     f"{'; '.join(v.get('flags') or []) or 'ok'} |")
    dropped = report.get("n_contaminated")
    if dropped is not None:
        lines += ["", "Teacher-drafted questions dropped as copies of held-out items (exact, or a shared 13-word "
                  f"run): {dropped}."]
    comparisons = report.get("comparisons") or []
    if comparisons:
        ref = comparisons[0]["reference"]
        lines += ["", f"Each arm against `{ref}` on the same items: difference with a paired bootstrap 95% interval, "
                  "exact McNemar p, p adjusted by Holm over these comparisons, and the smallest difference these "
                  "items could detect at 80% power (MDE, from the discordance seen); *items for Δ*: how many "
                  "paired items a rerun would need to detect a true difference of the size seen here at the same "
                  "discordance (a plan for the next run, not evidence; as noisy as the Δ it starts from).", "",
                  "| arm | n | Δ pt | 95% CI pt | only arm / only ref | p | p (Holm) | MDE pt | items for Δ |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        for c in comparisons:
            lines.append(f"| {c['label']} | {c['n']} | {_fmt(c['diff'], '+.1f', 100)} | "
                         f"[{_fmt(c['diff_low'], '+.1f', 100)}, {_fmt(c['diff_high'], '+.1f', 100)}] | "
                         f"{c['only_a']} / {c['only_b']} | {_fmt(c['p'], '.3f')} | {_fmt(c['p_holm'], '.3f')} | "
                         f"{_fmt(c['mde'], '.1f', 100)} | {_fmt(c.get('n_needed'), ',.0f')} |")
    return lines


def _recommendation(report: dict[str, Any]) -> list[str]:
    rec = report.get("recommendation")
    lines = ["", "## Recommendation", ""]
    if rec and rec.get("name"):
        lines.append(f"Ship **{rec['name']}** ({rec['decode_tok_s']:.1f} tok/s, {100 * rec['accuracy']:.1f}%, "
                     f"{_fmt(rec.get('margin_pt'), '+.1f')} pt over the best trivial baseline): {rec['rule']}."
                     + (f" Note: {rec['gate_note']}." if rec.get("gate_note") else ""))
    elif rec:
        lines.append("**No artifact can be recommended**: every candidate is flagged, not benchmarked or below the "
                     "accuracy gate (reasons below).")
    else:
        lines.append("No artifact is both benchmarked and within the accuracy gate.")
    for name, why in (rec or {}).get("excluded", {}).items():
        lines.append(f"- not {name}: {why}")
    return lines


def _quantization(report: dict[str, Any]) -> list[str]:
    pairs, auto = report.get("imatrix") or [], report.get("auto_mix")
    if not pairs and not auto:
        return []
    lines = ["", "## Quantization choices", ""]
    if pairs:
        lines += ["The run's importance matrix (from its training conversations) against plain quantization of the "
                  "same type: KL(merged || file) per position and top-1 agreement on the export's verification "
                  "texts, accuracy on the held-out items (paired: Δ with its bootstrap 95% CI, exact McNemar p, Holm).",
                  "", "| type | MB | KL with / without | top-1 with / without | accuracy % with / without | Δ pt "
                  "[95% CI] | p (Holm) |", "|---|---:|---|---|---|---|---:|"]
        for r in pairs:
            w, wo, pc = r["with"], r["without"], r.get("paired") or {}
            lines.append(f"| {r['quant']} | {r['size_mb']:.1f} | {_fmt(w['kl'], '.4f')} / {_fmt(wo['kl'], '.4f')} | "
                         f"{_fmt(w['top1'], '.3f')} / {_fmt(wo['top1'], '.3f')} | "
                         f"{_fmt(r['accuracy'], '.1f', 100)} / {_fmt(r['plain_accuracy'], '.1f', 100)} | "
                         f"{_fmt(pc.get('diff'), '+.1f', 100)} [{_fmt(pc.get('diff_low'), '+.1f', 100)}, "
                         f"{_fmt(pc.get('diff_high'), '+.1f', 100)}] | {_fmt(pc.get('p_holm'), '.3f')} |")
    if auto:
        near = auto.get("nearest") or {}
        types = ", ".join(f"{k} {v}" for k, v in (auto.get("type_histogram") or {}).items())
        lines += ["", f"Auto mix ({auto.get('budget')}): {auto['size_mb']:.1f} MB, KL {_fmt(auto.get('kl'), '.4f')} "
                  f"(planner's prediction on the training texts {_fmt(auto.get('predicted_kl'), '.4f')}), top-1 "
                  f"{_fmt(auto.get('top1'), '.3f')}, accuracy {_fmt(auto.get('accuracy'), '.1f', 100)}%; tensors: "
                  f"{types}."]
        if near:
            lower = auto.get("kl") is not None and near.get("kl") is not None and auto["kl"] < near["kl"]
            pc = auto.get("paired") or {}
            lines[-1] += (f" Fixed type of nearest size: {near['artifact']} {near['size_mb']:.1f} MB, KL "
                          f"{_fmt(near.get('kl'), '.4f')}, top-1 {_fmt(near.get('top1'), '.3f')}, accuracy "
                          f"{_fmt(near.get('accuracy'), '.1f', 100)}%: the mix's KL is "
                          f"{'lower' if lower else '**not lower**'}; accuracy Δ {_fmt(pc.get('diff'), '+.1f', 100)} pt "
                          f"(McNemar p {_fmt(pc.get('p'), '.3f')}).")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = (_intro(report) + _baselines(report) + _artifacts(report) + _quantization(report) + _arms(report)
             + _recommendation(report))
    if report.get("pareto_png"):
        front = ", ".join(report["pareto_front"]) or "none (every benchmarked artifact is flagged)"
        lines += ["", f"![accuracy vs latency](pareto.png)  Pareto front of the unflagged artifacts: {front}"]
    lines += ["", "## Stage wall times", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report["stage_seconds"].items()]
    return "\n".join(lines) + "\n"
