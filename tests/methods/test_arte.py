"""ARTE: each step's contract on synthetic data, fake models and the tiny random model."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from arte_edge.backends.base import Completion, Message, SamplingParams
from arte_edge.config import ModelSpec, Recipe, TrainConfig
from arte_edge.errors import ArteError, ConfigError
from arte_edge.methods import arte as A
from arte_edge.methods.arte import students
from arte_edge.methods.arte.config import ArteConfig, DpoConfig, dpo_settings
from arte_edge.methods.arte.scorer import ChatModelScorer, common_prefix_len
from arte_edge.recipes import load_recipe, validate_recipe
from arte_edge.runctx import RunContext
from arte_edge.rundir import RunDir, read_jsonl
from arte_edge.tasks import get_task
from arte_edge.tasks.base import Item
from arte_edge.training.dpo import dpo_warmup_steps, train_dpo

ROOT = Path(__file__).resolve().parents[2]
ARITH = ROOT / "tests" / "data" / "arith" / "task.yaml"
QUESTION = re.compile(r"What is (\d+) ([+*-]) (\d+)\?")


def _value(question: str) -> int:
    a, op, b = QUESTION.search(question).groups()
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


# ------------------------------------------------------------------------------------------- fakes
class FakeStudent:
    """Correct iff the question's first operand mod 4 is below its level: the demo's 'level k' marker, plus
    one per demonstration, plus ``bonus``."""

    name = "fake-student"

    def __init__(self, bonus: int = 0):
        self.bonus = bonus

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        demo = " ".join(m["content"] for m in messages[1:-1] if m["role"] == "assistant")
        level = int(m.group(1)) if (m := re.search(r"level(\d)", demo)) else 0
        level += self.bonus + sum(m["role"] == "assistant" for m in messages)  # each shot helps
        question = messages[-1]["content"]
        a = int(QUESTION.search(question).group(1))
        value = _value(question) + (0 if a % 4 < level else 1)
        return Completion(f"Thinking.\nAnswer: {value}", 10, 5)

    def chat_batch(self, conversations, params):
        return [self.chat(c, replace(params, seed=params.seed + i)) for i, c in enumerate(conversations)]

    def close(self) -> None:
        pass


class FakeTeacher:
    """Drafts 'What is a + b?' (every 7th draft is garbage); a rationale in style s says 'level{s + a % 2}';
    style 3's answer is wrong."""

    name = "fake-teacher"

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        user = messages[-1]["content"]
        if "exam questions" in messages[0]["content"]:
            if params.seed % 7 == 0:
                return Completion("I cannot think of one.", 30, 6)
            a, b = params.seed % 37, (params.seed // 37) % 41
            return Completion(f"Question:\nWhat is {a} + {b}?\nAnswer: {a + b}", 30, 12)
        style = next((i for i, s in enumerate(ArteConfig().styles) if messages[0]["content"].startswith(s)), 1)
        value = _value(user) + (1 if style == 3 else 0)
        level = style + int(QUESTION.search(user).group(1)) % 2  # some drafts make better demos
        return Completion(f"In style{style} (level{level}) we add the numbers.\nAnswer: {value}", 40, 10)

    def chat_batch(self, conversations, params):
        return [self.chat(c, replace(params, seed=params.seed + i)) for i, c in enumerate(conversations)]

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------- step 1
def test_irt_recovers_the_most_discriminating_items() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    n_resp, n_items = 60, 40
    alpha = np.where(np.arange(n_items) % 2 == 0, 3.0, 0.25)
    beta = rng.normal(0, 0.8, n_items)
    theta = rng.normal(0, 1, n_resp)
    p = 1 / (1 + np.exp(-alpha[None, :] * (theta[:, None] - beta[None, :])))
    y = (rng.random((n_resp, n_items)) < p).astype(float)
    fit = A.fit_irt_2pl(y)
    top = set(A.rank_by_discrimination(y, fit["alpha"])[:15])
    truly_high = {i for i in range(n_items) if alpha[i] > 1}
    assert len(top & truly_high) >= 13
    assert np.corrcoef(fit["theta"], theta)[0, 1] > 0.8


def test_constant_items_rank_last() -> None:
    import numpy as np

    y = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1.0]])
    order = A.rank_by_discrimination(y, np.array([9.0, 1.0, 2.0]))
    assert order[-1] == 0


def test_select_preference_set_keeps_top_alpha_ids() -> None:
    items = [Item(id=f"q{i}", question="", answer="") for i in range(4)]
    rows = [{"model": "m", "shots": k, "correct": {"q0": k >= 1, "q1": True, "q2": k >= 2, "q3": k % 2 == 0}}
            for k in range(4)]
    info = A.select_preference_set(items, rows, 2, 1.0)
    assert len(info["selected"]) == 2 and "q1" not in info["selected"]
    assert {i["id"] for i in info["items"] if i["selected"]} == set(info["selected"])


# ------------------------------------------------------------------------------------------- step 3
def test_rationale_and_question_scores_are_exact(tmp_path: Path) -> None:
    task = get_task(str(ARITH))
    dpref = task.load()[:12]
    drafts = [{"id": "d0", "question": "What is 1 + 2?"}, {"id": "d1", "question": "What is 2 + 2?"}]
    rationales = [{"id": f"r{d}{k}", "draft_id": f"d{d}", "style": k, "ok": True,
                   "target": f"level{k + d} adds.\nAnswer: 3"} for d in range(2) for k in range(2)]
    scorer = ChatModelScorer(FakeStudent(bonus=-1), SamplingParams())  # one shot adds 1 level back
    scores = A.score_rationales(scorer, task, drafts, rationales, dpref, tmp_path / "scores.jsonl")

    def expected(level: int) -> float:
        return sum(int(QUESTION.search(i.question).group(1)) % 4 < level for i in dpref) / len(dpref)

    got = {s["id"]: s["score"] for s in scores}
    assert got == {f"r{d}{k}": expected(k + d) for d in range(2) for k in range(2)}
    q = A.question_scores(scores)
    assert q["d0"] == pytest.approx((expected(0) + expected(1)) / 2)
    assert q["d1"] == pytest.approx((expected(1) + expected(2)) / 2)
    # resume: nothing is scored twice
    again = A.score_rationales(_Exploding(), task, drafts, rationales, dpref, tmp_path / "scores.jsonl")
    assert [s["score"] for s in again] == [s["score"] for s in scores]


class _Exploding:
    name = "exploding"

    def answer(self, prefix, questions):
        raise AssertionError("resumed scores must not be recomputed")

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------- step 4
def test_question_pairs_are_top_quartile_vs_bottom_quartile() -> None:
    drafts = [{"id": f"d{i}", "index": i, "text": f"draft {i}"} for i in range(20)]
    scores = {f"d{i}": i / 20 for i in range(20)}
    pairs, small = A.question_pairs(drafts, scores, 50, 0.25, [{"role": "user", "content": "draft"}], 0)
    assert len(pairs) == 25 and small == 0  # 5 top × 5 bottom
    for p in pairs:
        assert p["chosen_score"] >= 15 / 20 and p["rejected_score"] <= 4 / 20
        assert p["prompt"] == [{"role": "user", "content": "draft"}]
    assert len(A.question_pairs(drafts, scores, 7, 0.25, [], 0)[0]) == 7


def test_rationale_pairs_are_best_vs_worst() -> None:
    task = get_task(str(ARITH))
    cfg = ArteConfig()
    drafts = [{"id": "d0", "question": "What is 1 + 2?"}, {"id": "d1", "question": "What is 2 + 2?"}]
    rationales = [{"id": f"r{d}{k}", "draft_id": f"d{d}", "style": k, "ok": True, "target": f"t{d}{k}"}
                  for d in range(2) for k in range(4)]
    scores = [{"id": "r00", "score": .2}, {"id": "r01", "score": .9}, {"id": "r02", "score": .1},
              {"id": "r03", "score": .5}] + [{"id": f"r1{k}", "score": .5} for k in range(4)]
    pairs, small = A.rationale_pairs(task, drafts, rationales, scores, 250, cfg)
    assert len(pairs) == 1 and small == 0  # d1's rationales all tie: no preference, not a small gap
    (p,) = pairs
    assert p["chosen"][0]["content"] == "t01" and p["rejected"][0]["content"] == "t02"
    assert p["prompt"][-1]["content"].endswith("Let's think step by step.")


def test_dpo_changes_the_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cfg = dpo_settings(DpoConfig(lr=1e-3, batch_size=2, micro_batch=2, lora_r=4, lora_alpha=8, max_length=64,
                                 threads=1), TrainConfig())
    pairs = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
              "chosen": [{"role": "assistant", "content": f"Answer: {i + 1}"}],
              "rejected": [{"role": "assistant", "content": f"Answer: {i + 7}"}]} for i in range(2)]
    metrics = train_dpo(tiny_model_dir, pairs, tmp_path / "t" / "adapter", cfg, seed=0)
    weights = load_file(tmp_path / "t" / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    # LoRA B starts at zero: a single optimizer step must move it (no warm-up step at learning rate 0)
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)
    assert metrics["steps"] == 1 and metrics["n_pairs"] == 2
    assert "rewards_margins_last" in metrics
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["steps"] == 1


@pytest.mark.parametrize(("n_pairs", "batch", "warmup"), [(300, 16, 1), (2, 16, 0), (24, 4, 0), (160, 4, 4)])
def test_dpo_warmup_rounds_down(n_pairs: int, batch: int, warmup: int) -> None:
    assert dpo_warmup_steps(dpo_settings(DpoConfig(batch_size=batch), TrainConfig()), n_pairs) == warmup


def test_dpo_takes_unset_lora_and_threads_from_train() -> None:
    train = TrainConfig(lora_r=8, lora_alpha=16, threads=3, batch_size=4, max_length=512)
    got = dpo_settings(DpoConfig(), train)
    assert (got.lora_r, got.lora_alpha, got.threads) == (8, 16, 3)
    assert (got.batch_size, got.max_length, got.lr) == (16, 1024, 1e-7)  # no train counterpart at today's value
    own = dpo_settings(DpoConfig(lora_r=4, lora_alpha=8, threads=1), train)
    assert (own.lora_r, own.lora_alpha, own.threads) == (4, 8, 1)


# --------------------------------------------------------------------------- steps 1–5, select mode
def _recipe(n_examples: int = 6, **arte) -> Recipe:
    return validate_recipe({
        "name": "arte-tiny", "task": str(ARITH), "method": "arte", "seed": 0,
        "teacher": {"model": "fake", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
        "student": {"model": "fake-student"},
        "splits": {"seeds": 3, "preference": 16, "train_pool": 0, "eval": 10},
        "generate": {"n_examples": n_examples, "max_attempts": 30, "max_tokens": 64},
        "arte": {"n_drafts": 12, "preference_size": 8, "irt_shots": [0, 1, 2, 3], "question_pairs": 5,
                 "rationale_pairs": 20, **arte},
    }, "test")


def test_generate_datasets_select_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import arte_edge.backends as backends
    from arte_edge.methods import arte

    recipe = _recipe(alignment="select")
    monkeypatch.setattr(backends, "open_chat_model", lambda spec, seed=0, name=None: FakeTeacher())
    monkeypatch.setattr(students, "student_artifact", lambda ctx: {"kind": "fake", "path": "-", "sha256": "0" * 64})
    monkeypatch.setattr(students, "open_student", lambda ctx, s: ChatModelScorer(FakeStudent(), SamplingParams()))
    monkeypatch.setattr(students, "irt_scorers", lambda ctx, s: {f"m{b}": (lambda b=b: ChatModelScorer(
        FakeStudent(bonus=b), SamplingParams())) for b in range(3)})
    ctx = RunContext(recipe, RunDir(tmp_path / "run"))
    ctx.ensure_splits()
    out = arte.generate_datasets(ctx)

    align = tmp_path / "run" / "align"
    dpref = json.loads((align / "dpref.json").read_text())
    assert dpref["method"] == "irt" and len(dpref["selected"]) == 8 and dpref["n_respondents"] == 12
    drafts = read_jsonl(align / "drafts.jsonl")
    assert sum(d["ok"] for d in drafts) == 12 and any(not d["ok"] for d in drafts)  # garbage counted, dropped
    assert len(read_jsonl(align / "rationales.jsonl")) == 12 * 4
    assert len(read_jsonl(align / "scores.jsonl")) == 12 * 4
    pairs = read_jsonl(align / "pairs.jsonl")
    assert {p["kind"] for p in pairs} == {"question", "rationale"}
    assert all(p["chosen_score"] - p["rejected_score"] >= 0.15 - 1e-9 for p in pairs)  # arte.min_score_gap
    summary = json.loads((align / "summary.json").read_text())
    assert summary["min_score_gap"] == 0.15 and summary["n_rationales_scored"] == 12 * 4

    task = ctx.task
    main = read_jsonl(ctx.run.examples_path)
    assert out["n_examples"] == len(main) == 6
    for name in ("unaligned", "question-only", "rationale-only"):
        rows = read_jsonl(tmp_path / "run" / "data" / "variants" / name / "examples.jsonl")
        assert len(rows) == 6
        cost = json.loads((tmp_path / "run" / "data" / "variants" / name / "cost.json").read_text())
        assert cost["teacher_calls"] > 0
    for row in main:
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert messages[0]["content"] == task.system_prompt
        item = Item(id="x", question=messages[1]["content"], answer=str(_value(messages[1]["content"])))
        assert task.check(item, messages[2]["content"]).correct
        assert "style2" in messages[2]["content"]  # the student's favourite checked style (3 is wrong)
    assert out["teacher_calls"] > 0 and out["teacher_prompt_tokens"] > 0
    section = (tmp_path / "run" / "report" / "sections" / "arte.md").read_text()
    assert "D_pref" in section and "fake" in section
    assert f"{summary['n_question_pairs_small_gap']} question-pair candidates and " \
        f"{summary['n_rationale_pairs_small_gap']} rationale pairs skipped" in section
    # idempotent: a rerun makes no teacher or student call
    monkeypatch.setattr(backends, "open_chat_model", lambda spec, seed=0, name=None: _NoCalls())
    monkeypatch.setattr(students, "open_student", lambda ctx, s: pytest.fail("student must not be reopened"))
    assert arte.generate_datasets(ctx)["n_examples"] == 6


class _NoCalls(FakeTeacher):
    def chat(self, messages, params):
        raise AssertionError("resumed run must not call the teacher")


def test_dpo_needs_local_teacher_weights(tmp_path: Path) -> None:
    ctx = RunContext(_recipe(alignment="dpo"), RunDir(tmp_path))
    with pytest.raises(ArteError, match=r"arte\.alignment"):
        A.check_alignment_possible(ctx)


# ------------------------------------------------------------------------------- fast scorer
@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from arte_edge.export.converter import convert_to_gguf

    return convert_to_gguf(tiny_model_dir, tmp_path_factory.mktemp("arte-gguf") / "tiny.f16.gguf")


def test_prefix_reuse_scorer_matches_naive_loop(tiny_gguf: Path) -> None:
    from arte_edge.backends.llamacpp import LlamaCppChat
    from arte_edge.evaluation.scoring import ANSWER_DONE
    from arte_edge.methods.arte.scorer import PrefixReuseScorer

    task = get_task(str(ARITH))
    items = task.load()[:7]
    prefix = A.shot_prefix(task, [(items[0].question, "We add.\nAnswer: 54")])
    questions = [i.question for i in items[1:]]
    fast = PrefixReuseScorer(tiny_gguf, threads=1, batch=4, max_tokens=12, stop_regex=ANSWER_DONE)
    try:
        ours = fast.answer(prefix, questions)
    finally:
        fast.close()
    naive = LlamaCppChat(tiny_gguf, threads=1, n_ctx=512)  # one create_chat_completion per question
    params = SamplingParams(max_tokens=12, temperature=0.0, stop_regex=ANSWER_DONE)
    try:
        reference = [naive.chat([*prefix, {"role": "user", "content": q}], params).text for q in questions]
    finally:
        naive.close()
    assert ours == reference


def test_student_answers_dpref_in_the_requested_quant(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = _recipe(student_quant="q8_0", verify_export=False).model_copy(
        update={"student": ModelSpec(model=str(tiny_model_dir), threads=1)})
    ctx = RunContext(recipe, RunDir(tmp_path / "run"))
    scorer, info = students.student_scorer(ctx)
    try:
        assert info["kind"] == "gguf"
        assert info["path"] == str(tmp_path / "run" / "align" / "student" / "student.q8_0.gguf")
        assert len(scorer.answer([{"role": "system", "content": "Add."}], ["What is 1 + 2?"])) == 1
    finally:
        scorer.close()
    from gguf import GGUFReader

    types = {t.tensor_type.name for t in GGUFReader(info["path"]).tensors}
    assert "Q8_0" in types


def test_common_prefix_len() -> None:
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([]) == 0


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", ["arte-gsm8k.yaml", "arte-arc-easy.yaml"])
def test_recipes_validate(name: str) -> None:
    recipe = load_recipe(ROOT / "configs" / name)
    assert recipe.method == "arte" and recipe.splits.preference >= recipe.method_config.preference_size
    # Every recipe compares ARTE with standard distillation at equal teacher cost: the unaligned arm is required.
    variants = set(recipe.method_config.variants)
    assert "unaligned" in variants and variants <= {"unaligned", "question-only", "rationale-only"}


def test_arte_config_defaults_are_the_papers() -> None:
    cfg = ArteConfig()
    assert (cfg.preference_size, cfg.n_drafts, len(cfg.styles), cfg.question_pairs, cfg.rationale_pairs) == \
        (40, 250, 4, 50, 250)
    assert (cfg.dpo.lr, cfg.dpo.batch_size, cfg.dpo.epochs, cfg.dpo.warmup_ratio, cfg.quantile) == \
        (1e-7, 16, 1.0, 0.1, 0.25)
    with pytest.raises(ValueError):
        ArteConfig(unknown=1)
    with pytest.raises(ValueError):
        ArteConfig(dpo={"unknown": 1})


def test_old_flat_dpo_keys_fail_naming_their_new_place() -> None:
    with pytest.raises(ConfigError) as info:
        _recipe(dpo_lr=1e-5, dpo_epochs=2)
    assert info.value.problems == ["arte.dpo_lr: renamed to arte.dpo.lr", "arte.dpo_epochs: renamed to arte.dpo.epochs"]
    assert "arte.dpo_lr: renamed to arte.dpo.lr" in str(info.value)
    assert _recipe(dpo={"lr": 1e-5}).method_config.dpo.lr == 1e-5


# ------------------------------------------------------------------------------- batched teacher calls
class _RecordingTeacher(FakeTeacher):
    """A FakeTeacher that records the size and first seed of every batched call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def chat_batch(self, conversations, params):
        self.calls.append((len(conversations), params.seed))
        return super().chat_batch(conversations, params)


def test_chat_seeded_batches_consecutive_seeds() -> None:
    from arte_edge.methods.common import chat_seeded

    teacher = _RecordingTeacher()
    prompt = A.draft_prompt(_arith_task(), [])
    out = chat_seeded(teacher, [prompt] * 5, SamplingParams(temperature=1.0), [10, 11, 12, 20, 21])
    assert teacher.calls == [(3, 10), (2, 20)]
    assert [o.text for o in out] == [FakeTeacher().chat(prompt, SamplingParams(seed=s)).text
                                     for s in (10, 11, 12, 20, 21)]


def _arith_task():
    from arte_edge.tasks import get_task

    return get_task(str(ARITH))


def test_regenerate_batches_attempts_and_stops_where_a_sequential_run_stops(tmp_path: Path) -> None:
    from arte_edge.methods import arte

    ctx = RunContext(_recipe(n_examples=12), RunDir(tmp_path / "run"))
    ctx.ensure_splits()
    path = tmp_path / "regen.jsonl"
    teacher = _RecordingTeacher()
    rows = arte.regenerate(teacher, ctx.task, ctx.split("seeds"), ctx, "unaligned", path)

    kept = [r for r in rows if r["example"] is not None]
    assert len(kept) == 12 and rows[-1]["example"] is not None  # nothing recorded past the 12th kept example
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert any(r["reason"].startswith("unparseable draft") for r in rows)  # FakeTeacher's every-7th garbage draft
    draft_calls = [c for c in teacher.calls if c[1] != 0]
    assert draft_calls[0] == (8, 50_000) and draft_calls[1] == (8, 50_008)  # windows of 8, seeds by attempt
    # resume: dropping the tail re-creates exactly the same rows
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))
    again = arte.regenerate(_RecordingTeacher(), ctx.task, ctx.split("seeds"), ctx, "unaligned", path)
    assert again == rows


# ------------------------------------------------------------------------------- stale intermediate files
def test_changed_recipe_retires_the_changed_step_and_later_ones(tmp_path: Path) -> None:
    from arte_edge.methods.arte.fingerprint import retire_stale_steps

    align = tmp_path / "align"
    assert retire_stale_steps(align, _recipe()) == []  # first use: adopts the fingerprints
    for name in ("dpref.json", "irt_responses.jsonl", "drafts.jsonl", "rationales.jsonl", "scores.jsonl"):
        (align / name).write_text("{}\n")
    (align / "teachers" / "full").mkdir(parents=True)
    (align / "timings.json").write_text(json.dumps({"1_dpref": 1.0, "2_elicit": 2.0, "4_dpo_full": 4.0}))
    assert retire_stale_steps(align, _recipe()) == []  # same recipe: everything reused

    moved = retire_stale_steps(align, _recipe(max_tokens=96))  # elicitation setting changed
    assert set(moved) == {"drafts.jsonl", "rationales.jsonl", "scores.jsonl", "teachers"}
    assert (align / "dpref.json").exists() and (align / "irt_responses.jsonl").exists()
    stale = next((align / "stale").iterdir())
    assert (stale / "drafts.jsonl").exists() and (stale / "teachers" / "full").is_dir()  # kept, not deleted
    assert json.loads((align / "timings.json").read_text()) == {"1_dpref": 1.0}
    assert retire_stale_steps(align, _recipe(max_tokens=96)) == []


def test_dpo_setting_change_keeps_the_scores(tmp_path: Path) -> None:
    from arte_edge.methods.arte.fingerprint import retire_stale_steps

    align = tmp_path / "align"
    retire_stale_steps(align, _recipe())
    (align / "scores.jsonl").write_text("{}\n")
    (align / "teachers").mkdir()
    assert retire_stale_steps(align, _recipe(dpo={"lr": 1e-5})) == ["teachers"]
    assert retire_stale_steps(align, _recipe(dpo={"lr": 1e-5}, question_pairs=3)) == []  # no teacher trained yet
    assert (align / "scores.jsonl").exists()  # pair counts change the DPO step, not the student's scores


def test_regenerated_rationale_rejections_name_the_token_budget() -> None:
    from arte_edge.methods.arte import rationale_rejection

    task = _arith_task()
    cut = Completion("First we add 3 and 4, which", 20, 160, finish_reason="length")
    assert "raise generate.max_tokens" in rationale_rejection(task, cut)
    assert rationale_rejection(task, Completion("We add.", 20, 5)) == "rationale without an answer line"
    assert rationale_rejection(task, Completion("We add.\nAnswer: 8", 20, 5)) == \
        "rationale disagrees with the drafted key"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_unaligned_teacher_goes_through_the_aligned_teachers_export(tmp_path: Path, tiny_model_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """One path for every teacher arm: the unaligned teacher is the fp32 HF teacher exported by the same function,
    to the same GGUF type, as each DPO-aligned one (not the bundled GGUF of another quantisation)."""
    from arte_edge.backends.llamacpp import LlamaCppChat
    from arte_edge.methods.arte import alignment, datasets

    recipe = validate_recipe({
        "name": "arte-path", "task": str(ARITH), "method": "arte", "seed": 0, "threads": 1,
        "teacher": {"model": str(tiny_model_dir), "backend": "llama_cpp"}, "student": {"model": str(tiny_model_dir)},
        "splits": {"seeds": 2, "preference": 4, "train_pool": 0, "eval": 4}}, "test")
    ctx = RunContext(recipe, RunDir(tmp_path / "run"))
    exported: list[tuple[Path, Path]] = []
    real = alignment.export_teacher

    def recording(merged: Path, work: Path, cfg: object, threads: int) -> Path:
        exported.append((Path(merged), Path(work)))
        return real(merged, work, cfg, threads)

    monkeypatch.setattr(alignment, "export_teacher", recording)
    info = alignment.unaligned_teacher(ctx)
    assert exported == [(tiny_model_dir, alignment.aligned_teacher_dir(ctx, "unaligned"))]
    gguf = Path(info["gguf"])
    assert gguf.is_file() and recipe.method_config.teacher_quant.lower() in gguf.name.lower()
    written = gguf.stat().st_mtime_ns
    teacher = datasets._open_teacher(ctx, "unaligned", {"teachers": {}})
    try:
        assert isinstance(teacher, LlamaCppChat) and Path(teacher.path) == Path(info["gguf"])
    finally:
        teacher.close()
    assert alignment.unaligned_teacher(ctx) == info and gguf.stat().st_mtime_ns == written  # exported once, reused


# ------------------------------------------------------------------------ issue 15: confounds fixed
def test_irt_and_preference_scoring_open_the_same_student_artifact(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The student's IRT respondent (step 1) and ŝ_r (step 3) answer as one file, recorded by path and sha256;
    another file under the same name is not served from the first one's cache."""
    import hashlib

    import arte_edge.backends as backends
    from arte_edge import models

    files = tmp_path / "files"
    files.mkdir()
    q8 = files / "student.q8_0.gguf"
    q8.write_bytes(b"q8_0 student")
    for name in ("fake-student", "other-model"):
        (files / f"{name}.q4_1.gguf").write_bytes(b"bundled " + name.encode())
    opened: list[Path] = []

    def fake_gguf_scorer(path: Path, ctx: RunContext, params: SamplingParams) -> ChatModelScorer:
        opened.append(Path(path))
        return ChatModelScorer(FakeStudent(bonus=int("other" in Path(path).name)), SamplingParams())

    monkeypatch.setattr(models, "gguf_path", lambda name, progress=None: files / f"{name}.q4_1.gguf")
    monkeypatch.setattr(students, "student_in_quant", lambda ctx, qtype: q8)
    monkeypatch.setattr(students, "gguf_scorer", fake_gguf_scorer)
    monkeypatch.setattr(backends, "open_chat_model", lambda spec, seed=0, name=None: FakeTeacher())
    recipe = _recipe(alignment="select", student_quant="q8_0", irt_scorers=["fake-student", "other-model"])
    ctx = RunContext(recipe, RunDir(tmp_path / "run"))
    ctx.ensure_splits()
    summary = A.ensure_aligned(ctx)

    other = files / "other-model.q4_1.gguf"
    assert opened == [q8, other, q8]  # IRT: the student as the q8_0 file, the other model as its own; then ŝ_r
    sha = hashlib.sha256(b"q8_0 student").hexdigest()
    assert (summary["student"]["path"], summary["student"]["sha256"]) == (str(q8), sha)
    assert summary["student"]["irt_respondent"] is True
    align = tmp_path / "run" / "align"
    dpref = json.loads((align / "dpref.json").read_text())
    assert dpref["student"]["respondents"] == ["fake-student"] and dpref["student"]["sha256"] == sha
    assert json.loads((align / "student.json").read_text())["path"] == str(q8)
    A.write_report_section(ctx, summary)
    section = (tmp_path / "run" / "report" / "sections" / "arte.md").read_text()
    assert f"`{q8}` (sha256 {sha})" in section and "IRT respondent and ŝ_r, one artifact" in section
    rows_before = {r["id"] for r in read_jsonl(align / "irt_responses.jsonl") if r["model"] == "fake-student"}

    opened.clear()
    A.ensure_aligned(ctx)  # nothing changed: nothing is answered again
    assert opened == []
    q8.write_bytes(b"another q8_0 student file")  # same path and name, other content
    A.ensure_aligned(ctx)
    assert opened == [q8, other, q8]  # D_pref and the scores are redone with the new file
    rows_after = {r["id"] for r in read_jsonl(align / "irt_responses.jsonl") if r["model"] == "fake-student"}
    assert rows_after and not rows_after & rows_before
    assert json.loads((align / "student.json").read_text())["sha256"] == hashlib.sha256(q8.read_bytes()).hexdigest()


class _CuttingTeacher(FakeTeacher):
    """A FakeTeacher whose style-0 rationale is cut at max_tokens before its answer line (its demo says level0)."""

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        if messages[0]["content"].startswith(ArteConfig().styles[0]):
            return Completion("In style0 (level0) we first add the tens, then", 40, 64, finish_reason="length")
        return super().chat(messages, params)


def test_a_cut_rationale_is_scored_and_can_be_the_rejected_side(tmp_path: Path) -> None:
    from arte_edge.methods.arte.elicitation import elicit_rationales
    from arte_edge.methods.arte.regeneration import example_from

    task = _arith_task()
    dpref = task.load()[:12]
    cfg = ArteConfig(min_score_gap=0.0)
    drafts = [{"id": "d0", "ok": True, "question": "What is 2 + 5?", "key": "7"}]
    rationales = elicit_rationales(_CuttingTeacher(), task, drafts, cfg, 0, tmp_path / "rationales.jsonl")
    cut = next(r for r in rationales if r["style"] == 0)
    assert not cut["ok"] and cut["finish_reason"] == "length"
    demos: list[str] = []

    class Recording(ChatModelScorer):
        def answer(self, prefix, questions):
            demos.append(prefix[-1]["content"])
            return super().answer(prefix, questions)

    scores = A.score_rationales(Recording(FakeStudent(bonus=-1), SamplingParams()), task, drafts, rationales, dpref,
                                tmp_path / "scores.jsonl")
    by_id = {s["id"]: s for s in scores}
    assert len(scores) == 4 and cut["id"] in by_id  # scored, not dropped
    assert demos[0] == "In style0 (level0) we first add the tens, then"  # a demonstration without an answer line
    assert by_id[cut["id"]]["cut"] and not by_id[cut["id"]]["answer_line"]
    assert by_id[cut["id"]]["score"] == 0.0  # level0: the student gets nothing right with it
    assert all(s["score"] > 0 for s in scores if s["id"] != cut["id"])

    pairs, small = A.rationale_pairs(task, drafts, rationales, scores, 10, cfg)
    (pair,) = pairs
    assert pair["rejected"][0]["content"] == "In style0 (level0) we first add the tens, then"
    assert pair["rejected_cut"] and not pair["chosen_cut"] and small == 0
    # the training data's checker is unchanged: the cut rationale is never an example
    assert example_from(task, "What is 2 + 5?", "7", cut["text"], "x", {}) is None
    assert not cut["agrees_with_key"]


def test_a_pair_below_the_minimum_score_gap_is_skipped_and_counted() -> None:
    task = _arith_task()
    cfg = ArteConfig(min_score_gap=0.15)  # D_pref of 10 below: one question (0.1) is not enough, two are
    drafts = [{"id": f"d{i}", "question": f"What is {i} + 1?"} for i in range(4)]
    scored = {"d0": (0.3, 0.2), "d1": (0.4, 0.2), "d2": (0.35, 0.2), "d3": (0.5, 0.5)}
    rationales = [{"id": f"{d}r{k}", "draft_id": d, "style": k, "ok": True, "target": f"{d} style {k}\nAnswer: 1"}
                  for d in scored for k in range(2)]
    scores = [{"id": f"{d}r{k}", "draft_id": d, "score": v[k]} for d, v in scored.items() for k in range(2)]
    pairs, small = A.rationale_pairs(task, drafts, rationales, scores, 10, cfg)
    assert sorted(p["chosen"][0]["content"].split()[0] for p in pairs) == ["d1", "d2"]  # 0.2 and 0.15 (rounded)
    assert small == 1  # d0's one-question gap; d3's tie is no preference at all
    everything, none_small = A.rationale_pairs(task, drafts, rationales, scores, 10, ArteConfig(min_score_gap=0.0))
    assert len(everything) == 3 and none_small == 0  # the paper's rule: any difference

    q_drafts = [{"id": f"q{i}", "index": i, "text": f"draft {i}"} for i in range(8)]
    q_scores = dict(zip([d["id"] for d in q_drafts], [0.5, 0.45, 0.42, 0.41, 0.41, 0.41, 0.4, 0.2], strict=True))
    qp, q_small = A.question_pairs(q_drafts, q_scores, 50, 0.25, [], 0, min_gap=0.15)
    assert {(p["chosen_score"], p["rejected_score"]) for p in qp} == {(0.5, 0.2), (0.45, 0.2)}
    assert q_small == 2  # 0.5 vs 0.4 and 0.45 vs 0.4
