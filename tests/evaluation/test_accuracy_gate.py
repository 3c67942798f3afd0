"""The accuracy gate: an exported artifact below 99% of the merged student (on enough items), or worse than it
by a paired test on the same items, is flagged and never recommended (hand-made per-item rows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from arte_edge.config import ReportConfig
from arte_edge.evaluation.report import accuracy_gate, artifact_rows, recommend, write_report
from arte_edge.rundir import RunDir, atomic_write_json
from arte_edge.stats import accuracy_summary, mcnemar_p, mcnemar_worse_p


def _pair(n: int, both: int, only_merged: int, only_artifact: int) -> tuple[list[bool], list[bool]]:
    """Per-item correctness of (merged, artifact) on ``n`` items with the given concordant/discordant counts."""
    merged = [True] * both + [True] * only_merged + [False] * only_artifact
    artifact = [True] * both + [False] * only_merged + [True] * only_artifact
    rest = n - len(merged)
    return merged + [False] * rest, artifact + [False] * rest


def _write_run(root: Path, flags: dict[str, list[bool]], tok_s: dict[str, float],
               recipe: dict[str, Any] | None = None) -> RunDir:
    """A run directory holding eval/<name>.jsonl, eval/summary.json and bench/host.json for ``flags``."""
    run = RunDir(root)
    summary = {}
    for name, correct in flags.items():
        rows = [{"item_id": f"i{i}", "correct": c, "predicted": "A" if c else "B"} for i, c in enumerate(correct)]
        run.eval_rows_path(name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary[name] = {**accuracy_summary(correct), "format": "hf" if name == "merged" else "gguf",
                         "quant": "fp32" if name == "merged" else name}
    atomic_write_json(run.eval_summary_path, summary)
    atomic_write_json(run.bench_path("host"), {"device": "host", "artifacts": {
        name: {"format": summary[name]["format"], "quant": summary[name]["quant"], "size_bytes": 1000,
               "summary": {"decode_tok_s": tok_s[name]}} for name in flags}})
    if recipe is not None:
        atomic_write_json(run.manifest_path, {"recipe": recipe, "stages": {}})
    return run


def _rows(run: RunDir) -> dict[str, dict[str, Any]]:
    summary = json.loads(run.eval_summary_path.read_text())
    bench = json.loads(run.bench_path("host").read_text())["artifacts"]
    return {r["name"]: r for r in artifact_rows(run, summary, bench)}


def test_two_points_below_merged_on_400_items_is_flagged_and_not_recommended(tmp_path: Path) -> None:
    # merged 50.0%, q4 48.0% (< 99% × 50% = 49.5%); the paired test alone would not catch it (20 vs 12).
    merged, q4 = _pair(400, 180, 20, 12)
    _, q8 = _pair(400, 200, 0, 0)
    run = _write_run(tmp_path, {"merged": merged, "q4": q4, "q8": q8}, {"merged": 10, "q4": 60, "q8": 30})
    rows = _rows(run)
    gate = rows["q4"]["accuracy_gate"]
    assert gate["relative_applied"] and gate["below_relative"] and not gate["worse"] and gate["n"] == 400
    assert rows["q4"]["flags"] == ["below 99% of merged (48.0% < 49.5% on 400 items)"]
    assert rows["q8"]["flags"] == [] and rows["merged"]["flags"] == [] and rows["merged"]["accuracy_gate"] is None
    rec = recommend(list(rows.values()), max_drop_pt=5.0)  # the 2-point drop alone would be allowed
    assert rec is not None and rec["name"] == "q8"  # q4 is faster but gated
    assert rec["excluded"]["q4"].startswith("below 99% of merged")
    assert "99% of the merged student's accuracy" in rec["rule"] and "McNemar" in rec["rule"]


def test_clearly_worse_by_mcnemar_on_100_items_is_flagged(tmp_path: Path) -> None:
    merged, bad = _pair(100, 45, 15, 0)  # 60% vs 45%: 15 items right only in merged, none the other way
    run = _write_run(tmp_path, {"merged": merged, "bad": bad}, {"merged": 10, "bad": 50})
    row = _rows(run)["bad"]
    gate = row["accuracy_gate"]
    assert not gate["relative_applied"] and "relative gate not applied: n = 100 < 300" in gate["note"]
    assert gate["worse"] and gate["p_worse"] == pytest.approx(0.5 ** 15, rel=1e-3)
    assert len(row["flags"]) == 1 and row["flags"][0].startswith("worse than merged (p=3.1e-05")
    rec = recommend(list(_rows(run).values()), max_drop_pt=50.0)
    assert rec is not None and rec["name"] == "merged" and "worse than merged" in rec["excluded"]["bad"]


def test_equal_artifact_is_not_flagged(tmp_path: Path) -> None:
    merged, same = _pair(100, 60, 0, 0)
    _, close = _pair(100, 56, 4, 2)  # 58% vs 60%: below 99%, but on 100 items only the paired test gates (p = 0.34)
    run = _write_run(tmp_path, {"merged": merged, "same": same, "close": close},
                     {"merged": 10, "same": 20, "close": 30})
    rows = _rows(run)
    assert rows["same"]["flags"] == [] and rows["same"]["accuracy_gate"]["p_worse"] == 1.0
    assert rows["close"]["flags"] == [] and not rows["close"]["accuracy_gate"]["below_relative"]
    rec = recommend(list(rows.values()), max_drop_pt=5.0)
    assert rec is not None and rec["name"] == "close" and "n = 100 < 300" in rec["gate_note"]


def test_export_scored_once_as_merged_passes_the_paired_test(tmp_path: Path) -> None:
    merged, same = _pair(100, 60, 0, 0)
    run = _write_run(tmp_path, {"merged": merged, "gguf-q8_0": same}, {"merged": 10, "gguf-q8_0": 10})
    summary = json.loads(run.eval_summary_path.read_text())
    summary["gguf-q8_0"].update(format="hf", quant="fp32")  # the same file as merged: one runtime, scored once
    atomic_write_json(run.eval_summary_path, summary)
    run.eval_rows_path("gguf-q8_0").unlink()
    rows = {r["name"]: r for r in artifact_rows(run, summary, {})}
    gate = rows["gguf-q8_0"]["accuracy_gate"]
    assert gate["n_paired"] == 100 and gate["p_worse"] == 1.0 and rows["gguf-q8_0"]["flags"] == []


def test_one_sided_p_is_half_the_two_sided_mcnemar_when_worse() -> None:
    merged, art = _pair(200, 50, 14, 5)
    assert mcnemar_worse_p(5, 14) == pytest.approx(mcnemar_p(art, merged) / 2)
    assert mcnemar_worse_p(14, 5) > 0.5 and mcnemar_worse_p(0, 0) == 1.0


def test_gate_without_per_item_rows_uses_the_relative_check_only() -> None:
    acc = {"accuracy": 0.40, "n_eval": 500}
    gate = accuracy_gate(acc, {"accuracy": 0.5, "n_eval": 500}, {}, {})
    assert gate["below_relative"] and not gate["worse"] and gate["p_worse"] is None
    assert "paired test not run" in gate["note"]
    assert not accuracy_gate(acc, {"accuracy": 0.5, "n_eval": 500}, {}, {}, min_relative=0.8)["below_relative"]


def test_report_config_defaults() -> None:
    cfg = ReportConfig()
    assert (cfg.min_relative_accuracy, cfg.gate_min_items) == (0.99, 300)
    with pytest.raises(ValueError):
        ReportConfig(min_relative_accuracy=1.5)


def test_write_report_states_the_gate_and_reads_the_recipe(tmp_path: Path) -> None:
    merged, q4 = _pair(400, 180, 20, 12)
    flags = {"merged": merged, "q4": q4}
    run = _write_run(tmp_path / "a", flags, {"merged": 10, "q4": 60}, recipe={"name": "gate"})
    write_report(run)
    report = json.loads((run.report_dir / "report.json").read_text())
    assert report["recommendation"]["name"] == "merged"
    assert report["accuracy_gate"]["min_relative_accuracy"] == 0.99 and report["accuracy_gate"]["min_items"] == 300
    text = (run.report_dir / "report.md").read_text()
    assert "Accuracy gate" in text and "- not q4: below 99% of merged (48.0% < 49.5% on 400 items)" in text
    # The recipe's report section sets the gate: at 95% of merged, q4 (96% of it) passes.
    run = _write_run(tmp_path / "b", flags, {"merged": 10, "q4": 60},
                     recipe={"name": "gate", "report": {"min_relative_accuracy": 0.95, "max_accuracy_drop": 5}})
    write_report(run, max_drop_pt=5.0)
    assert json.loads((run.report_dir / "report.json").read_text())["recommendation"]["name"] == "q4"
    # Too few items: the report says the relative gate was not applied.
    merged, q4 = _pair(100, 45, 5, 3)
    run = _write_run(tmp_path / "c", {"merged": merged, "q4": q4}, {"merged": 10, "q4": 60}, recipe={"name": "gate"})
    write_report(run, max_drop_pt=5.0)
    report = json.loads((run.report_dir / "report.json").read_text())
    assert report["accuracy_gate"]["relative_not_applied"] == {"q4": 100}
    text = (run.report_dir / "report.md").read_text()
    assert "The relative gate was **not applied** to q4 (n = 100): n is too small" in text
    assert "Note: relative gate not applied: n = 100 < 300 items (paired test only)." in text
