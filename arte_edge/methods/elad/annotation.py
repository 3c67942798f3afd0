"""Annotation with the teacher under the call budget: what a question may cost, how many a round can send, and
turning a selected question into a checked training example (CLEAR revision or the teacher's own explanation)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from arte_edge.backends.base import ChatModel, Completion, SamplingParams
from arte_edge.errors import ArteError
from arte_edge.methods.common import completion_cost, rationale_of, teacher_messages, training_example
from arte_edge.methods.elad.config import EladConfig
from arte_edge.methods.elad.prompts import clear_messages, format_solution, split_steps, teacher_explain_messages
from arte_edge.methods.elad.revision import parse_clear
from arte_edge.tasks.base import Item, Task
from arte_edge.tasks.extract import final_answer_text


def resolve_checker(cfg: EladConfig, pool: Sequence[Item]) -> str:
    """gold when asked (or auto and every pool item has a gold answer), else teacher self-consistency."""
    if cfg.checker != "auto":
        if cfg.checker == "gold" and any(not it.answer for it in pool):
            raise ArteError("elad.checker: 'gold' but some pool items have no answer; use self_consistency or auto")
        return cfg.checker
    return "gold" if all(it.answer for it in pool) else "self_consistency"


def calls_per_question(checker: str, cfg: EladConfig) -> int:
    """Teacher calls one selected question may cost (reserved in full before it is sent)."""
    return 1 + (cfg.consistency_samples if checker == "self_consistency" else 0)


def affordable(budget: int, spent: int, per_question: int, batch: int, n_unlabelled: int) -> int:
    """How many questions this round may send without ever exceeding the budget."""
    return max(0, min(batch, (budget - spent) // per_question, n_unlabelled))


@dataclass(frozen=True)
class Annotator:
    """Turns one selected question into a training example (or a counted rejection) with the teacher."""

    teacher: ChatModel
    task: Task
    cfg: EladConfig
    checker: str  # "gold" | "self_consistency"
    teacher_name: str
    seed: int

    def annotate(self, item: Item, explanation: str, mode: str, record_id: str,
                 meta: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``(example, None)`` when the revision passes the checker, else ``(None, rejection)``."""
        params = SamplingParams(max_tokens=self.cfg.teacher_max_tokens, temperature=self.cfg.teacher_temperature,
                                seed=self.seed)
        info: dict[str, Any] = {}
        if mode == "clear":
            steps = split_steps(explanation, self.cfg.step_split)
            reply = self.teacher.chat(clear_messages(self.task, item, steps, self.task.extract_answer(explanation)),
                                      params)
            revision, reason = parse_clear(reply.text, steps) if reply.ok else (None, "")
            if revision is not None:
                info = {"first_wrong": revision.first_wrong, "n_kept": revision.n_kept,
                        "n_student_steps": len(steps)}
            text = revision.text if revision else None
        else:
            reply = self.teacher.chat(teacher_explain_messages(self.task, item), params)
            answer = final_answer_text(reply.text) if reply.ok else None
            text = format_solution(split_steps(reply.text, self.cfg.step_split), answer) if answer else None
            reason = "parse failure: no 'Answer:' line"
        calls = [reply]
        meta = {**meta, **info}
        if not reply.ok:
            return None, self._reject(record_id, item, calls, meta, "teacher_error", f"teacher error: {reply.error}",
                                      reply.text)
        if text is None:
            return None, self._reject(record_id, item, calls, meta, "parse_failure", reason, reply.text)
        ok, predicted, why = self._check(item, text, calls)
        if not ok:
            return None, self._reject(record_id, item, calls, meta, "still_wrong", why, text)
        target = self.task.target(rationale_of(text), predicted)
        full_meta = {**meta, "teacher": self.teacher_name, "outcome": "accepted", "checker": self.checker,
                     **completion_cost(*calls)}
        return training_example(self.task, item, target, record_id, full_meta), None

    def _check(self, item: Item, text: str, calls: list[Completion]) -> tuple[bool, str, str]:
        if self.checker == "gold":
            check = self.task.check(item, text)
            return check.correct, check.predicted or "", check.reason or "rejected by checker"
        predicted = self.task.extract_answer(text)
        if predicted is None:
            return False, "", "no parseable answer"
        params = SamplingParams(max_tokens=self.cfg.teacher_max_tokens, temperature=self.cfg.consistency_temperature,
                                seed=self.seed)
        answers = []
        for j in range(self.cfg.consistency_samples):
            c = self.teacher.chat(teacher_messages(self.task, item), replace(params, seed=self.seed + 1 + j))
            calls.append(c)
            answers.append(self.task.extract_answer(c.text) if c.ok else None)
        top, count = Counter(a for a in answers if a is not None).most_common(1)[0] if any(answers) else (None, 0)
        if top == predicted and 2 * count > len(answers):
            return True, predicted, ""
        return False, predicted, f"teacher self-consistency disagrees ({predicted} vs majority {top}, {count}/" \
                                 f"{len(answers)})"

    def _reject(self, record_id: str, item: Item, calls: list[Completion], meta: dict[str, Any], kind: str,
                reason: str, text: str) -> dict[str, Any]:
        return {"id": record_id, "kind": kind, "reason": reason or kind, "completion": (text or "")[:2000],
                "meta": {"item_id": item.id, "teacher": self.teacher_name, "outcome": kind, **meta,
                         **completion_cost(*calls)}}
