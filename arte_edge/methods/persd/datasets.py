"""The datasets, rebuilt from the loop's logs only (atomically, so reruns are idempotent). B is the teacher budget
(in calls); the first four arms spend exactly B calls, the last two more (their cost says so):

- ``persd`` (main, data/examples.jsonl): task → refined code (the refinement is the task's new gold);
- ``persd-refine``: task + student code + error → refined code (the multi-step inference prompt);
- ``stand``: the teacher solves the first B pool tasks from scratch (standard distillation, equal budget);
- ``inpd``: the teacher solves from scratch the B tasks the student failed (input-personalised only);
- ``persd-combined``: every persd-refine example, then, for each task whose refinement passed, that task's gold
  example: task → the teacher's own from-scratch solution (the StanD-style example), when it passed the checker.
  This is how the authors build it (SalesforceAIResearch/PersDistill, ``code/create_chatgpt_only_refinement_data.py``:
  the refinement file + the gold file's row of each refined ``task_id``, one per task, no duplicates; the refined
  code becomes the new gold only in PERsD, ``code/create_refinement_as_new_gold_data.py``). Cost: the B refinement
  calls + one from-scratch call per refined task (shared with InpD's when both are selected);
- ``stand-full``: the teacher solves every pool task from scratch, passing solutions kept (standard distillation
  on the whole task set, the paper's StanD; not at equal cost).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arte_edge.methods.common import rationale_of, training_example
from arte_edge.methods.persd.judging import Judgement
from arte_edge.methods.persd.prompts import refine_inference_messages
from arte_edge.methods.persd.records import MAIN, LoopPaths, LoopSettings, attempt_id, direct_id, refine_id
from arte_edge.rundir import atomic_write_json, atomic_write_text, read_jsonl, stable_id
from arte_edge.tasks.base import Item, Task

_FEEDBACK_HEADER = re.compile(
    r"^\s*(step\s*[12]\s*:?\s*)?(feedback|rectified code)\s*:?\s*(mistakes in the code)?\s*:?", re.I | re.M)


def split_feedback(text: str) -> str:
    """The natural-language feedback of an nl-mode refinement: the text before its code block, headers removed."""
    before = text.split("```", 1)[0]
    body = _FEEDBACK_HEADER.sub("", before).strip()
    return body[:800].strip()


def target_of(task: Task, judgement: Judgement, text: str, *, with_feedback: bool) -> str:
    """The assistant message to learn from an accepted teacher completion (the exact code that passed)."""
    feedback = split_feedback(text) if with_feedback else ""
    if task.kind == "code":
        return task.target(feedback, judgement.answer or "")
    rationale = rationale_of(text)
    if not with_feedback:
        rationale = re.sub(r"(?is)^\s*feedback\s*:.*?(\n\s*\n|$)", "", rationale, count=1).strip()
    return task.target(rationale, judgement.answer or "")


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rows}


def _cost(records: list[dict[str, Any]]) -> dict[str, int]:
    return {"teacher_calls": sum(r["meta"].get("teacher_calls", 0) for r in records),
            "prompt_tokens": sum(r["meta"].get("prompt_tokens", 0) for r in records),
            "completion_tokens": sum(r["meta"].get("completion_tokens", 0) for r in records)}


def _accepted_judgement(record: dict[str, Any]) -> Judgement:
    return Judgement(True, record.get("answer"), "")


def build_datasets(task: Task, pool: Sequence[Item], paths: LoopPaths, s: LoopSettings,
                   budget: int) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]],
                                         list[dict[str, Any]]]:
    """Every variant's examples and teacher cost (calls, tokens, ``equal_budget``: whether the arm spent exactly the
    B calls of the paired comparison), derived from the logs only (so reruns are idempotent)."""
    by_item = {item.id: item for item in pool}
    attempt_ids = {attempt_id(s, item) for item in pool}
    failures = [r for r in read_jsonl(paths.log("attempts")) if r["id"] in attempt_ids]
    order = {item.id: i for i, item in enumerate(pool)}
    targets = sorted(failures, key=lambda r: order[r["item_id"]])[:budget]
    ok_ref = _by_id(read_jsonl(paths.log("refinements")))
    bad_ref = _by_id(read_jsonl(paths.log("refinements_rejected")))
    ok_dir, bad_dir = _by_id(read_jsonl(paths.log("direct"))), _by_id(read_jsonl(paths.log("direct_rejected")))
    persd, refine, ref_records, refined_items = [], [], [], []
    for attempt in targets:
        rid = refine_id(s, attempt["id"])
        record = ok_ref.get(rid) or bad_ref.get(rid)
        if record is None:
            continue
        ref_records.append(record)
        if rid not in ok_ref:
            continue
        item, verdict = by_item[attempt["item_id"]], _accepted_judgement(record)
        refined_items.append(item)
        meta = {"method": "persd", "source": rid, "refine_mode": s.refine_mode}
        persd.append(training_example(task, item, target_of(task, verdict, record["completion"], with_feedback=False),
                                      stable_id(MAIN, rid), meta))
        messages = [*refine_inference_messages(task, item, attempt["attempt"], attempt["error"]),
                    {"role": "assistant", "content": target_of(task, verdict, record["completion"],
                                                               with_feedback=s.refine_mode == "nl")}]
        refine.append({"id": stable_id("persd-refine", rid), "messages": messages,
                       "meta": {"item_id": item.id, "method": "persd-refine", "source": rid}})
    datasets = {MAIN: persd, "persd-refine": refine}
    costs = {name: {**_cost(ref_records), "equal_budget": True} for name in datasets}
    groups = {"inpd": [by_item[a["item_id"]] for a in targets], "stand": list(pool[:budget]),
              "stand-full": list(pool), "persd-combined": refined_items}
    for name, items in groups.items():
        records = [ok_dir.get(direct_id(s, i)) or bad_dir.get(direct_id(s, i)) for i in items]
        records = [r for r in records if r is not None]
        costs[name] = {**_cost(records), "equal_budget": name in ("stand", "inpd")}
        role = {"role": "gold"} if name == "persd-combined" else {}
        datasets[name] = [
            training_example(task, by_item[r["item_id"]],
                             target_of(task, _accepted_judgement(r), r["completion"], with_feedback=False),
                             stable_id(name, r["id"]), {"method": name, "source": r["id"], **role})
            for r in records if r["id"] in ok_dir]
    datasets["persd-combined"] = refine + datasets["persd-combined"]  # refine examples, then the refined tasks' gold
    gold_cost = costs["persd-combined"]
    costs["persd-combined"] = {**{k: costs["persd-refine"][k] + gold_cost[k] for k in _cost([])},
                               "equal_budget": False}
    rejected = [r for r in [*bad_ref.values(), *bad_dir.values()]]
    return datasets, costs, rejected


def write_datasets(task: Task, pool: Sequence[Item], paths: LoopPaths, s: LoopSettings, budget: int) -> dict[str, Any]:
    """Write data/examples.jsonl (PERsD), each variant's examples.jsonl + cost.json, and return the totals."""
    datasets, costs, rejected = build_datasets(task, pool, paths, s, budget)
    _write_jsonl(paths.examples, datasets[MAIN])
    _write_jsonl(paths.rejected, rejected)
    for name in s.variants:
        _write_jsonl(paths.variant(name), datasets[name])
        atomic_write_text(paths.variant(name).parent / "cost.json", json.dumps(costs[name]) + "\n")
    counts = {name: len(rows) for name, rows in datasets.items() if name == MAIN or name in s.variants}
    atomic_write_json(paths.costs, {name: {"n_examples": counts[name], **costs[name]} for name in counts})
    n_failed = len(read_jsonl(paths.log("attempts")))
    n_passed = len(read_jsonl(paths.log("attempts_rejected")))
    made = len(read_jsonl(paths.log("refinements"))) + len(read_jsonl(paths.log("refinements_rejected")))
    made += len(read_jsonl(paths.log("direct"))) + len(read_jsonl(paths.log("direct_rejected")))
    return {
        "n_examples": counts[MAIN], "n_rejected": len(rejected), "teacher_calls": costs[MAIN]["teacher_calls"],
        "teacher_prompt_tokens": costs[MAIN]["prompt_tokens"],
        "teacher_completion_tokens": costs[MAIN]["completion_tokens"],
        "teacher_budget": budget, "teacher_calls_made": made, "n_pool": len(pool),
        "n_student_attempts": n_failed + n_passed, "n_student_passed": n_passed, "n_student_failed": n_failed,
        "variants": {name: {"n_examples": counts[name], **costs[name]} for name in counts if name != MAIN},
        **{f"n_{name.replace('-', '_')}": counts[name] for name in counts},
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
