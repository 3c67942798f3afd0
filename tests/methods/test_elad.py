"""ELAD: uncertainty scores, CLEAR parsing, budget accounting, and the active loop on a tiny model."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from arte_edge.backends.base import Completion, Message, SamplingParams
from arte_edge.methods import elad
from arte_edge.methods.elad import annotation, loop, prompts, students, uncertainty
from arte_edge.methods.elad.config import EladConfig
from arte_edge.methods.elad.revision import parse_clear
from arte_edge.recipes import load_recipe, validate_recipe
from arte_edge.runctx import RunContext
from arte_edge.rundir import RunDir, read_jsonl
from arte_edge.tasks import get_task
from arte_edge.tasks.base import Item

ROOT = Path(__file__).resolve().parents[2]
ARITH = ROOT / "tests" / "data" / "arith" / "task.yaml"
QUESTION = re.compile(r"What is (-?\d+) ([+*-]) (-?\d+)\?")
STRATEGIES = ["elad", "standard", "random", "answer_entropy", "teacher_explain"]


def _solve(text: str) -> tuple[str, int, int]:
    m = QUESTION.search(text)
    assert m, text
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return m.group(0), a, {"+": a + b, "-": a - b, "*": a * b}[op]


def _bucket(key: str, n: int) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % n


class FakeModel:
    """Base of the deterministic fakes: implements the ChatModel protocol and counts calls."""

    name = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        self.calls += 1
        return Completion(self.reply(messages, params), 10, 5)

    def chat_batch(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        return [self.chat(c, replace(params, seed=params.seed + i)) for i, c in enumerate(conversations)]

    def close(self) -> None:
        pass

    def reply(self, messages: Sequence[Message], params: SamplingParams) -> str:
        raise NotImplementedError


class FakeTeacher(FakeModel):
    """CLEAR replies: one question in six is garbage, one in six still wrong, the rest correct."""

    name = "fake-teacher"

    def reply(self, messages: Sequence[Message], params: SamplingParams) -> str:
        user = messages[-1]["content"]
        key, a, value = _solve(user)
        kind = _bucket(key, 6)
        if "First wrong step" in user:
            if kind == 0:
                return "Looks fine to me."
            answer = value + 1 if kind == 1 else value
            return (f"Check 1: wrong, bad arithmetic\nFirst wrong step: 1\nRevised solution:\n"
                    f"Step 1: Start from {a}.\nStep 2: The result is {answer}.\nAnswer: {answer}")
        return f"Step 1: Start from {a}.\nStep 2: The result is {value}.\nAnswer: {value + (kind == 0)}"


class FakeStudent(FakeModel):
    """Explains in three steps; on 'unstable' questions its prefix and sampled answers move around."""

    name = "fake-student"

    def reply(self, messages: Sequence[Message], params: SamplingParams) -> str:
        user = messages[-1]["content"]
        key, _, value = _solve(user)
        unstable = _bucket(key, 3) == 0
        if "The first steps of a solution" in user:
            k = len(re.findall(r"^Step \d+:", user, re.M))
            return f"Answer: {value + (k % 2 if unstable else 0)}"
        shift = (params.seed % 3) if unstable and params.temperature > 0 else 0
        if "without any reasoning" in messages[0]["content"]:
            return f"Answer: {value + shift}"
        return f"Step 1: Read it.\nStep 2: Compute.\nStep 3: Check.\nAnswer: {value + shift}"


# ================================================================================ uncertainty scores

@pytest.mark.parametrize("measure", ["flips", "disagreement", "entropy"])
def test_stable_explanation_scores_lower_than_one_that_flips(measure: str) -> None:
    stable = ["7", "7", "7", "7"]
    flips_midway = ["7", "7", "9", "7"]
    assert uncertainty.intra_uncertainty(stable, measure) == 0.0
    assert uncertainty.intra_uncertainty(flips_midway, measure) > 0.0


def test_intra_scores_are_pinned() -> None:
    assert uncertainty.intra_uncertainty(["7", "7", "9", "7"], "flips") == pytest.approx(2 / 3)
    assert uncertainty.intra_uncertainty(["7", "7", "9", "7"], "disagreement") == pytest.approx(1 / 3)
    assert uncertainty.intra_uncertainty(["3", "5", "7", "7"], "flips") == pytest.approx(2 / 3)  # converges: 2 changes
    assert uncertainty.intra_uncertainty([None, "7", None, "7"], "flips") == 0.0  # unanswered prefixes are skipped
    assert uncertainty.intra_uncertainty(["7"], "flips") == 0.0


def test_inter_entropy_of_answers() -> None:
    assert uncertainty.inter_uncertainty(["7", "7", "7", "7"]) == 0.0
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(4)
    assert uncertainty.inter_uncertainty(["7", "8", "7", "9"]) == pytest.approx(expected)  # = 0.75
    assert uncertainty.inter_uncertainty(["7", "8", "9", "10"]) == pytest.approx(1.0)
    assert uncertainty.inter_uncertainty(["7", None, "7", None]) == pytest.approx(0.5)  # no answer is a category


def test_lambda_combination() -> None:
    assert uncertainty.combine_scores(1.0, 0.0, 1.0) == 1.0
    assert uncertainty.combine_scores(1.0, 0.0, 0.0) == 0.0
    assert uncertainty.combine_scores(0.8, 0.4, 0.25) == pytest.approx(0.25 * 0.8 + 0.75 * 0.4)


def test_split_steps_and_prefixes() -> None:
    text = "Step 1: Add 2 and 3.\nStep 2: That is 5,\nstill step two.\n**Step 3:** Done.\nAnswer: 5"
    assert prompts.split_steps(text) == ["Add 2 and 3.", "That is 5, still step two.", "Done."]
    assert prompts.split_steps("First add.\n\nThen check.\nAnswer: 5") == ["First add.", "Then check."]
    assert prompts.split_steps("We add. Then we check! Answer: 5", "sentences") == ["We add.", "Then we check!",
                                                                                     "Answer: 5"]
    assert uncertainty.prefix_lengths(4, 6) == [1, 2, 3]
    assert uncertainty.prefix_lengths(4, 6, include_empty=True) == [0, 1, 2, 3]
    assert uncertainty.prefix_lengths(20, 4) == [1, 7, 13, 19]
    assert uncertainty.prefix_lengths(1, 4) == []


def test_right_but_unstable_question_is_selected_over_stable_one() -> None:
    task = get_task(str(ARITH))
    unstable = Item("u", "What is 1 + 2?", "3")  # bucket 0 for the fake student: flips between prefixes
    stable = Item("s", "What is 5 + 3?", "8")
    assert _bucket("What is 1 + 2?", 3) == 0 and _bucket("What is 5 + 3?", 3) != 0
    cfg = EladConfig(lambda_=1.0, max_prefixes=4)
    rows = uncertainty.egss_scores(FakeStudent(), task, [stable, unstable], cfg, seed=0)
    by_id = {r["item_id"]: r for r in rows}
    assert task.check(unstable, by_id["u"]["explanation"]).correct  # its final answer is right...
    assert by_id["u"]["prefix_answers"] == ["4", "3"]  # ...but it moves across prefixes
    assert by_id["s"]["score"] == 0.0 < by_id["u"]["score"]
    assert [r["item_id"] for r in uncertainty.rank_by_score(rows, 1, seed=0)] == ["u"]


# ===================================================================================== CLEAR parsing

STUDENT_STEPS = ["Tom has 3 apples.", "He buys 4 more, so 3 * 4 = 12.", "He has 12 apples."]


def test_clear_keeps_correct_prefix_and_rewrites_from_first_flaw() -> None:
    reply = ("Check 1: correct\nCheck 2: wrong, should add\nCheck 3: wrong\nFirst wrong step: 2\n"
             "Revised solution:\nStep 2: He buys 4 more, so 3 + 4 = 7.\nStep 3: He has 7 apples.\nAnswer: 7")
    revision, reason = parse_clear(reply, STUDENT_STEPS)
    assert reason == "" and revision is not None
    assert revision.first_wrong == 2 and revision.n_kept == 1
    assert revision.steps == ("Tom has 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "He has 7 apples.")
    assert revision.text.endswith("Step 3: He has 7 apples.\nAnswer: 7")


def test_clear_teacher_renumbering_from_one_and_all_correct() -> None:
    renumbered = "First wrong step: 3\nRevised solution:\nStep 1: So he has 12 apples... no: 3 + 4 = 7.\nAnswer: 7"
    revision, _ = parse_clear(renumbered, STUDENT_STEPS)
    assert revision is not None and revision.steps[:2] == tuple(STUDENT_STEPS[:2]) and len(revision.steps) == 3
    fine, _ = parse_clear("Check 1: correct\nFirst wrong step: none\nAnswer: 12", STUDENT_STEPS)
    assert fine is not None and fine.first_wrong is None and fine.steps == tuple(STUDENT_STEPS)


@pytest.mark.parametrize("reply, why", [
    ("The solution looks good.", "no 'First wrong step'"),
    ("First wrong step: 2\nStep 2: 3 + 4 = 7.", "no 'Answer:'"),
    ("First wrong step: 9\nStep 9: x\nAnswer: 7", "outside"),
    ("First wrong step: 2\nRevised solution:\nAnswer: 7", "no rewritten steps"),
])
def test_clear_parse_failures(reply: str, why: str) -> None:
    revision, reason = parse_clear(reply, STUDENT_STEPS)
    assert revision is None and why in reason


class ScriptedTeacher(FakeModel):
    def __init__(self, replies: list[str]) -> None:
        super().__init__()
        self.replies = replies

    def reply(self, messages: Sequence[Message], params: SamplingParams) -> str:
        return self.replies[self.calls - 1]


def test_annotator_counts_and_drops_parse_failures_and_wrong_answers() -> None:
    task = get_task(str(ARITH))
    item = Item("q", "What is 3 + 4?", "7")
    student = "Step 1: Take 3.\nStep 2: 3 * 4 = 12.\nAnswer: 12"
    replies = ["no idea",
               "First wrong step: 2\nRevised solution:\nStep 2: 3 + 4 = 8.\nAnswer: 8",
               "Check 2: wrong\nFirst wrong step: 2\nRevised solution:\nStep 2: 3 + 4 = 7.\nAnswer: 7"]
    annotator = annotation.Annotator(ScriptedTeacher(replies), task, EladConfig(), "gold", "scripted", 0)
    outcomes = [annotator.annotate(item, student, "clear", f"id{i}", {"round": 1}) for i in range(3)]
    assert outcomes[0][0] is None and outcomes[0][1]["kind"] == "parse_failure"
    assert outcomes[1][0] is None and outcomes[1][1]["kind"] == "still_wrong"
    example = outcomes[2][0]
    assert example is not None and example["meta"]["teacher_calls"] == 1 and example["meta"]["n_kept"] == 1
    assert example["messages"][-1]["content"] == "Step 1: Take 3.\nStep 2: 3 + 4 = 7.\nAnswer: 7"
    assert all(o[1]["meta"]["teacher_calls"] == 1 for o in outcomes[:2])


def test_self_consistency_checker_without_gold() -> None:
    task = get_task(str(ARITH))
    item = Item("q", "What is 3 + 4?", "")
    reply = "First wrong step: 1\nRevised solution:\nStep 1: 3 + 4 = 7.\nAnswer: 7"
    teacher = ScriptedTeacher([reply, "Answer: 7", "Answer: 7", "Answer: 6"])
    cfg = EladConfig(checker="self_consistency", consistency_samples=3)
    assert annotation.resolve_checker(EladConfig(), [item]) == "self_consistency"
    example, rejected = annotation.Annotator(teacher, task, cfg, "self_consistency", "t", 0).annotate(
        item, "Step 1: 3 + 4 = 8.\nAnswer: 8", "clear", "id", {"round": 1})
    assert rejected is None and example["meta"]["teacher_calls"] == 4 == teacher.calls
    assert annotation.calls_per_question("self_consistency", cfg) == 4


# ================================================================================= budget accounting

def _ctx(tmp_path: Path, student: Path, elad_cfg: dict[str, Any], **sections: Any) -> RunContext:
    recipe = {
        "name": "tiny-elad", "task": str(ARITH), "method": "elad", "seed": 0,
        "teacher": {"model": "fake", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
        "student": {"model": str(student), "threads": 1},
        "splits": {"seeds": 0, "train_pool": 16, "eval": 8, "preference": 0},
        "train": {"epochs": 1, "batch_size": 2, "save_steps": 50, "max_length": 128, "threads": 1, "lora_r": 4,
                  "lora_alpha": 8},
        "evaluate": {"max_tokens": 8, "threads": 1},
        "elad": {"stop_metric": "none", **elad_cfg},
        **sections,
    }
    return RunContext(validate_recipe(recipe, "test"), RunDir(tmp_path / "run"))


def _fake_trainer(calls: list[Path]) -> students.Trainer:
    def train(examples: list[dict[str, Any]], round_dir: Path) -> Path:
        calls.append(round_dir)
        merged = round_dir / "merged"
        merged.mkdir(parents=True, exist_ok=True)
        return merged

    return train


@pytest.mark.parametrize("elad_cfg", [
    {"budget": 5, "rounds": 4, "batch_size": 2, "candidates_per_round": 8},  # budget binds mid-round
    {"budget": 40, "rounds": 3, "batch_size": 3},  # rounds bind
    {"budget": 7, "rounds": 5, "batch_size": 2, "checker": "self_consistency", "consistency_samples": 2},
])
def test_never_more_teacher_calls_than_budget(tmp_path: Path, tiny_model_dir: Path, elad_cfg: dict) -> None:
    teacher, trained = FakeTeacher(), []
    ctx = _ctx(tmp_path, tiny_model_dir, {**elad_cfg, "stop_metric": "none", "n_samples": 4})
    out = elad.generate_datasets(ctx, teacher=teacher, open_student=lambda _: FakeStudent(),
                                 trainer=_fake_trainer(trained))
    cfg = ctx.method_config
    rows = read_jsonl(ctx.run.root / "elad" / "curve.jsonl")
    last = {r["strategy"]: r for r in rows}
    assert set(last) == {"base", *STRATEGIES}
    spent = {s: last[s]["teacher_calls"] for s in STRATEGIES}
    assert all(v <= cfg.budget for v in spent.values())
    if annotation.resolve_checker(cfg, ctx.split("train_pool")) == "gold":  # one call per question: exact and equal
        assert set(spent.values()) == {min(cfg.budget, cfg.rounds * cfg.batch_size)}, spent
    else:  # consistency calls are skipped after a parse failure, so spending is only capped
        assert all(v > cfg.budget - annotation.calls_per_question("self_consistency", cfg) for v in spent.values())
    assert teacher.calls == sum(spent.values())  # every real call is accounted for
    for s in STRATEGIES:
        calls = [r["teacher_calls"] for r in rows if r["strategy"] == s]
        assert calls == sorted(calls) and all(c <= cfg.budget for c in calls)
    assert out["teacher_calls"] == spent["elad"]
    cost = (ctx.run.root / "data" / "variants" / "random" / "cost.json").read_text()
    assert f'"teacher_calls": {spent["random"]}' in cost


def test_affordable_never_overspends() -> None:
    assert annotation.affordable(budget=10, spent=9, per_question=1, batch=4, n_unlabelled=100) == 1
    assert annotation.affordable(budget=10, spent=8, per_question=3, batch=4, n_unlabelled=100) == 0
    assert annotation.affordable(budget=10, spent=0, per_question=1, batch=4, n_unlabelled=2) == 2
    assert loop.patience_exhausted([0.5, 0.6, 0.6], patience=1, min_delta=0.0)
    assert not loop.patience_exhausted([0.5, 0.6, 0.7], patience=1, min_delta=0.0)
    assert not loop.patience_exhausted([0.5, 0.4], patience=2, min_delta=0.0)


def test_patience_stops_the_loop(tmp_path: Path, tiny_model_dir: Path) -> None:
    ctx = _ctx(tmp_path, tiny_model_dir, {"budget": 20, "rounds": 4, "batch_size": 2, "stop_metric": "eval",
                                           "patience": 1, "baselines": []})
    elad.generate_datasets(ctx, teacher=FakeTeacher(), open_student=lambda _: FakeStudent(),
                           trainer=_fake_trainer([]))
    rows = [r for r in read_jsonl(ctx.run.root / "elad" / "curve.jsonl") if r["strategy"] == "elad"]
    # The fake student's accuracy never changes, so the first round already fails to improve on the base.
    assert len(rows) == 1 and rows[0]["stop_reason"].startswith("patience")
    assert "patience" in (ctx.run.root / "report" / "sections" / "elad.md").read_text()


# ===================================================================== the loop on the tiny model

def test_active_loop_on_tiny_model_curve_plot_and_resume(tmp_path: Path, tiny_model_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    elad_cfg = {"budget": 4, "rounds": 2, "batch_size": 2, "candidates_per_round": 8, "n_samples": 4,
                "max_prefixes": 4, "explain_max_tokens": 24, "prefix_max_tokens": 6, "stop_metric": "none"}
    ctx = _ctx(tmp_path, tiny_model_dir, elad_cfg, variants={"evaluate": False})
    teacher = FakeTeacher()
    out = elad.generate_datasets(ctx, teacher=teacher)
    root = ctx.run.root
    rows = read_jsonl(root / "elad" / "curve.jsonl")
    for s in STRATEGIES:
        points = [r for r in rows if r["strategy"] == s]
        assert [p["round"] for p in points] == [1, 2]
        assert all(0 <= p["ci_low"] <= p["accuracy"] <= p["ci_high"] <= 1 and p["n"] == 8 for p in points)
        assert points[-1]["stop_reason"].startswith(("rounds", "budget"))
    assert [r["round"] for r in rows if r["strategy"] == "base"] == [0]
    assert (root / "report" / "elad_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = (root / "report" / "sections" / "elad.md").read_text()
    assert "| elad | 2 |" in section and "95% CI" in section
    info = __import__("json").loads((root / "report" / "sections" / "elad.json").read_text())
    for r in info["rows"]:  # "no answer" is counted from each point's own eval file
        assert r["n_no_answer"] == sum(x["predicted"] is None for x in read_jsonl(root / r["eval_file"]))
    assert "| no answer |" in section
    # `arte-edge report` re-renders the section from the curve and the recorded setup, without the models.
    (root / "report" / "sections" / "elad.md").unlink()
    assert elad.refresh_report(root)
    assert (root / "report" / "sections" / "elad.md").read_text() == section
    assert not elad.refresh_report(tmp_path / "no-elad-here")
    examples = read_jsonl(ctx.run.examples_path)
    assert len(examples) == out["n_examples"] and all(e["messages"][-1]["role"] == "assistant" for e in examples)
    for name in ("standard", "random", "answer_entropy", "teacher_explain"):
        assert (root / "data" / "variants" / name / "cost.json").exists()
    # Every strategy's last point is compared with standard distillation at the same budget, Holm-adjusted.
    assert "### Last points vs `standard` on the same held-out items (paired)" in section
    assert {p["strategy"] for p in info["paired"]} == set(STRATEGIES) - {"standard"}
    assert all(p["reference"] == "standard" and p["p_holm"] >= p["mcnemar_p"] for p in info["paired"])
    # keep_models: last — only the newest merged student per strategy stays on disk
    assert not (root / "elad" / "elad" / "round-1" / "merged").exists()

    # Simulate a kill after round 1: drop the round-2 points, rerun; nothing is re-asked of the teacher.
    kept = [r for r in rows if r["round"] < 2]
    (root / "elad" / "curve.jsonl").write_text("".join(__import__("json").dumps(r) + "\n" for r in kept))
    teacher.calls = 0
    trained: list[Path] = []
    base_trainer = students.default_trainer(tiny_model_dir, ctx.recipe)

    def counting(examples: list[dict[str, Any]], round_dir: Path) -> Path:
        trained.append(round_dir)
        return base_trainer(examples, round_dir)

    elad.generate_datasets(ctx, teacher=teacher, trainer=counting)
    again = read_jsonl(root / "elad" / "curve.jsonl")
    assert teacher.calls == 0
    assert all(p.name == "round-2" for p in trained)  # round 1 was skipped
    strip = ("seconds",)

    def key(rs: list[dict]) -> list[dict]:
        return sorted(({k: v for k, v in r.items() if k not in strip} for r in rs),
                      key=lambda r: (r["strategy"], r["round"]))

    assert key(again) == key(rows)

    # A full rerun skips everything.
    trained.clear()
    elad.generate_datasets(ctx, teacher=teacher, trainer=counting)
    assert trained == [] and teacher.calls == 0

    # The train and variants stages adopt the students the loop trained on exactly their data; none is retrained.
    from arte_edge.stages import train as train_stage
    from arte_edge.stages import variants as variants_stage
    from arte_edge.training import sft
    from arte_edge.training.student import read_record

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a student ELAD's loop already trained was trained again")

    monkeypatch.setattr(sft, "train_adapter", no_training)
    already = elad.METHOD.trained_students(ctx)
    arms = {name for name in ("standard", "random", "answer_entropy", "teacher_explain")
            if read_jsonl(root / "data" / "variants" / name / "examples.jsonl")}
    assert set(already) == {"main", *arms}
    last_elad = [r for r in again if r["strategy"] == "elad"][-1]
    assert already["main"] == (root / last_elad["model_dir"]).parent
    assert train_stage.run(ctx)["reused"]
    assert read_record(ctx.run.student_dir)["adopted_from"] == str(already["main"])
    assert (ctx.run.student_dir / "merged" / "config.json").exists()
    assert set(variants_stage.run(ctx)["variants"]) == arms
    for name in arms:
        assert read_record(ctx.run.variant_student_dir(name))["adopted_from"] == str(already[name])


def test_recipe_validates() -> None:
    recipe = load_recipe(ROOT / "configs" / "elad-gsm8k.yaml")
    assert recipe.method == "elad" and recipe.task == "gsm8k"
    assert recipe.student.model == "qwen2.5-coder-0.5b-instruct"
    assert recipe.method_config.budget <= recipe.method_config.rounds * recipe.method_config.batch_size * 2


def test_cpu_recipe_validates_and_fits_its_budget() -> None:
    recipe = load_recipe(ROOT / "configs" / "elad-arc-easy-cpu.yaml")
    cfg = recipe.method_config
    assert recipe.method == "elad" and recipe.task == "arc_easy"
    assert cfg.budget == cfg.rounds * cfg.batch_size and cfg.candidates_per_round >= 4 * cfg.batch_size
    assert cfg.eval_size is not None and cfg.eval_size <= recipe.splits.eval


def test_student_quant_opens_each_student_as_a_cached_gguf(tmp_path: Path, tiny_model_dir: Path) -> None:
    import shutil

    from arte_edge.backends.llamacpp import LlamaCppChat

    root = tmp_path / "run"
    merged = root / "elad" / "elad" / "round-1" / "merged"
    shutil.copytree(tiny_model_dir, merged)
    open_student = students.default_opener(1, "q8_0", root, n_ctx=256, verify=False)
    for folder, expected in ((tiny_model_dir, root / "elad" / "base" / "gguf" / "student.q8_0.gguf"),
                             (merged, merged.parent / "merged-gguf" / "student.q8_0.gguf")):
        model = open_student(folder)
        try:
            assert isinstance(model, LlamaCppChat) and model.path == expected
            assert model.chat([{"role": "user", "content": "2 + 2?"}], SamplingParams(max_tokens=4)).completion_tokens
        finally:
            model.close()
    assert not students.quantized_dir(tiny_model_dir).exists()  # nothing written beside a model outside the run


@pytest.mark.parametrize("faithful", [True, False])
def test_curve_points_are_scored_one_sequence_at_a_time_like_the_device(tmp_path: Path, tiny_model_dir: Path,
                                                                        faithful: bool) -> None:
    ctx = _ctx(tmp_path, tiny_model_dir, {"student_quant": "q8_0", "device_faithful_eval": faithful},
               export={"verify": False})
    scoring, evaluation = students.student_openers(ctx.recipe, ctx.run.root)
    sizes = []
    for opener in (scoring, evaluation):
        model = opener(tiny_model_dir)
        try:
            sizes.append(model.batch_size)
        finally:
            model.close()
    assert sizes == [8, 1 if faithful else 8]  # selection scoring stays batched (speed); evaluation is the device's


def test_student_quant_must_be_a_gguf_type() -> None:
    from pydantic import ValidationError

    from arte_edge.methods.elad.config import EladConfig

    with pytest.raises(ValidationError, match="unknown GGUF type"):
        EladConfig(student_quant="q3")


def test_validation_stop_rule_without_a_validation_split_is_a_config_error() -> None:
    from arte_edge.errors import ConfigError

    data = {"name": "e", "task": "arc_easy", "method": "elad", "teacher": {"model": "t"}, "student": {"model": "s"},
            "splits": {"preference": 0}, "elad": {"stop_metric": "validation"}}
    with pytest.raises(ConfigError, match=r"elad.stop_metric: 'validation' needs a validation split"):
        validate_recipe(data, "test")
    assert validate_recipe({**data, "splits": {"preference": 20}}, "test").method_config.stop_metric == "validation"
    assert validate_recipe({**data, "elad": {"stop_metric": "none"}}, "test").method_config.stop_metric == "none"


def test_cached_curve_points_count_only_under_the_same_evaluation_mode(tmp_path: Path) -> None:
    """A resumed run that now decodes another way (runtime, batch mode) re-scores a cached point instead of mixing
    a batched base point with batch-1 rounds; a point whose model is gone is marked, not silently reused."""
    from arte_edge.evaluation.scoring import eval_params

    task = get_task(ARITH)
    items = task.load()[:6]
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (base_dir / "config.json").write_text("{}")
    student = FakeStudent()
    env = loop.LoopEnv(root=tmp_path, task=task, cfg=EladConfig(stop_metric="none"), pool=[], eval_items=items,
                       val_items=[], base_dir=base_dir, annotator=None, open_student=lambda d: student,  # type: ignore[arg-type]
                       train=None, eval_params=eval_params(task, 16), seed=0, eval_mode="q8_0, batched")  # type: ignore[arg-type]
    first = loop.base_point(env)
    assert student.calls == 6 and first["eval_key"] == loop.eval_key(env, base_dir)
    assert loop.base_point(env) == first and student.calls == 6  # same mode: the cached point stands
    env.eval_mode = "q8_0, one sequence at a time"
    again = loop.base_point(env)
    assert student.calls == 12 and again["eval_key"] != first["eval_key"]
    assert [r["eval_key"] for r in read_jsonl(env.curve_path)] == [again["eval_key"]]  # replaced, not appended
    (base_dir / "config.json").unlink()
    base_dir.rmdir()
    env.eval_mode = "fp32 torch, batched"
    assert loop.base_point(env)["eval_key_stale"] is True and student.calls == 12


def test_last_points_are_compared_with_standard_distillation_holm_adjusted(tmp_path: Path) -> None:
    from arte_edge.methods.elad.report import paired_final
    from arte_edge.stats import mcnemar_items_needed, mcnemar_p

    root = tmp_path / "run"
    answers = {"standard": [1] * 10 + [0] * 10, "elad": [1] * 18 + [0] * 2, "random": [1] * 10 + [0] * 10}
    rows = [{"strategy": "base", "round": 0, "eval_file": "base.jsonl"}]
    for name, correct in answers.items():
        path = root / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(__import__("json").dumps({"item_id": f"q{i}", "correct": bool(c)}) + "\n"
                                for i, c in enumerate(correct)))
        rows += [{"strategy": name, "round": 1, "eval_file": f"{name}.jsonl"}]
    paired = {p["strategy"]: p for p in paired_final(root, rows)}
    assert set(paired) == {"elad", "random"}  # the reference is not compared with itself
    e = paired["elad"]
    assert (e["only_a"], e["only_b"], e["n"]) == (8, 0, 20) and e["diff"] == pytest.approx(0.4)
    assert e["mcnemar_p"] == pytest.approx(round(mcnemar_p([True] * 18 + [False] * 2, [True] * 10 + [False] * 10), 4))
    assert e["mcnemar_p"] == pytest.approx(2 * 0.5 ** 8, abs=1e-4)
    assert e["p_holm"] == pytest.approx(min(1.0, 2 * e["p"]), abs=1e-4)  # smallest of 2 p-values: × 2
    assert paired["random"]["diff"] == 0 and paired["random"]["p_holm"] == 1.0
    assert e["n_needed"] == mcnemar_items_needed(0.4, 0.4) and paired["random"]["n_needed"] is None
    # Without a standard arm the strategies are compared with ELAD, as before.
    without = paired_final(root, [r for r in rows if r["strategy"] != "standard"])
    assert [(p["strategy"], p["reference"]) for p in without] == [("random", "elad")]
