"""The whole pipeline on a tiny random student and a deterministic teacher served over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from arte_edge.pipeline import run_pipeline
from arte_edge.recipes import load_recipe
from arte_edge.rundir import read_jsonl
from tests.helpers.oracle_teacher import serve

ROOT = Path(__file__).resolve().parents[1]
ARITH = ROOT / "tests" / "data" / "arith" / "task.yaml"
CLI = [sys.executable, "-m", "arte_edge.cli"]
REPORT_ARTIFACT_KEYS = {"name", "format", "quant", "size_bytes", "accuracy", "ci_low", "ci_high", "n_eval",
                        "decode_tok_s", "prompt_tok_s", "ttft_ms_p50"}
REPORT_VARIANT_KEYS = {"method", "n_train", "teacher_calls", "accuracy", "ci_low", "ci_high", "n_eval"}


def write_recipe(tmp_path: Path, student: Path, teacher_url: str, **sections) -> Path:
    recipe = {
        "name": "tiny", "task": str(ARITH), "method": "standard", "seed": 0,
        "teacher": {"model": "oracle", "backend": "openai", "base_url": teacher_url, "parallel": 1},
        "student": {"model": str(student), "threads": 1},
        "splits": {"seeds": 2, "train_pool": 40, "eval": 20},
        "generate": {"n_examples": 12, "max_attempts": 40, "batch_size": 3, "max_tokens": 64},
        "train": {"epochs": 1, "batch_size": 2, "save_steps": 2, "max_length": 128, "threads": 1, "lora_r": 4,
                  "lora_alpha": 8},
        "export": {"formats": ["gguf:q8_0"]},
        "evaluate": {"max_tokens": 16, "threads": 1},
        "bench": {"prompt_tokens": 16, "gen_tokens": 8, "repetitions": 2, "warmup": 0, "threads": 1},
    }
    for key, value in sections.items():
        recipe[key].update(value)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture()
def oracle():
    server, url = serve()
    yield url
    server.shutdown()


@pytest.fixture()
def slow_oracle():
    server, url = serve(delay_s=0.15)
    yield url
    server.shutdown()


@pytest.mark.integration
def test_full_pipeline_writes_report_contract(tmp_path: Path, tiny_model_dir: Path, oracle: str) -> None:
    recipe_path = write_recipe(tmp_path, tiny_model_dir, oracle)
    run = run_pipeline(load_recipe(recipe_path), tmp_path / "run", source=str(recipe_path))

    manifest = run.read_manifest()
    assert all(manifest["stages"][s]["status"] == "done"
               for s in ("generate", "train", "merge", "export", "evaluate", "bench", "report"))
    assert set(manifest["splits"]) == {"seeds", "preference", "train_pool", "eval"}
    assert manifest["llama_cpp"]["safe"] and "CPU" in manifest["llama_cpp"]["system_info"]
    examples = read_jsonl(run.examples_path)
    assert len(examples) == 12
    assert all(e["messages"][-1]["role"] == "assistant" and "Answer:" in e["messages"][-1]["content"]
               for e in examples)
    rejected = read_jsonl(run.rejected_path)
    assert rejected and all("expected" in r["reason"] for r in rejected)  # the oracle's wrong answers

    report = json.loads((run.root / "report" / "report.json").read_text())
    names = [a["name"] for a in report["artifacts"]]
    assert names == ["base", "base-fewshot", "merged", "gguf-q8_0"]  # base-fewshot: the format-only baseline
    for row in report["artifacts"]:
        assert set(row) >= REPORT_ARTIFACT_KEYS | {"margin_pt", "top_answer", "top_share", "flags"}
        assert row["n_eval"] == 20 and 0 <= row["ci_low"] <= row["accuracy"] <= row["ci_high"] <= 1
        if row["name"] != "base-fewshot":  # the same model as base, with seeds in the prompt: not benchmarked
            assert row["decode_tok_s"] > 0 and row["size_bytes"] > 0
    baselines = report["baselines"]
    assert set(baselines) >= {"constant", "format_only", "best", "gold_histogram", "n"} and baselines["n"] == 20
    assert all("correct" not in baselines[k] for k in ("constant", "format_only", "best"))
    assert [v["method"] for v in report["variants"]] == [
        "none (base student)", "none (base student shown the seeds: format only)", "standard"]
    assert all(set(v) >= REPORT_VARIANT_KEYS for v in report["variants"])
    assert report["variants"][2]["n_train"] == 12 and report["variants"][2]["label_histogram"]
    assert report["variants"][2]["teacher_calls"] == len(examples) + len(rejected)
    assert [c["label"] for c in report["comparisons"]] == [
        "none (base student shown the seeds: format only)", "standard"]  # each arm vs the untrained student
    assert all(c["reference"] == "base" and 0 <= c["p_holm"] <= 1 for c in report["comparisons"])
    assert (run.root / "report" / "report.md").read_text().startswith("# arte-edge report")
    assert (run.root / "artifacts" / "verify.json").exists()
    # fp32 rows are scored in left-padded batches and checked against batch 1; the GGUF one sequence at a time.
    decoding = {r["name"]: (r["decoding"], r["batch1_check"]) for r in report["artifacts"]}
    assert decoding["gguf-q8_0"] == ("batch 1", None)
    for name in ("base", "base-fewshot", "merged"):
        mode, check = decoding[name]
        assert mode == "batched 32" and check["n"] == 8 and 0 <= check["same_answer"] <= 8
    assert "Decoding while scoring (greedy): base batched 32 (vs batch 1 on 8 items:" in (
        run.root / "report" / "report.md").read_text()

    # Same command again: every stage is skipped and nothing changes.
    before = run.examples_path.read_bytes()
    started = time.perf_counter()
    run_pipeline(load_recipe(recipe_path), tmp_path / "run", source=str(recipe_path))
    assert time.perf_counter() - started < 30
    assert run.examples_path.read_bytes() == before


def _wait_for(predicate, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _kill_once(args: list[str], jsonl: Path, at_least: int, timeout_s: float) -> None:
    """Start the CLI and ``kill -9`` it once ``jsonl`` holds ``at_least`` records."""
    proc = subprocess.Popen(CLI + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: jsonl.exists() and len(read_jsonl(jsonl)) >= at_least, timeout_s, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, capture_output=True, text=True, cwd=ROOT, timeout=600, **kw)


@pytest.mark.integration
def test_kill_during_generate_then_resume_loses_nothing(tmp_path: Path, tiny_model_dir: Path,
                                                        slow_oracle: str) -> None:
    recipe = write_recipe(tmp_path, tiny_model_dir, slow_oracle, generate={"n_examples": 15, "batch_size": 2})
    run_dir = tmp_path / "killed"
    examples = run_dir / "data" / "examples.jsonl"
    _kill_once(["generate", str(recipe), "--run-dir", str(run_dir)], examples, 4, 120)
    partial = len(read_jsonl(examples))
    assert 4 <= partial < 15

    resumed = _run_cli(["generate", str(recipe), "--run-dir", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    clean = _run_cli(["generate", str(recipe), "--run-dir", str(tmp_path / "clean")])
    assert clean.returncode == 0, clean.stderr

    def ids(d: Path, name: str) -> list[str]:
        return [r["id"] for r in read_jsonl(d / "data" / name)]

    for name in ("examples.jsonl", "rejected.jsonl"):
        got = ids(run_dir, name)
        assert len(got) == len(set(got)), f"duplicates in {name}"
        assert sorted(got) == sorted(ids(tmp_path / "clean", name))
    assert len(ids(run_dir, "examples.jsonl")) == 15


@pytest.mark.integration
def test_kill_during_train_resumes_from_checkpoint(tmp_path: Path, tiny_model_dir: Path, oracle: str) -> None:
    recipe = write_recipe(tmp_path, tiny_model_dir, oracle, generate={"n_examples": 24},
                          train={"epochs": 3, "save_steps": 3})
    run_dir = tmp_path / "run"
    assert _run_cli(["generate", str(recipe), "--run-dir", str(run_dir)]).returncode == 0
    proc = subprocess.Popen(CLI + ["train", str(recipe), "--run-dir", str(run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = run_dir / "student" / "checkpoints"
    _wait_for(lambda: any((p / "trainer_state.json").exists() for p in ckpts.glob("*/checkpoint-*")), 300, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "student" / "adapter").exists()

    resumed = _run_cli(["run", str(recipe), "--run-dir", str(run_dir), "--only", "train"])
    assert resumed.returncode == 0, resumed.stderr
    outputs = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]["outputs"]
    assert outputs["resumed_from"] and "checkpoint-" in outputs["resumed_from"]
    assert outputs["steps"] == 36  # 24 examples / batch 2 * 3 epochs: the resumed run finished the schedule
    assert (run_dir / "student" / "adapter" / "adapter_config.json").exists()

    # The resumed run ends where an unbroken run ends: same data, same schedule, same weights.
    clean = tmp_path / "clean"
    assert _run_cli(["generate", str(recipe), "--run-dir", str(clean)]).returncode == 0
    assert _run_cli(["train", str(recipe), "--run-dir", str(clean)]).returncode == 0
    assert [r["id"] for r in read_jsonl(clean / "data" / "examples.jsonl")] == \
        [r["id"] for r in read_jsonl(run_dir / "data" / "examples.jsonl")]
    from safetensors.torch import load_file

    resumed_w = load_file(run_dir / "student" / "adapter" / "adapter_model.safetensors")
    clean_w = load_file(clean / "student" / "adapter" / "adapter_model.safetensors")
    assert resumed_w.keys() == clean_w.keys()
    worst = max(float((resumed_w[k] - clean_w[k]).abs().max()) for k in clean_w)
    assert worst < 1e-5, f"resumed adapter differs from the unbroken run by {worst}"


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: arith\nteacher: {model: m, modle: 2}\nstudent: {model: s}\ntrain: {lr: fast}\n")
    res = _run_cli(["validate", str(bad)])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "teacher.modle: unknown key" in lines[0] and "train.lr" in lines[0]


def test_missing_model_file_is_one_line_exit_2(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: x\ntask: {ARITH}\nteacher: {{model: {tmp_path}/nope.gguf}}\n"
                      f"student: {{model: {tmp_path}/nope.gguf}}\n")
    res = _run_cli(["run", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "nope.gguf" in res.stderr


def test_truncated_gguf_is_one_line_exit_2(tmp_path: Path) -> None:
    from tests.test_cli import tiny_gguf_bytes

    bad = tmp_path / "cut.gguf"
    bad.write_bytes(tiny_gguf_bytes()[:-100])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: x\ntask: {ARITH}\nteacher: {{model: {bad}}}\nstudent: {{model: {bad}}}\n")
    res = _run_cli(["run", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "truncated" in res.stderr


def test_changed_recipe_needs_from(tmp_path: Path, tiny_model_dir: Path, oracle: str) -> None:
    recipe = write_recipe(tmp_path, tiny_model_dir, oracle, generate={"n_examples": 3})
    assert _run_cli(["generate", str(recipe), "--run-dir", str(tmp_path / "run")]).returncode == 0
    res = _run_cli(["run", str(recipe), "--run-dir", str(tmp_path / "run"), "--set", "train.lr=0.001"])
    assert res.returncode == 2 and "train.lr" in res.stderr and "--from" in res.stderr


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_changed_train_setting_with_from_train_really_retrains(tmp_path: Path, tiny_model_dir: Path,
                                                               oracle: str) -> None:
    recipe = write_recipe(tmp_path, tiny_model_dir, oracle, generate={"n_examples": 6})
    run_dir = tmp_path / "run"
    first = _run_cli(["run", str(recipe), "--run-dir", str(run_dir), "--only", "generate", "--only", "train"])
    assert first.returncode == 0, first.stderr
    before = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]["outputs"]
    assert before["steps"] == 3
    res = _run_cli(["run", str(recipe), "--run-dir", str(run_dir), "--set", "train.epochs=2", "--from", "train",
                    "--only", "train"])
    assert res.returncode == 0, res.stderr
    after = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]["outputs"]
    assert after["steps"] == 6 and after["resumed_from"] is None and not after["reused"]
    assert after["key"] != before["key"]
    assert [p.name for p in (run_dir / "student" / "checkpoints").iterdir()] == [after["key"]]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_qlora_through_the_pipeline_on_cpu(tmp_path: Path, tiny_model_dir: Path, oracle: str) -> None:
    pytest.importorskip("bitsandbytes")
    recipe = write_recipe(tmp_path, tiny_model_dir, oracle, generate={"n_examples": 6}, train={"mode": "qlora"})
    run = run_pipeline(load_recipe(recipe), tmp_path / "run", source=str(recipe))
    manifest = run.read_manifest()
    assert manifest["stages"]["report"]["status"] == "done"
    assert manifest["stages"]["train"]["outputs"]["mode"] == "qlora"
    assert (run.root / "student" / "merged" / "model.safetensors").exists()
    assert json.loads((run.root / "eval" / "summary.json").read_text())["merged"]["n_eval"] == 20


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_full_fine_tuning_through_the_variants_stage(tmp_path: Path, tiny_model_dir: Path) -> None:
    from arte_edge.recipes import validate_recipe
    from arte_edge.runctx import RunContext
    from arte_edge.rundir import RunDir
    from arte_edge.stages import variants

    recipe = validate_recipe({"name": "v", "task": str(ARITH), "teacher": {"model": "t"},
                              "student": {"model": str(tiny_model_dir), "threads": 1},
                              "splits": {"seeds": 2, "train_pool": 10, "eval": 4},
                              "train": {"mode": "full", "epochs": 1, "batch_size": 2, "max_length": 64, "threads": 1},
                              "evaluate": {"max_tokens": 8, "threads": 1}}, "test")
    run = RunDir(tmp_path / "run")
    rows = [{"id": f"s{i}", "messages": [{"role": "user", "content": f"{i}+1?"},
                                         {"role": "assistant", "content": f"Answer: {i + 1}"}]} for i in range(4)]
    path = run.variant_examples_path("stand")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = variants.run(RunContext(recipe, run))
    assert out["variants"]["stand"]["n_train"] == 4 and "accuracy" in out["variants"]["stand"]
    merged = run.variant_student_dir("stand") / "merged"
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_train_under_accelerate_with_two_cpu_processes(tmp_path: Path, tiny_model_dir: Path, oracle: str) -> None:
    """`accelerate launch` (2 processes, gloo on CPU): DDP trains, rank 0 alone writes, the merged model loads.

    `--multi_gpu` selects accelerate's torchrun launcher; with no GPU, the trainer's `use_cpu` makes accelerate
    pick MULTI_CPU on gloo (`--cpu` would select the single-process launcher and silently train alone).
    """
    recipe = write_recipe(tmp_path, tiny_model_dir, oracle, generate={"n_examples": 16})
    run_dir = tmp_path / "run"
    assert _run_cli(["generate", str(recipe), "--run-dir", str(run_dir)]).returncode == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(_free_port()), "-m", "arte_edge.cli", "train", str(recipe), "--run-dir", str(run_dir)]
    res = subprocess.run(launch, capture_output=True, text=True, cwd=ROOT, timeout=500)
    assert res.returncode == 0, res.stderr[-3000:]
    train = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]
    assert train["status"] == "done"
    # 16 examples, batch 2 per process, 2 processes: 4 optimizer steps per epoch (8 on one process).
    assert train["outputs"]["steps"] == 4, train
    assert train["outputs"]["world_size"] == 2

    merged = _run_cli(["merge", str(recipe), "--run-dir", str(run_dir)])
    assert merged.returncode == 0, merged.stderr
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "student" / "merged")
    assert model.config.num_hidden_layers == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_kill_during_align_preference_collection_then_resume_equals_clean(tmp_path: Path, tiny_model_dir: Path,
                                                                         slow_oracle: str) -> None:
    """ARTE step 3 (student scores each rationale on D_pref) is killed mid-way; the resumed scores equal a
    clean run's: same ids, same values, none lost or duplicated."""
    from arte_edge.export.converter import convert_to_gguf

    student_gguf = tmp_path / "student.f16.gguf"  # the tiny student with its ChatML template
    convert_to_gguf(tiny_model_dir, student_gguf, "f16")
    recipe = write_recipe(tmp_path, tiny_model_dir, slow_oracle)
    data = yaml.safe_load(recipe.read_text())
    data.update(method="arte", splits={"seeds": 3, "preference": 8, "train_pool": 0, "eval": 10},
                arte={"alignment": "select", "preference_selection": "random", "preference_size": 8, "n_drafts": 6,
                      "student_gguf": str(student_gguf), "student_max_tokens": 96, "score_batch": 2,
                      "question_pairs": 2, "rationale_pairs": 4, "max_tokens": 64})
    recipe.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "killed"
    scores = run_dir / "align" / "scores.jsonl"
    _kill_once(["align", str(recipe), "--run-dir", str(run_dir)], scores, 3, 300)
    partial = len(read_jsonl(scores))
    n_rationales = sum(r["ok"] for r in read_jsonl(run_dir / "align" / "rationales.jsonl"))
    assert 3 <= partial < n_rationales, (partial, n_rationales)

    resumed = _run_cli(["align", str(recipe), "--run-dir", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    clean = _run_cli(["align", str(recipe), "--run-dir", str(tmp_path / "clean")])
    assert clean.returncode == 0, clean.stderr

    def by_id(d: Path) -> dict[str, float]:
        rows = read_jsonl(d / "align" / "scores.jsonl")
        assert len(rows) == len({r["id"] for r in rows}), "duplicated scores"
        return {r["id"]: r["score"] for r in rows}

    assert by_id(run_dir) == by_id(tmp_path / "clean") and len(by_id(run_dir)) == n_rationales
    assert read_jsonl(run_dir / "align" / "pairs.jsonl") == read_jsonl(tmp_path / "clean" / "align" / "pairs.jsonl")


def test_variants_stage_trains_every_variant_and_can_skip_the_generic_evaluation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from arte_edge import models
    from arte_edge.backends import hf
    from arte_edge.recipes import validate_recipe
    from arte_edge.runctx import RunContext
    from arte_edge.rundir import RunDir
    from arte_edge.stages import variants
    from arte_edge.training import merge, sft

    recipe = validate_recipe({"name": "v", "task": str(ARITH), "teacher": {"model": "t"}, "student": {"model": "s"},
                              "splits": {"seeds": 2, "train_pool": 10, "eval": 10}, "variants": {"evaluate": False}},
                             "test")
    ctx = RunContext(recipe, RunDir(tmp_path))
    for name, n in (("stand", 3), ("inpd", 2)):
        folder = tmp_path / "data" / "variants" / name
        folder.mkdir(parents=True)
        rows = [{"id": f"{name}{i}", "messages": [], "meta": {"teacher_calls": 2}} for i in range(n)]
        (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trained: list[int] = []
    (tmp_path / "base").mkdir()
    monkeypatch.setattr(models, "hf_folder", lambda spec: tmp_path / "base")

    def fake_train(base: Path, rows: list, out: Path, *a: object) -> dict:
        trained.append(len(rows))
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_text("{}")
        return {"steps": 1}

    monkeypatch.setattr(sft, "train_adapter", fake_train)
    monkeypatch.setattr(merge, "merge_adapter",
                        lambda base, adapter, merged, threads: (merged.mkdir(parents=True),
                                                                (merged / "config.json").write_text("{}"), {})[2])

    def no_fp32_eval(*_a: object, **_k: object) -> None:
        raise AssertionError("variants.evaluate is off: no fp32 evaluation")

    monkeypatch.setattr(hf, "HFChat", no_fp32_eval)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text(json.dumps({"base": {"accuracy": 0.1},
                                                                "variant-stand": {"accuracy": 0.9}}))
    out = variants.run(ctx)
    assert sorted(trained) == [2, 3]
    assert out["variants"] == {"inpd": {"n_train": 2, "teacher_calls": 4}, "stand": {"n_train": 3, "teacher_calls": 6}}
    # an accuracy from an earlier run with evaluation on must not be reported beside the new dataset
    assert json.loads((tmp_path / "eval" / "summary.json").read_text()) == {"base": {"accuracy": 0.1}}


@pytest.mark.parametrize(("n_rows", "batch", "accum", "epochs", "warmup"),
                         [(4, 4, 1, 2, 0), (12, 4, 1, 2, 0), (400, 4, 1, 1, 10), (401, 4, 1, 1, 10), (64, 2, 4, 3, 2)])
def test_sft_warmup_rounds_down_so_short_runs_train_from_the_first_step(
        tmp_path: Path, n_rows: int, batch: int, accum: int, epochs: int, warmup: int) -> None:
    from arte_edge.config import TrainConfig
    from arte_edge.training.sft import sft_config, warmup_steps

    assert warmup_steps(n_rows, batch, accum, epochs) == warmup
    cfg = TrainConfig(batch_size=batch, grad_accum=accum, epochs=epochs)
    assert sft_config(cfg, tmp_path, 0, n_rows).warmup_steps == warmup


def test_sft_warmup_counts_the_steps_of_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from arte_edge.training.sft import rows_per_process, warmup_steps

    monkeypatch.setenv("WORLD_SIZE", "2")  # accelerate launch: each process sees half the rows
    assert rows_per_process(401) == 201 and warmup_steps(rows_per_process(400), 4, 1, 1) == 5
    monkeypatch.delenv("WORLD_SIZE")
    assert rows_per_process(401) == 401


def test_options_added_by_an_upgrade_are_not_a_recipe_change(tmp_path: Path) -> None:
    from arte_edge.config import recipe_to_dict
    from arte_edge.errors import ArteError
    from arte_edge.pipeline import init_run
    from arte_edge.recipes import validate_recipe
    from arte_edge.rundir import RunDir

    recipe = validate_recipe({"name": "u", "task": str(ARITH), "teacher": {"model": "t"}, "student": {"model": "s"}},
                             "test")
    older = recipe_to_dict(recipe)
    del older["variants"]["evaluate"]  # written by a version without this option (its default now applies)
    run = RunDir(tmp_path)
    run.update_manifest(recipe=older, stages={})
    init_run(recipe, run, "r.yaml", None)
    assert run.read_manifest()["recipe"] == recipe_to_dict(recipe)
    changed = validate_recipe({**recipe_to_dict(recipe), "variants": {"evaluate": False}}, "test")
    with pytest.raises(ArteError, match=r"variants\.evaluate.*--from"):
        init_run(changed, run, "r.yaml", None)
