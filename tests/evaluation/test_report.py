from arte_edge.evaluation.pareto import pareto_front
from arte_edge.evaluation.report import recommend
from arte_edge.evaluation.report_markdown import render_markdown


def row(name, acc, tok_s):
    return {"name": name, "format": "gguf", "quant": "x", "size_bytes": 1e6, "accuracy": acc, "ci_low": acc - 0.1,
            "ci_high": acc + 0.1, "n_eval": 100, "delta_vs_merged_pt": None, "decode_tok_s": tok_s,
            "prompt_tok_s": 100.0, "ttft_ms_p50": 10.0, "ttft_ms_p90": 12.0, "peak_rss_bytes": 1e8}


def test_recommend_fastest_within_gate() -> None:
    rows = [row("base", 0.30, 20), row("merged", 0.50, 18), row("q8", 0.496, 40), row("q4", 0.47, 60)]
    rec = recommend(rows, max_drop_pt=1.0)
    assert rec is not None and rec["name"] == "q8"  # q4 is faster but 3 points worse
    assert recommend(rows, max_drop_pt=5.0)["name"] == "q4"
    assert recommend([row("q8", 0.5, 10)], 1.0) is None  # no merged reference


def test_pareto_front() -> None:
    rows = [row("a", 0.5, 10), row("b", 0.4, 20), row("c", 0.3, 15), row("d", 0.5, 5)]
    assert sorted(pareto_front(rows)) == ["a", "b"]


def test_markdown_renders_missing_values() -> None:
    r = row("merged", 0.5, None)
    r["decode_tok_s"] = None
    report = {"run": "x", "task": "t", "method": "standard", "teacher": "T", "student": "S", "device": None,
              "n_eval": 100, "artifacts": [r], "variants": [], "recommendation": None, "stage_seconds": {"train": 1}}
    text = render_markdown(report)
    assert "| merged | gguf | x |" in text and "–" in text and "No artifact" in text


def test_latency_is_joined_only_when_the_bench_ran_the_scored_runtime(tmp_path) -> None:
    from arte_edge.evaluation.report import artifact_rows
    from arte_edge.rundir import RunDir

    summary = {"base": {"accuracy": 0.1, "ci_low": 0.0, "ci_high": 0.3, "n_eval": 10,
                        "format": "gguf", "quant": "q8_0"},
               "other": {"accuracy": 0.2, "ci_low": 0.1, "ci_high": 0.4, "n_eval": 10}}
    bench = {"base": {"format": "hf", "quant": "fp32", "size_bytes": 500, "summary": {"decode_tok_s": 15.0}},
             "other": {"format": "hf", "quant": "fp32", "size_bytes": 500, "summary": {"decode_tok_s": 14.0}}}
    rows = {r["name"]: r for r in artifact_rows(RunDir(tmp_path), summary, bench)}
    assert (rows["base"]["format"], rows["base"]["decode_tok_s"], rows["base"]["size_bytes"]) == ("gguf", None, None)
    assert (rows["other"]["format"], rows["other"]["decode_tok_s"]) == ("hf", 14.0)


def test_bytes_per_param_uses_the_merged_students_parameter_count(tmp_path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    from arte_edge.evaluation.report import artifact_rows, parameter_count
    from arte_edge.rundir import RunDir

    run = RunDir(tmp_path)
    assert parameter_count(run.merged_dir) is None  # not merged yet: the column stays empty
    run.merged_dir.mkdir(parents=True, exist_ok=True)
    save_file({"embed": np.zeros((100, 8), np.float32), "norm": np.zeros(8, np.float32)},
              str(run.merged_dir / "model.safetensors"), metadata={"format": "pt"})
    assert parameter_count(run.merged_dir) == 808
    summary = {"q4": {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n_eval": 10, "format": "onnx", "quant": "int4"},
               "other": {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n_eval": 10}}
    bench = {"q4": {"format": "onnx", "quant": "int4", "size_bytes": 505, "summary": {}}}
    rows = {r["name"]: r for r in artifact_rows(run, summary, bench)}
    assert rows["q4"]["bytes_per_param"] == 0.625 and rows["other"]["bytes_per_param"] is None
    report = {"run": "x", "task": "t", "method": "standard", "teacher": "T", "student": "S", "device": None,
              "n_eval": 10, "artifacts": list(rows.values()), "variants": [], "recommendation": None,
              "stage_seconds": {}}
    text = render_markdown(report)
    assert "| size MB | bytes/param |" in text and "| q4 | onnx | int4 | 0.0 | 0.625 |" in text


def test_markdown_names_rows_adopted_from_the_methods_own_scoring() -> None:
    adopted = {**row("base", 0.165, 40), "decoding": "batch 1", "adopted_from": ["elad/base/round-0"]}
    own = {**row("merged", 0.2, 40), "decoding": "batch 1"}
    report = {"run": "x", "task": "t", "method": "elad", "teacher": "T", "student": "S", "device": None,
              "n_eval": 100, "artifacts": [adopted, own], "variants": [], "recommendation": None,
              "stage_seconds": {}}
    text = render_markdown(report)
    assert "base batch 1 (rows adopted from elad/base/round-0: the same file bytes" in text
    text = render_markdown({**report, "artifacts": [{**adopted, "n_adopted": 30, "n_eval": 40}, own]})
    assert "base batch 1 (30 of 40 rows adopted from elad/base/round-0: the same file bytes" in text
    assert "merged batch 1;" in text or text.rstrip().endswith("merged batch 1") or "merged batch 1." in text


def test_arm_comparisons_say_how_many_items_a_rerun_would_need() -> None:
    from arte_edge.stats import paired_comparison

    a, b = [True] * 30 + [False] * 70, [True] * 25 + [False] * 75
    cmp = {"label": "standard", "reference": "base", "p_holm": 0.1, **paired_comparison(a, b)}
    report = {"run": "x", "task": "t", "method": "standard", "teacher": "T", "student": "S", "device": None,
              "n_eval": 100, "artifacts": [row("merged", 0.3, 40)], "variants": [], "recommendation": None,
              "stage_seconds": {}, "comparisons": [cmp]}
    text = render_markdown(report)
    assert "| MDE pt | items for Δ |" in text
    line = next(x for x in text.splitlines() if x.startswith("| standard | 100 |"))
    assert line.endswith(f"| {cmp['n_needed']:,} |") and cmp["n_needed"] > 100


def test_decoding_line_speaks_of_batched_rows_only_when_one_is_batched() -> None:
    shipped = {**row("gguf-q8_0", 0.3, 40), "decoding": "batch 1"}
    report = {"run": "x", "task": "t", "method": "standard", "teacher": "T", "student": "S", "device": None,
              "n_eval": 100, "artifacts": [{**row("base", 0.2, 40), "decoding": "batch 1"}, shipped], "variants": [],
              "recommendation": None, "stage_seconds": {}}
    text = render_markdown(report)
    assert "Every row is scored one sequence at a time" in text and "Batched rows" not in text
    batched = {**row("merged", 0.3, 20), "decoding": "batched 16",
               "batch1_check": {"n": 8, "identical": 7, "same_answer": 8}}
    text = render_markdown({**report, "artifacts": [batched, shipped]})
    assert "merged batched 16 (vs batch 1 on 8 items: 7 identical, 8 same answer)" in text
    assert "Batched rows are fp32 references" in text and "Every row is scored" not in text
