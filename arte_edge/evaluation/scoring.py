"""Score a chat model on task items: greedy answers, checked by the task, one JSONL row per item (resumable).

Rows carry the model's key (see ``artifacts.content_key``): only rows of the same model file, runtime and settings
count on resume, so a retrained or re-exported model is scored afresh.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from arte_edge.backends.base import ChatModel, Message, SamplingParams
from arte_edge.progress import progress
from arte_edge.rundir import JsonlAppender, atomic_write_text, read_jsonl
from arte_edge.tasks.base import Item, Task


def format_demos(task: Task, seeds: Sequence[Item]) -> list[tuple[str, str]]:
    """Seed items as (question, answer) demonstration turns in the answer format the checker reads: the seed's
    rationale when it has one, then ``Answer: <gold>``."""
    return [(task.user_prompt(s), (f"{s.rationale.strip()}\n" if s.rationale else "") + f"Answer: {s.answer}")
            for s in seeds]


def answer_messages(task: Task, item: Item, demos: Iterable[tuple[str, str]] = ()) -> list[Message]:
    """The conversation asking a model to answer ``item``: system prompt, optional demos, the question."""
    messages: list[Message] = [{"role": "system", "content": task.system_prompt}]
    for question, answer in demos:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": task.user_prompt(item)})
    return messages


# Stop decoding once a complete answer line is followed by more text (small models ramble on).
ANSWER_DONE = r"(?im)^\s*\**\s*(final\s+)?answer\s*\**\s*[:：][^\n]*\S[^\n]*\n"


def eval_params(task: Task, max_tokens: int) -> SamplingParams:
    """Greedy decoding, stopped early once the answer is given (not for code)."""
    return SamplingParams(max_tokens=max_tokens, temperature=0.0,
                          stop_regex=None if task.kind == "code" else ANSWER_DONE)


def evaluate_model(model: ChatModel, task: Task, items: Sequence[Item], out_path, params: SamplingParams,
                   batch_size: int = 8, label: str = "", key: str | None = None,
                   demos: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """Answer and check every item; rows already in ``out_path`` are kept (resume). With ``key`` (see
    ``artifacts.content_key``) only rows written under the same key count: a retrained, re-exported or
    differently run model is scored afresh. ``demos``: (question, answer) turns shown before each item.
    ``batch_size``: items per call and durable write (at least the model's decode batch or window); batched models
    answer shortest prompts first (:func:`batch_order`)."""
    written = read_jsonl(out_path)
    rows = {r["item_id"]: r for r in written if key is None or r.get("key") == key}
    if len(rows) < len(written):  # rows of another model or runtime (or duplicates): the file keeps only these
        atomic_write_text(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values()))
    todo = batch_order(model, task, [item for item in items if item.id not in rows])
    batch_size = max(batch_size, int(getattr(model, "window", 0) or getattr(model, "batch_size", 1) or 1))
    appender = JsonlAppender(out_path)
    with progress(f"evaluate {label}", len(items)) as advance:
        advance(len(items) - len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            completions = model.chat_batch([answer_messages(task, item, demos) for item in batch], params)
            new = [_row(task, item, completion) | ({"key": key} if key else {})
                   for item, completion in zip(batch, completions, strict=True)]
            appender.write_batch(new)
            rows.update({r["item_id"]: r for r in new})
            advance(len(batch))
    return [rows[item.id] for item in items]


def batch_order(model: ChatModel, task: Task, items: Sequence[Item]) -> list[Item]:
    """The order to answer ``items`` in: shortest prompt first when ``model`` decodes in batches (a
    batch then pads little), as given at batch 1 (one conversation at a time)."""
    if decoding_of(model) == "batch 1":
        return list(items)
    return sorted(items, key=lambda item: len(task.user_prompt(item)))


def _row(task: Task, item: Item, completion) -> dict[str, Any]:
    check = task.check(item, completion.text) if completion.ok else None
    flexible = task.check_flexible(item, completion.text) if completion.ok else None
    return {"item_id": item.id, "correct": bool(check and check.correct),
            "correct_flexible": bool(flexible and flexible.correct),
            "predicted": check.predicted if check else None,
            "reason": check.reason if check else f"generation error: {completion.error}",
            "completion": completion.text, "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens, "seconds": round(completion.seconds, 3)}


def decoding_of(model: ChatModel) -> str:
    """How ``model`` decodes during scoring: ``"batch 1"`` (as a device runs it) or ``"batched N"``."""
    n = int(getattr(model, "batch_size", 1) or 1)
    return "batch 1" if n <= 1 else f"batched {n}"


def batch1_check(model: ChatModel, task: Task, items: Sequence[Item], rows: Sequence[dict[str, Any]],
                 params: SamplingParams, demos: Sequence[tuple[str, str]] = (), n: int = 8, *,
                 cache: Path | None = None, key: str | None = None) -> dict[str, Any]:
    """Re-answer the first ``n`` items one at a time and compare with the batched rows: batched
    decoding is faster but not batch-invariant, so the report says how close its greedy outputs are.

    With ``cache`` (a JSON file) the result is kept there with ``key`` (the rows' evaluation key) and the sampled
    item ids, and a resumed run reuses it instead of decoding the sample again.
    """
    by_id = {r["item_id"]: r for r in rows}
    sample = [item for item in items if item.id in by_id][:n]
    ids = [item.id for item in sample]
    if cache is not None and cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key and saved.get("items") == ids:
            return {k: saved[k] for k in ("n", "identical", "same_answer")}
    texts = [model.chat(answer_messages(task, item, demos), params).text for item in sample]
    pairs = list(zip(texts, sample, strict=True))
    same_text = sum(t == by_id[i.id]["completion"] for t, i in pairs)
    same_answer = sum(task.check(i, t).predicted == by_id[i.id]["predicted"] for t, i in pairs)
    result = {"n": len(sample), "identical": same_text, "same_answer": same_answer}
    if cache is not None:
        atomic_write_text(cache, json.dumps({"key": key, "items": ids, **result}, indent=1))
    return result
