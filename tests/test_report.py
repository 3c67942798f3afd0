from arte_edge.stages.pareto import pareto_front
from arte_edge.stages.report import recommend, render_markdown


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
