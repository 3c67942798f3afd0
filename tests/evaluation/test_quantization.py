"""The report's quantization section: imatrix vs plain and the auto mix vs the fixed type of nearest size, from
hand-made artifact records and per-item rows (numbers checked by hand)."""

from __future__ import annotations

import json
from pathlib import Path

from arte_edge.artifacts import Artifact, record_exported
from arte_edge.evaluation.quantization import auto_mix_row, imatrix_pairs
from arte_edge.evaluation.report_markdown import render_markdown
from arte_edge.rundir import RunDir, atomic_write_json
from arte_edge.stats import accuracy_summary


def _artifact(name: str, qtype: str, size: int, kl: float, top1: float, **details) -> Artifact:
    return Artifact(name=name, format="gguf", quant=qtype, path=f"artifacts/{name}.gguf", size_bytes=size,
                    verify={"next_token": {"kl_mean": kl, "top1": top1, "n_positions": 479}}, details=details)


def _run(tmp_path: Path, flags: dict[str, list[bool]]) -> tuple[RunDir, dict]:
    run = RunDir(tmp_path)
    summary = {}
    for name, correct in flags.items():
        rows = [{"item_id": f"i{i}", "correct": c} for i, c in enumerate(correct)]
        run.eval_rows_path(name).parent.mkdir(parents=True, exist_ok=True)
        run.eval_rows_path(name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary[name] = accuracy_summary(correct)
    atomic_write_json(run.eval_summary_path, summary)
    return run, summary


def test_imatrix_pair_joins_fidelity_accuracy_and_a_paired_test(tmp_path: Path) -> None:
    # 20 items: with imatrix right on 12, plain on 6; 8 discordant pairs all favour the imatrix file
    with_im = [True] * 12 + [False] * 8
    plain = [True] * 4 + [False] * 8 + [True] * 2 + [False] * 6
    run, summary = _run(tmp_path, {"gguf-q4_k_m": with_im, "gguf-q4_k_m-plain": plain})
    record_exported(run.root, _artifact("gguf-q4_k_m", "q4_k_m", 105_500_000, 0.032, 0.919,
                                        imatrix="artifacts/demo.imatrix.gguf"))
    record_exported(run.root, _artifact("gguf-q4_k_m-plain", "q4_k_m", 105_500_000, 0.056, 0.898))
    [row] = imatrix_pairs(run, summary)
    assert row["artifact"] == "gguf-q4_k_m" and row["plain"] == "gguf-q4_k_m-plain"
    assert (row["with"]["kl"], row["without"]["kl"]) == (0.032, 0.056)
    assert (row["accuracy"], row["plain_accuracy"]) == (0.6, 0.3)
    paired = row["paired"]
    assert (paired["only_a"], paired["only_b"]) == (8, 2) and abs(paired["diff"] - 0.3) < 1e-9
    assert paired["p_holm"] == paired["p"]  # one comparison: Holm changes nothing
    text = render_markdown({"run": "x", "task": "t", "method": "standard", "teacher": "T", "student": "S",
                            "device": None, "n_eval": 20, "artifacts": [], "variants": [], "recommendation": None,
                            "stage_seconds": {}, "imatrix": [row], "auto_mix": None})
    assert "## Quantization choices" in text
    assert "| q4_k_m | 105.5 | 0.0320 / 0.0560 | 0.919 / 0.898 | 60.0 / 30.0 | +30.0 [" in text


def test_auto_mix_is_compared_with_the_fixed_type_of_nearest_size(tmp_path: Path) -> None:
    run, summary = _run(tmp_path, {"gguf-auto": [True, False], "gguf-q4_k_m": [True, True],
                                   "gguf-q8_0": [True, True]})
    mix = {"budget": "max_size_mb=105.5", "plan": {"predicted_kl": 0.027, "type_histogram": {"Q5_0": 61}}}
    record_exported(run.root, _artifact("gguf-auto", "auto", 105_100_000, 0.05, 0.9,
                                        quant={"source": {"mix": mix}}))
    record_exported(run.root, _artifact("gguf-q4_k_m", "q4_k_m", 105_500_000, 0.094, 0.85))
    record_exported(run.root, _artifact("gguf-q8_0", "q8_0", 144_800_000, 0.008, 0.96))
    record_exported(run.root, _artifact("gguf-q4_k_m-plain", "q4_k_m", 105_200_000, 0.2, 0.8))  # never "nearest"
    row = auto_mix_row(run, summary)
    assert row is not None and row["nearest"]["artifact"] == "gguf-q4_k_m"
    assert (row["kl"], row["predicted_kl"], row["budget"]) == (0.05, 0.027, "max_size_mb=105.5")
    text = render_markdown({"run": "x", "task": "t", "method": "standard", "teacher": "T", "student": "S",
                            "device": None, "n_eval": 2, "artifacts": [], "variants": [], "recommendation": None,
                            "stage_seconds": {}, "imatrix": [], "auto_mix": row})
    assert "Auto mix (max_size_mb=105.5): 105.1 MB, KL 0.0500" in text and "the mix's KL is lower" in text
    worse = {**row, "kl": 0.2}
    assert "**not lower**" in render_markdown({"run": "x", "task": "t", "method": "standard", "teacher": "T",
                                               "student": "S", "device": None, "n_eval": 2, "artifacts": [],
                                               "variants": [], "recommendation": None, "stage_seconds": {},
                                               "auto_mix": worse})
