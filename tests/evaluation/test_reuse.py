"""Adopting rows a method already scored: only for the same file bytes, runtime and decoding."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from arte_edge.backends.base import SamplingParams
from arte_edge.evaluation.reuse import ScoredRows, adopt_rows, adoption, file_digest, runtime_record, same_run
from arte_edge.rundir import read_jsonl

PARAMS = SamplingParams(max_tokens=16, stop_regex="x")


class FileModel:
    """What :func:`same_run` reads of a llama.cpp model: its file, batch size, threads and context."""

    def __init__(self, path: Path, batch_size: int = 1, threads: int = 2, n_ctx: int = 2048) -> None:
        self.path, self.batch_size, self.threads, self.n_ctx = path, batch_size, threads, n_ctx


@pytest.fixture()
def scored(tmp_path: Path) -> ScoredRows:
    (tmp_path / "method").mkdir()
    model_file = tmp_path / "method" / "student.q8_0.gguf"
    model_file.write_bytes(b"GGUF weights" * 100)
    rows = tmp_path / "method" / "eval.jsonl"
    rows.write_text("".join(json.dumps({"item_id": f"q{i}", "correct": i % 2 == 0, "completion": f"method {i}",
                                        "key": "method-key"}) + "\n" for i in range(4))
                    + json.dumps({"item_id": "q0", "correct": False, "key": "stale"}) + "\n")
    return ScoredRows("elad/base", file_digest(model_file), rows, batch_size=1, threads=2, n_ctx=2048,
                      params=PARAMS, row_key="method-key")


def _copy(scored: ScoredRows, tmp_path: Path, data: bytes | None = None) -> Path:
    out = tmp_path / "artifacts" / "base.q8_0.gguf"
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(data if data is not None else scored.rows.with_name("student.q8_0.gguf").read_bytes())
    return out


def test_same_bytes_elsewhere_are_the_same_run(scored: ScoredRows, tmp_path: Path) -> None:
    copy = _copy(scored, tmp_path)
    assert runtime_record(FileModel(copy)) == {"sha256": scored.sha256, "batch_size": 1, "threads": 2, "n_ctx": 2048}
    assert same_run(FileModel(copy), PARAMS, scored)
    assert runtime_record(FileModel(copy.with_suffix(".onnx"))) is None  # not a GGUF: nothing to compare


def test_the_bytes_that_scored_the_rows_count_not_the_file_there_now(scored: ScoredRows, tmp_path: Path) -> None:
    """The method's file re-exported with other bytes after scoring: its rows are not those of the new file."""
    method_file = scored.rows.with_name("student.q8_0.gguf")
    method_file.write_bytes(b"re-exported weights" * 100)
    assert not same_run(FileModel(method_file), PARAMS, scored)
    assert not same_run(FileModel(_copy(scored, tmp_path, method_file.read_bytes())), PARAMS, scored)


@pytest.mark.parametrize("change", ["bytes", "batch", "threads", "n_ctx", "max_tokens", "stop", "no file"])
def test_anything_that_changes_the_decoding_is_not(scored: ScoredRows, tmp_path: Path, change: str) -> None:
    copy = _copy(scored, tmp_path, b"other weights" if change == "bytes" else None)
    model = FileModel(copy, batch_size=8 if change == "batch" else 1, threads=1 if change == "threads" else 2,
                      n_ctx=4096 if change == "n_ctx" else 2048)
    params = (replace(PARAMS, max_tokens=32) if change == "max_tokens" else
              replace(PARAMS, stop_regex=None) if change == "stop" else PARAMS)
    if change == "no file":
        model = FileModel(tmp_path / "missing.gguf")
    assert not same_run(model, params, scored)
    out = tmp_path / "eval" / "base.jsonl"
    assert adopt_rows(model, params, ["q0", "q1"], out, "stage-key", [scored]) is None
    assert not out.exists()


def test_rows_are_adopted_under_the_stage_key_with_their_source(scored: ScoredRows, tmp_path: Path) -> None:
    out = tmp_path / "eval" / "base.jsonl"
    out.parent.mkdir()
    out.write_text(json.dumps({"item_id": "q1", "correct": True, "completion": "stage 1", "key": "stage-key"}) + "\n"
                   + json.dumps({"item_id": "q2", "correct": True, "completion": "old", "key": "old-key"}) + "\n")
    model = FileModel(_copy(scored, tmp_path))
    source = adopt_rows(model, PARAMS, ["q0", "q1", "q2", "q9"], out, "stage-key", [scored])
    assert source == "elad/base"
    rows = {r["item_id"]: r for r in read_jsonl(out)}
    assert set(rows) == {"q0", "q1", "q2"}  # q9: not scored by the method, left to decode
    assert rows["q1"]["completion"] == "stage 1" and "adopted_from" not in rows["q1"]  # kept as the stage wrote it
    assert rows["q0"]["completion"] == "method 0" and rows["q0"]["correct"]  # the method-key row, not the stale one
    assert rows["q2"]["completion"] == "method 2" and rows["q2"]["adopted_from"] == "elad/base"
    assert adoption(list(rows.values())) == {"adopted_from": ["elad/base"], "n_adopted": 2}  # q0, q2; q1 the stage's
    assert {r["key"] for r in rows.values()} == {"stage-key"}
    assert adopt_rows(model, PARAMS, ["q0", "q1", "q2"], out, "stage-key", [scored]) is None  # nothing missing


def test_evaluate_stage_adopts_elad_curve_rows_for_the_same_gguf(tmp_path: Path, tiny_model_dir: Path) -> None:
    """End to end through the stage: ELAD's base point (a real Q8_0 GGUF of the tiny model, scored rows on disk)
    is adopted for the evaluate stage's base row, which exports the same bytes; a changed token limit is not."""
    from arte_edge.artifacts import list_artifacts
    from arte_edge.evaluation.reuse import runtime_record
    from arte_edge.export.gguf import cached_gguf
    from arte_edge.methods.elad.students import gguf_path
    from arte_edge.stages import evaluate
    from tests.methods.test_elad import _ctx

    ctx = _ctx(tmp_path, tiny_model_dir, {"student_quant": "q8_0"}, evaluate={"max_tokens": 8, "threads": 1,
                                                                              "quant": "q8_0"},
               export={"verify": False})
    root, items = ctx.run.root, ctx.split("eval")
    target = gguf_path(tiny_model_dir, root, "q8_0")
    cached_gguf(tiny_model_dir, target.parent, "q8_0", "student", None, verify=False, threads=1)
    from arte_edge.evaluation.scoring import eval_params
    from arte_edge.methods.elad.datasets import curve_eval_mode
    from arte_edge.methods.elad.students import point_key

    key = point_key(tiny_model_dir, curve_eval_mode(ctx.method_config), eval_params(ctx.task, 8))  # as the loop writes
    rows = root / "elad" / "base" / "eval.jsonl"
    rows.write_text("".join(json.dumps({"item_id": it.id, "correct": True, "correct_flexible": True,
                                        "predicted": it.answer, "reason": "ok", "completion": "ELAD ROW",
                                        "prompt_tokens": 9, "completion_tokens": 3, "seconds": 0.1, "key": key})
                            + "\n" for it in items))
    curve = {"strategy": "base", "round": 0, "model_dir": str(tiny_model_dir), "eval_file": "elad/base/eval.jsonl",
             "eval_key": key}
    (root / "elad" / "curve.jsonl").write_text(json.dumps(curve) + "\n")
    base = [a for a in list_artifacts(ctx, include_base=True) if a.role == "base"]
    evaluate.run(ctx, artifacts=base)  # a point without the record of how it was scored is not offered
    assert "adopted_from" not in json.loads(ctx.run.eval_summary_path.read_text())["base"]
    ctx.run.eval_rows_path("base").unlink()

    # how the loop scores a point: one sequence at a time, the recipe's threads and context (students.py)
    curve["scored_with"] = runtime_record(FileModel(target, batch_size=1, threads=1, n_ctx=ctx.recipe.student.n_ctx))
    (root / "elad" / "curve.jsonl").write_text(json.dumps(curve) + "\n")
    evaluate.run(ctx, artifacts=base)
    adopted = read_jsonl(ctx.run.eval_rows_path("base"))
    assert [r["completion"] for r in adopted] == ["ELAD ROW"] * len(items)
    summary = json.loads(ctx.run.eval_summary_path.read_text())
    assert summary["base"]["adopted_from"] == ["elad/base"] and summary["base"]["accuracy"] == 1.0
    assert summary["base"]["n_adopted"] == len(items)

    ctx16 = _ctx(tmp_path, tiny_model_dir, {"student_quant": "q8_0"}, evaluate={"max_tokens": 16, "threads": 1,
                                                                                "quant": "q8_0"},
                 export={"verify": False})
    evaluate.run(ctx16, artifacts=base)  # another decoding: the tiny model answers for itself
    assert all(r["completion"] != "ELAD ROW" for r in read_jsonl(ctx16.run.eval_rows_path("base")))
    assert "adopted_from" not in json.loads(ctx16.run.eval_summary_path.read_text())["base"]
