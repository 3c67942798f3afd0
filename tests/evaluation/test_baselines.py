"""Trivial baselines and the collapse flag on hand-made rows: an always-C student is flagged, never recommended."""

from __future__ import annotations

import random

from arte_edge.evaluation.baselines import (
    against_baseline,
    annotate,
    answer_histogram,
    chance_accuracy,
    collapse,
    constant_baseline,
    trivial_baselines,
)
from arte_edge.evaluation.report import artifact_rows, recommend
from arte_edge.evaluation.summary import summarise
from arte_edge.rundir import RunDir
from arte_edge.tasks.base import Item
from arte_edge.tasks.kinds import MultipleChoiceTask

# 100 four-choice items whose gold letters are A 24, B 23, C 28, D 25 (the demo's skew: C is the most common).
GOLD = ["A"] * 24 + ["B"] * 23 + ["C"] * 28 + ["D"] * 25
random.Random(0).shuffle(GOLD)
ITEMS = [Item(id=f"q{i}", question=f"Q{i}?", answer=g, meta={"choices": ["w", "x", "y", "z"]})
         for i, g in enumerate(GOLD)]
TASK = MultipleChoiceTask("mc", "four choices", lambda: ITEMS, source="test")


def _rows(predictions: list[str | None]) -> list[dict]:
    return [{"item_id": it.id, "predicted": p, "correct": p == it.answer, "correct_flexible": p == it.answer,
             "completion_tokens": 5} for it, p in zip(ITEMS, predictions, strict=True)]


def test_chance_and_constant_baselines() -> None:
    assert chance_accuracy(TASK, ITEMS) == 0.25
    const = constant_baseline(TASK, ITEMS)
    assert const["answer"] == "C" and const["accuracy"] == 0.28 and sum(const["correct"]) == 28
    base = trivial_baselines(TASK, ITEMS)
    assert base["best"]["name"] == "constant" and base["best"]["answer"] == "C"


def test_format_only_baseline_wins_when_it_is_best() -> None:
    fewshot = _rows([it.answer if i < 40 else "A" for i, it in enumerate(ITEMS)])
    base = trivial_baselines(TASK, ITEMS, fewshot)
    assert base["best"]["name"] == "format_only" and base["format_only"]["accuracy"] > 0.4


def test_always_c_student_is_flagged_and_never_recommended(tmp_path) -> None:
    always_c = _rows(["C"] * 100)
    wrong = {"A": "B", "B": "C", "C": "D", "D": "A"}
    good = _rows([it.answer if i % 2 == 0 else wrong[it.answer] for i, it in enumerate(ITEMS)])  # right on half
    rows_by = {"base": _rows([None] * 74 + ["A"] * 26), "merged": always_c, "gguf-q8_0": always_c,
               "gguf-q4_k_m": good}
    summary = summarise(rows_by, "base")
    baselines = trivial_baselines(TASK, ITEMS)
    annotate(summary, rows_by, baselines, max_share=0.6)
    merged = summary["merged"]
    assert merged["top_answer"] == "C" and merged["top_share"] == 1.0 and merged["collapsed"]
    assert merged["vs_baseline"]["margin_pt"] == 0.0 and merged["vs_baseline"]["beats"] is False
    assert summary["gguf-q4_k_m"]["vs_baseline"]["beats"] and not summary["gguf-q4_k_m"]["collapsed"]
    bench = {n: {"format": "gguf", "quant": "x", "summary": {"decode_tok_s": s}}
             for n, s in (("gguf-q8_0", 90.0), ("gguf-q4_k_m", 50.0))}
    for name in ("gguf-q8_0", "gguf-q4_k_m"):
        summary[name].update(format="gguf", quant="x")
    rows = artifact_rows(RunDir(tmp_path), summary, bench)
    flagged = {r["name"]: r["flags"] for r in rows}
    assert any(f.startswith("collapsed: answers C on 100%") for f in flagged["gguf-q8_0"])
    assert any(f.startswith("not above the best trivial baseline (constant 28.0%") for f in flagged["merged"])
    rec = recommend(rows, max_drop_pt=100.0)
    assert rec["name"] == "gguf-q4_k_m"  # the faster collapsed Q8_0 is left out, and the report says why
    assert "collapsed" in rec["excluded"]["gguf-q8_0"]
    only_collapsed = [r for r in rows if r["name"] != "gguf-q4_k_m"]
    blocked = recommend(only_collapsed, max_drop_pt=100.0)
    assert blocked["name"] is None and set(blocked["excluded"]) == {"merged", "gguf-q8_0"}


def test_collapse_counts_only_given_answers_and_histogram_names_none() -> None:
    rows = _rows([None] * 70 + ["B"] * 30)
    assert collapse(rows, 0.6) == {"top_answer": "B", "top_share": 0.3, "collapsed": False}
    assert answer_histogram(rows) == {"(none)": 70, "B": 30}


def test_against_chance_uses_a_one_sided_binomial_test() -> None:
    baselines = {"best": {"name": "chance", "accuracy": 0.25}}
    strong = against_baseline([True] * 40 + [False] * 60, baselines)
    assert strong["test"].startswith("binomial") and strong["beats"] and strong["p"] < 0.01
    weak = against_baseline([True] * 27 + [False] * 73, baselines)
    assert weak["beats"] is False and weak["margin_pt"] == 2.0
