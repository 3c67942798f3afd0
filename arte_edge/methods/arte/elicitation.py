"""ARTE step 2: knowledge elicitation.

The teacher drafts ``arte.n_drafts`` questions (T = ``question_temperature``) from the task description and 3
seeds, then writes one rationale per reasoning style (``arte.styles``), each ending with the task's ``Answer:``
line. Both loops write through durable appenders keyed by :func:`stable_id` (``align/drafts.jsonl``,
``align/rationales.jsonl``), so a killed run resumes without repeating a teacher call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arte_edge.backends.base import ChatModel, Completion, SamplingParams
from arte_edge.methods.arte.config import ArteConfig
from arte_edge.methods.arte.files import chunks, durable_map
from arte_edge.methods.arte.prompts import TEACHER_WINDOW, draft_prompt, styled_prompt
from arte_edge.methods.common import chat_seeded, completion_cost, rationale_of, read_draft
from arte_edge.progress import progress
from arte_edge.rundir import stable_id
from arte_edge.tasks.base import Item, Task
from arte_edge.tasks.decontam import HeldOut


def elicit_drafts(teacher: ChatModel, task: Task, seeds: Sequence[Item], cfg: ArteConfig, seed: int,
                  path: Path, tag: str, held_out: HeldOut | None = None) -> list[dict[str, Any]]:
    """Draft ``cfg.n_drafts`` usable questions (with answer keys); unparseable drafts are kept as rejects.

    Draft i samples with seed ``seed·100003 + i``; drafts are asked for in windows of ``TEACHER_WINDOW`` (one
    batched teacher call each) and attempts stop at 3·m so a weak teacher cannot loop forever.
    """
    done, out = durable_map(path)
    messages = draft_prompt(task, seeds)
    params = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.question_temperature)
    with progress("align: drafting questions", cfg.n_drafts) as advance:
        advance(sum(r["ok"] for r in done.values()))
        index = 0
        while sum(r["ok"] for r in done.values()) < cfg.n_drafts and index < 3 * cfg.n_drafts:
            window = range(index, min(index + TEACHER_WINDOW, 3 * cfg.n_drafts))
            todo = [i for i in window if _draft_id(tag, i, cfg, seed) not in done]
            completions = chat_seeded(teacher, [messages] * len(todo), params, [seed * 100_003 + i for i in todo])
            rows, n_ok = [], sum(r["ok"] for r in done.values())
            for i, c in zip(todo, completions, strict=True):
                if n_ok >= cfg.n_drafts:  # as a one-at-a-time run would: nothing past the m-th usable draft
                    break
                rid = _draft_id(tag, i, cfg, seed)
                item, why = read_draft(task, c.text, f"{task.name}/arte-{rid}", held_out) if c.ok else (None, "")
                rows.append({"id": rid, "index": i, "ok": item is not None, "text": c.text,
                             "question": item.question if item else None, "key": item.answer if item else None,
                             "reason": why if c.ok else f"teacher error: {c.error}", **completion_cost(c)})
                n_ok += item is not None
            out.write_batch(rows)
            done.update({r["id"]: r for r in rows})
            advance(sum(r["ok"] for r in rows))
            index = window.stop
    drafts = sorted(done.values(), key=lambda r: r["index"])
    return [d for d in drafts if d["ok"]][: cfg.n_drafts] + [d for d in drafts if not d["ok"]]


def _draft_id(tag: str, index: int, cfg: ArteConfig, seed: int) -> str:
    return stable_id("arte/draft", tag, index, seed, cfg.question_temperature)


def elicit_rationales(teacher: ChatModel, task: Task, drafts: Sequence[dict[str, Any]], cfg: ArteConfig,
                      seed: int, path: Path) -> list[dict[str, Any]]:
    """One rationale per (draft, style). Without a parseable answer line (e.g. cut at ``max_tokens``) a rationale is
    not ``ok``: it cannot become training data, but the student still scores it (step 3)."""
    done, out = durable_map(path)
    jobs = [(d, s, style) for d in drafts if d["ok"] for s, style in enumerate(cfg.styles)]
    with progress("align: eliciting rationales", len(jobs)) as advance:
        advance(sum(_rationale_id(d, s, cfg, seed) in done for d, s, _ in jobs))
        for batch in chunks([j for j in jobs if _rationale_id(j[0], j[1], cfg, seed) not in done],
                            TEACHER_WINDOW):
            params = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.elicit_temperature, seed=seed)
            completions = teacher.chat_batch([styled_prompt(task, d["question"], style) for d, _, style in batch],
                                             params)
            rows = [_rationale_row(task, d, s, c, cfg, seed) for (d, s, _), c in zip(batch, completions, strict=True)]
            out.write_batch(rows)
            done.update({r["id"]: r for r in rows})
            advance(len(batch))
    return [done[_rationale_id(d, s, cfg, seed)] for d, s, _ in jobs]


def _rationale_id(draft: dict[str, Any], style: int, cfg: ArteConfig, seed: int) -> str:
    return stable_id("arte/rationale", draft["id"], cfg.styles[style], cfg.elicit_temperature, seed)


def _rationale_row(task: Task, draft: dict[str, Any], style: int, c: Completion, cfg: ArteConfig,
                   seed: int) -> dict[str, Any]:
    answer = task.extract_answer(c.text) if c.ok else None
    return {"id": _rationale_id(draft, style, cfg, seed), "draft_id": draft["id"], "style": style, "text": c.text,
            "ok": answer is not None, "answer": answer, "finish_reason": c.finish_reason, "error": c.error,
            "agrees_with_key": answer is not None and
            task.check(Item(id="", question="", answer=draft["key"]), c.text).correct,
            "target": task.target(rationale_of(c.text), answer) if answer is not None else None, **completion_cost(c)}

