"""Stage `evaluate`: cached rows count only for the same model file and runtime; `evaluate.quant` scores the
HF students as the GGUF they ship as."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from arte_edge.artifacts import Artifact, content_key
from arte_edge.backends.base import Completion, SamplingParams
from arte_edge.evaluation.scoring import evaluate_model
from arte_edge.rundir import read_jsonl
from arte_edge.tasks.base import Item

ROOT = Path(__file__).resolve().parents[2]
ARITH = ROOT / "tests" / "data" / "arith" / "task.yaml"


class CountingModel:
    """Answers every question "Answer: 4" and counts the conversations it was asked."""

    name = "counting"

    def __init__(self) -> None:
        self.asked = 0

    def chat_batch(self, conversations: list, params: SamplingParams) -> list[Completion]:
        self.asked += len(conversations)
        return [Completion(text="Answer: 4", prompt_tokens=5, completion_tokens=3, seconds=0.01)
                for _ in conversations]


@pytest.fixture()
def task():
    from arte_edge.tasks.registry import get_task

    return get_task(ARITH)


def items(n: int) -> list[Item]:
    return [Item(id=f"q{i}", question=f"What is 2 + {i}?", answer=str(2 + i)) for i in range(n)]


def test_rows_are_reused_only_under_the_same_key(tmp_path: Path, task) -> None:
    out, params = tmp_path / "eval" / "merged.jsonl", SamplingParams(max_tokens=8)
    model = CountingModel()
    first = evaluate_model(model, task, items(5), out, params, key="model-a")
    assert model.asked == 5 and [r["correct"] for r in first] == [False, False, True, False, False]

    evaluate_model(model, task, items(5), out, params, key="model-a")  # resume: nothing asked again
    assert model.asked == 5

    evaluate_model(model, task, items(5), out, params, key="model-b")  # retrained/re-exported: scored afresh
    assert model.asked == 10
    assert {r["key"] for r in read_jsonl(out)} == {"model-b"} and len(read_jsonl(out)) == 5


def test_content_key_follows_the_weight_files_and_the_runtime(tmp_path: Path) -> None:
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    hf = Artifact("merged", "hf", "fp32", str(folder), role="merged")
    key = content_key(hf, tmp_path, 256)
    assert content_key(hf, tmp_path, 256) == key
    assert content_key(hf, tmp_path, 128) != key  # a different token limit
    assert content_key(Artifact("merged", "gguf", "q8_0", str(folder)), tmp_path, 256) != key
    stat = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert content_key(hf, tmp_path, 256) != key  # retrained in place


def test_evaluate_quant_is_validated_and_normalised() -> None:
    from arte_edge.errors import ConfigError
    from arte_edge.recipes import validate_recipe

    base = {"name": "v", "task": str(ARITH), "teacher": {"model": "t"}, "student": {"model": "s"}}
    assert validate_recipe({**base, "evaluate": {"quant": "Q8-0"}}, "r.yaml").evaluate.quant == "q8_0"
    with pytest.raises(ConfigError, match="evaluate.quant"):
        validate_recipe({**base, "evaluate": {"quant": "q9"}}, "r.yaml")


@pytest.mark.integration
def test_pipeline_with_evaluate_quant_scores_base_and_merged_as_gguf(tmp_path: Path, tiny_model_dir: Path) -> None:
    from arte_edge.pipeline import run_pipeline
    from arte_edge.recipes import load_recipe
    from tests.helpers.oracle_teacher import serve
    from tests.test_pipeline import write_recipe

    server, url = serve()
    try:
        recipe_path = write_recipe(tmp_path, tiny_model_dir, url, evaluate={"quant": "q8_0"})
        run = run_pipeline(load_recipe(recipe_path), tmp_path / "run", source=str(recipe_path))
    finally:
        server.shutdown()
    summary = json.loads((run.root / "eval" / "summary.json").read_text())
    assert {k: (v["format"], v["quant"]) for k, v in summary.items()} == {
        "base": ("gguf", "q8_0"), "merged": ("gguf", "q8_0"), "gguf-q8_0": ("gguf", "q8_0"),
        "base-fewshot": ("gguf", "q8_0")}  # the format-only baseline runs in the base's runtime
    assert summary["gguf-q8_0"]["accuracy"] == summary["merged"]["accuracy"]  # one file, scored once
    assert (run.root / "eval" / "models" / "base" / "base.q8_0.gguf").exists()
    assert not (run.root / "eval" / "models" / "merged").exists()  # the export stage's file is reused
    assert not (run.root / "eval" / "gguf-q8_0.jsonl").exists()
    report = json.loads((run.root / "report" / "report.json").read_text())
    assert [(a["name"], a["format"]) for a in report["artifacts"]] == [
        ("base", "gguf"), ("base-fewshot", "gguf"), ("merged", "gguf"), ("gguf-q8_0", "gguf")]
    assert report["artifacts"][3]["decode_tok_s"] > 0


def _variant_recipe():
    from arte_edge.recipes import validate_recipe

    return validate_recipe({"name": "v", "task": str(ARITH), "teacher": {"model": "t"}, "student": {"model": "s"},
                            "splits": {"seeds": 2, "train_pool": 10, "eval": 6},
                            "evaluate": {"quant": "q8_0", "max_tokens": 8, "threads": 1}}, "test")


def _run_variants_stage(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run the variants stage once on a one-example `stand` variant of the tiny model (training and merging
    replaced by a copy of the base folder); returns the stage's outputs."""
    import shutil

    from arte_edge import models
    from arte_edge.runctx import RunContext
    from arte_edge.rundir import RunDir
    from arte_edge.stages import variants
    from arte_edge.training import merge, sft

    recipe = _variant_recipe()
    folder = tmp_path / "data" / "variants" / "stand"
    folder.mkdir(parents=True)
    (folder / "examples.jsonl").write_text(json.dumps({"id": "a", "messages": [], "meta": {}}) + "\n")
    monkeypatch.setattr(models, "hf_folder", lambda spec: tiny_model_dir)

    def fake_train(base: Path, rows: list, out: Path, *a: object) -> dict:
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_text("{}")
        return {}

    monkeypatch.setattr(sft, "train_adapter", fake_train)
    monkeypatch.setattr(merge, "merge_adapter",
                        lambda base, adapter, merged, threads: (shutil.copytree(base, merged), {})[1])

    return variants.run(RunContext(recipe, RunDir(tmp_path)))


def test_variants_are_scored_in_the_evaluate_quant_runtime(tmp_path: Path, tiny_model_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = _run_variants_stage(tmp_path, tiny_model_dir, monkeypatch)
    row = json.loads((tmp_path / "eval" / "summary.json").read_text())["variant-stand"]
    assert (row["format"], row["quant"], row["n_eval"]) == ("gguf", "q8_0", 6)
    assert out["variants"]["stand"]["accuracy"] == row["accuracy"]
    assert (tmp_path / "eval" / "models" / "variant-stand" / "variant-stand.q8_0.gguf").exists()
    assert len(read_jsonl(tmp_path / "eval" / "variant-stand.jsonl")) == 6


class BatchSensitiveModel(CountingModel):
    """Batched answers say 4; asked one at a time it says 5 on "2 + 1" (batching is not batch-invariant)."""

    batch_size = 8

    def chat(self, messages: list, params: SamplingParams) -> Completion:
        text = "Answer: 5" if "2 + 1" in messages[-1]["content"] else "Answer: 4"
        return Completion(text=text, prompt_tokens=5, completion_tokens=3, seconds=0.01)


def test_batched_rows_are_checked_against_batch_one(tmp_path: Path, task) -> None:
    from arte_edge.evaluation.scoring import batch1_check, decoding_of

    model, params = BatchSensitiveModel(), SamplingParams(max_tokens=8)
    rows = evaluate_model(model, task, items(5), tmp_path / "rows.jsonl", params)
    assert decoding_of(model) == "batched 8" and decoding_of(CountingModel()) == "batch 1"
    assert batch1_check(model, task, items(5), rows, params, n=3) == {"n": 3, "identical": 2, "same_answer": 2}
    assert batch1_check(model, task, items(5), rows, params) == {"n": 5, "identical": 4, "same_answer": 4}


def test_batch_one_check_is_kept_for_a_resume(tmp_path: Path, task) -> None:
    from arte_edge.evaluation.scoring import batch1_check

    class Counting(BatchSensitiveModel):
        singles = 0

        def chat(self, messages: list, params: SamplingParams) -> Completion:
            Counting.singles += 1
            return super().chat(messages, params)

    model, params, cache = Counting(), SamplingParams(max_tokens=8), tmp_path / "merged.batch1.json"
    rows = evaluate_model(model, task, items(5), tmp_path / "rows.jsonl", params)
    first = batch1_check(model, task, items(5), rows, params, n=3, cache=cache, key="k1")
    assert first == {"n": 3, "identical": 2, "same_answer": 2} and Counting.singles == 3
    assert batch1_check(model, task, items(5), rows, params, n=3, cache=cache, key="k1") == first
    assert Counting.singles == 3  # reused, nothing decoded again
    batch1_check(model, task, items(5), rows, params, n=3, cache=cache, key="k2")  # other rows: decoded again
    batch1_check(model, task, items(5), rows, params, n=4, cache=cache, key="k2")  # other sample: decoded again
    assert Counting.singles == 10


def test_variants_adopt_rows_the_method_scored_with_the_same_file(tmp_path: Path, tiny_model_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A method that already scored a variant's student (the same GGUF bytes, batch 1, the stage's threads, context
    and decoding) has its rows copied with their source named; rows scored from other bytes are decoded again."""
    from arte_edge.evaluation.reuse import ScoredRows, file_digest
    from arte_edge.evaluation.scoring import eval_params
    from arte_edge.methods import registry
    from arte_edge.runctx import RunContext
    from arte_edge.rundir import RunDir
    from arte_edge.stages import variants

    _run_variants_stage(tmp_path, tiny_model_dir, monkeypatch)
    ctx = RunContext(_variant_recipe(), RunDir(tmp_path))
    items = ctx.split("eval")
    gguf = tmp_path / "eval" / "models" / "variant-stand" / "variant-stand.q8_0.gguf"
    decoded = read_jsonl(tmp_path / "eval" / "variant-stand.jsonl")
    method_rows = tmp_path / "method" / "stand.jsonl"
    method_rows.parent.mkdir()
    method_rows.write_text("".join(json.dumps({"item_id": it.id, "correct": True, "correct_flexible": True,
                                               "predicted": it.answer, "reason": "", "completion": "METHOD ROW",
                                               "prompt_tokens": 9, "completion_tokens": 3, "seconds": 0.1,
                                               "key": "m"}) + "\n" for it in items))

    class ScoredMethod:
        def __init__(self, sha256: str) -> None:
            self.sha256 = sha256

        def trained_students(self, ctx: RunContext) -> dict:
            return {}

        def scored_rows(self, ctx: RunContext) -> list[ScoredRows]:
            return [ScoredRows("method/stand", self.sha256, method_rows, batch_size=1, threads=1,
                               n_ctx=ctx.recipe.student.n_ctx, params=eval_params(ctx.task, 8), row_key="m")]

        def after_variants(self, ctx: RunContext) -> None:
            return None

    def rerun(sha256: str) -> tuple[list[dict], dict]:
        (tmp_path / "eval" / "variant-stand.jsonl").unlink()
        monkeypatch.setattr(registry, "get_method", lambda name: ScoredMethod(sha256))
        variants.run(ctx)
        return (read_jsonl(tmp_path / "eval" / "variant-stand.jsonl"),
                json.loads((tmp_path / "eval" / "summary.json").read_text())["variant-stand"])

    rows, summary = rerun("0" * 64)  # scored by other bytes: the stage decodes for itself
    assert [r["completion"] for r in rows] == [r["completion"] for r in decoded] and "adopted_from" not in summary
    rows, summary = rerun(file_digest(gguf))
    assert [r["completion"] for r in rows] == ["METHOD ROW"] * len(items)
    assert {r["adopted_from"] for r in rows} == {"method/stand"}
    assert summary["adopted_from"] == ["method/stand"] and summary["n_adopted"] == len(items)
    assert summary["accuracy"] == 1.0
