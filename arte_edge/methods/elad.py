"""ELAD: explanation-guided active distillation (arXiv 2402.13098), with its baselines at the same budget.

Per round and per strategy: score the unlabelled pool with the current student, send the b most uncertain
questions (within the teacher-call budget B) to the teacher, keep the checked revisions, fine-tune the base
student on everything kept so far, evaluate it on the held-out split, and append a learning-curve point to
``elad/curve.jsonl``. Strategies:

- ``elad``: EGSS selection (intra- and inter-explanation uncertainty, weight λ) + CLEAR revision;
- ``random`` / ``answer_entropy``: that selection + CLEAR revision;
- ``teacher_explain``: EGSS selection, the teacher writes its own explanation (no revision).

The pool is unlabelled for selection. Revisions are validated by the task's checker against the gold answer
when the task has one (``checker: gold``), else by agreement with the teacher's own majority answer
(``checker: self_consistency``). Everything is resumable: a rerun skips rounds already in the curve and
continues a round from its selection, annotation and evaluation files.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.backends.base import ChatModel, Completion, Message, SamplingParams
from arte_edge.errors import ArteError
from arte_edge.methods.common import answer_messages, completion_cost, rationale_of, teacher_messages, training_example
from arte_edge.methods.elad_config import EladConfig
from arte_edge.rundir import JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl, stable_id
from arte_edge.tasks.base import Item, Task
from arte_edge.tasks.extract import final_answer_text

if TYPE_CHECKING:
    from arte_edge.stages.context import StageContext

# A complete answer line followed by a newline: stop decoding there (same rule as the evaluate stage).
ANSWER_DONE = r"(?im)^\s*\**\s*(final\s+)?answer\s*\**\s*[:：][^\n]*\S[^\n]*\n"
NONE_ANSWER = "<none>"

# ================================================================================================ prompts

STEP_FORMAT = ("Write the reasoning as numbered steps, one per line: 'Step 1: ...', 'Step 2: ...'. "
               "Then end with the final line 'Answer: X'.")
CLEAR_SYSTEM = ("You are a careful teacher. You check a student's step-by-step solution, step by step, and "
                "correct it from its first wrong step.")


def format_steps(steps: Sequence[str]) -> str:
    """Steps as numbered lines ``Step k: ...`` (k from 1)."""
    return "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))


def format_solution(steps: Sequence[str], answer: str) -> str:
    """A full explanation: numbered steps, then the ``Answer:`` line."""
    body = format_steps(steps)
    return f"{body}\nAnswer: {answer}" if body else f"Answer: {answer}"


def explain_messages(task: Task, item: Item) -> list[Message]:
    """The student's explanation prompt: the task's own prompt plus the numbered-step format."""
    messages = answer_messages(task, item)
    messages[0] = {"role": "system", "content": f"{task.system_prompt} {STEP_FORMAT}"}
    return messages


def prefix_messages(task: Task, item: Item, steps: Sequence[str]) -> list[Message]:
    """Ask the student for its final answer right after the first k steps of its explanation (k may be 0)."""
    shown = format_steps(steps) or "(no steps yet)"
    user = (f"{task.user_prompt(item)}\n\nThe first steps of a solution:\n{shown}\n\n"
            "Based on these steps, give the final answer now. Reply with only the line 'Answer: X'.")
    return [{"role": "system", "content": task.system_prompt}, {"role": "user", "content": user}]


def direct_answer_messages(task: Task, item: Item) -> list[Message]:
    """Ask for the final answer only, without reasoning (the answer-entropy baseline's samples)."""
    messages = answer_messages(task, item)
    messages[0] = {"role": "system", "content": f"{task.system_prompt} Reply with only the final line "
                   "'Answer: X', without any reasoning."}
    return messages


def teacher_explain_messages(task: Task, item: Item) -> list[Message]:
    """The teacher writes its own numbered explanation (the no-revision baseline)."""
    messages = teacher_messages(task, item)
    messages[0] = {"role": "system", "content": f"{messages[0]['content']} {STEP_FORMAT}"}
    return messages


def clear_messages(task: Task, item: Item, steps: Sequence[str], student_answer: str | None) -> list[Message]:
    """CLEAR: the teacher checks each numbered student step and rewrites from the first flawed one."""
    user = (f"Question:\n{task.user_prompt(item)}\n\nStudent's solution:\n{format_steps(steps) or '(no steps)'}\n"
            f"Student's final answer: {student_answer or '(none)'}\n\n"
            f"The final answer must follow this rule: {task.system_prompt}\n\n"
            "Check each step in order. Then reply in exactly this format:\n"
            "Check 1: correct\nCheck 2: wrong, <short reason>\n"
            "First wrong step: <number of the first wrong step, or none>\n"
            "Revised solution:\nStep <first wrong step>: <corrected step>\nStep <next number>: ...\n"
            "Answer: <final answer>\n\n"
            "Do not repeat the correct steps before the first wrong one. If every step is correct, write "
            "'First wrong step: none' and then only the final 'Answer:' line.")
    return [{"role": "system", "content": CLEAR_SYSTEM}, {"role": "user", "content": user}]


# ================================================================================ steps and uncertainty

_STEP = re.compile(r"(?im)^[ \t]*[*#>\-]*[ \t]*step[ \t]*(\d+)[ \t]*\**[ \t]*[:.)\-]\**[ \t]*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


def numbered_steps(text: str) -> list[tuple[int, str]]:
    """``(number, text)`` of each ``Step k:`` block in ``text`` (a block runs to the next step)."""
    marks = list(_STEP.finditer(text))
    if not marks:
        return []
    out = []
    ends = [m.start() for m in marks[1:]] + [len(text)]
    for mark, end in zip(marks, ends, strict=True):
        body = " ".join(text[mark.end(): end].split())
        if body:
            out.append((int(mark.group(1)), body))
    return out


def split_steps(text: str, rule: str = "numbered") -> list[str]:
    """The reasoning steps of an explanation (its ``Answer:`` line excluded), cut by ``rule``."""
    body = rationale_of(text)
    if rule == "numbered":
        found = numbered_steps(body)
        if found:
            return [s for _, s in found]
        rule = "lines"
    if rule == "lines":
        return [" ".join(line.split()) for line in body.splitlines() if line.strip()]
    return [s.strip() for s in _SENTENCE.split(" ".join(body.split())) if s.strip()]


def prefix_lengths(n_steps: int, max_prefixes: int, include_empty: bool = False) -> list[int]:
    """Prefix sizes k whose answer the student gives (the full explanation's own answer closes the list)."""
    ks = list(range(0 if include_empty else 1, n_steps))
    if len(ks) <= max_prefixes:
        return ks
    if max_prefixes == 1:
        return [ks[len(ks) // 2]]
    picked = [ks[round(i * (len(ks) - 1) / (max_prefixes - 1))] for i in range(max_prefixes)]
    return sorted(set(picked))


def normalized_entropy(answers: Sequence[str | None]) -> float:
    """Shannon entropy of the answers divided by log(len(answers)): 0 = all equal, 1 = all different.

    A missing answer (None) counts as one more category: failing to answer is uncertainty too.
    """
    if len(answers) < 2:
        return 0.0
    counts = Counter(NONE_ANSWER if a is None else a for a in answers)
    n = len(answers)
    h = -sum(c / n * math.log(c / n) for c in counts.values())
    return max(0.0, h / math.log(n))


def intra_uncertainty(answers: Sequence[str | None], measure: str = "flips") -> float:
    """How much the answer moves as the explanation grows: answers after each prefix, the final one last.

    Prefixes after which the student gave no parseable answer are skipped; under two answers it is 0.
    """
    seq = [a for a in answers if a is not None]
    if len(seq) < 2:
        return 0.0
    if measure == "flips":
        return sum(a != b for a, b in itertools.pairwise(seq)) / (len(seq) - 1)
    if measure == "disagreement":
        return sum(a != seq[-1] for a in seq[:-1]) / (len(seq) - 1)
    if measure == "entropy":
        return normalized_entropy(seq)
    raise ArteError(f"elad.intra_measure: unknown measure {measure!r}; use flips, disagreement or entropy")


def inter_uncertainty(answers: Sequence[str | None]) -> float:
    """Entropy of the final answers of N sampled explanations (normalised to [0, 1])."""
    return normalized_entropy(answers)


def combine_scores(intra: float, inter: float, lambda_: float) -> float:
    """EGSS score: λ·intra + (1−λ)·inter."""
    return lambda_ * intra + (1.0 - lambda_) * inter


def rank_by_score(rows: Sequence[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """The ``k`` highest-scoring rows; ties broken by a seeded hash (not by pool order)."""
    return sorted(rows, key=lambda r: (-r["score"], stable_id(seed, r["item_id"])))[:k]


# ======================================================================================== CLEAR parsing

_FIRST_WRONG = re.compile(r"(?im)^[\W_]*first\s+(?:wrong|flawed|incorrect|erroneous)\s+step\W*?[:：=]?\s*"
                          r"(?:step\s*)?(\d+|none|n/?a|no\b)")
_REVISED = re.compile(r"(?im)^[\W_]*revised\s+solution\W*[:：]?\s*$")


@dataclass(frozen=True)
class Revision:
    """A CLEAR revision: the kept student prefix, the teacher's rewritten steps, and the final answer."""

    first_wrong: int | None  # 1-based index of the first flawed student step; None when all were correct
    steps: tuple[str, ...]
    answer: str
    n_kept: int

    @property
    def text(self) -> str:
        """The revised explanation in the student's format."""
        return format_solution(self.steps, self.answer)


def parse_clear(text: str, student_steps: Sequence[str]) -> tuple[Revision | None, str]:
    """Parse a CLEAR reply into a :class:`Revision`, or ``(None, reason)`` when it does not follow the format."""
    mark = _FIRST_WRONG.search(text)
    if mark is None:
        return None, "parse failure: no 'First wrong step' line"
    rest = text[mark.end():]
    answer = final_answer_text(rest)
    if answer is None:
        return None, "parse failure: no 'Answer:' line after 'First wrong step'"
    token = mark.group(1).lower()
    if not token.isdigit():
        steps = tuple(student_steps)
        return Revision(None, steps, answer, len(steps)), ""
    k = int(token)
    if not 1 <= k <= len(student_steps) + 1:
        return None, f"parse failure: first wrong step {k} is outside 1..{len(student_steps) + 1}"
    revised = _REVISED.search(rest)
    section = rationale_of(rest[revised.end():] if revised else rest)
    found = numbered_steps(section)
    rewritten = [s for n, s in found if n >= k] or [s for _, s in found]
    if not found:
        rewritten = [" ".join(line.split()) for line in section.splitlines() if line.strip()]
    if not rewritten and k <= len(student_steps):
        return None, f"parse failure: step {k} is wrong but no rewritten steps follow"
    kept = tuple(student_steps[: k - 1])
    return Revision(k, (*kept, *rewritten), answer, len(kept)), ""


# =============================================================================== scoring with the student

def _explain_params(cfg: EladConfig, seed: int) -> SamplingParams:
    return SamplingParams(max_tokens=cfg.explain_max_tokens, temperature=0.0, seed=seed, stop_regex=ANSWER_DONE)


def explain(student: ChatModel, task: Task, items: Sequence[Item], cfg: EladConfig, seed: int) -> list[str]:
    """The student's greedy numbered explanation of each item (what CLEAR revises)."""
    completions = student.chat_batch([explain_messages(task, it) for it in items], _explain_params(cfg, seed))
    return [c.text if c.ok else "" for c in completions]


def _sample_answers(student: ChatModel, task: Task, convs: list[list[Message]], params: SamplingParams,
                    n: int) -> list[list[str | None]]:
    """N sampled answers per conversation; each sample has its own seed (llama.cpp repeats a seed exactly)."""
    out: list[list[str | None]] = [[] for _ in convs]
    for j in range(n):
        for i, c in enumerate(student.chat_batch(convs, replace(params, seed=params.seed + 1 + j))):
            out[i].append(task.extract_answer(c.text) if c.ok else None)
    return out


def egss_scores(student: ChatModel, task: Task, items: Sequence[Item], cfg: EladConfig,
                seed: int) -> list[dict[str, Any]]:
    """EGSS rows: greedy explanation, answers after each step prefix (intra), N sampled answers (inter)."""
    texts = explain(student, task, items, cfg, seed)
    steps = [split_steps(t, cfg.step_split) for t in texts]
    finals = [task.extract_answer(t) for t in texts]
    prefix_answers: list[list[str | None]] = [[] for _ in items]
    if cfg.lambda_ > 0:
        jobs = [(i, k) for i in range(len(items))
                for k in prefix_lengths(len(steps[i]), cfg.max_prefixes, cfg.include_empty_prefix)]
        params = SamplingParams(max_tokens=cfg.prefix_max_tokens, temperature=0.0, seed=seed, stop_regex=ANSWER_DONE)
        outs = student.chat_batch([prefix_messages(task, items[i], steps[i][:k]) for i, k in jobs], params)
        for (i, _), c in zip(jobs, outs, strict=True):
            prefix_answers[i].append(task.extract_answer(c.text) if c.ok else None)
    samples: list[list[str | None]] = [[] for _ in items]
    if cfg.lambda_ < 1:
        params = replace(_explain_params(cfg, seed), temperature=cfg.sample_temperature)
        samples = _sample_answers(student, task, [explain_messages(task, it) for it in items], params, cfg.n_samples)
    rows = []
    for i, item in enumerate(items):
        intra = intra_uncertainty([*prefix_answers[i], finals[i]], cfg.intra_measure) if cfg.lambda_ > 0 else 0.0
        inter = inter_uncertainty(samples[i]) if cfg.lambda_ < 1 else 0.0
        rows.append({"item_id": item.id, "score": round(combine_scores(intra, inter, cfg.lambda_), 6),
                     "intra": round(intra, 6), "inter": round(inter, 6), "explanation": texts[i],
                     "n_steps": len(steps[i]), "final_answer": finals[i], "prefix_answers": prefix_answers[i],
                     "sample_answers": samples[i],
                     "student_calls": 1 + len(prefix_answers[i]) + len(samples[i])})
    return rows


def answer_entropy_scores(student: ChatModel, task: Task, items: Sequence[Item], cfg: EladConfig,
                          seed: int) -> list[dict[str, Any]]:
    """Baseline rows: entropy of N sampled final answers (direct answers, or of sampled explanations)."""
    if cfg.answer_entropy_mode == "direct":
        convs = [direct_answer_messages(task, it) for it in items]
        params = SamplingParams(max_tokens=cfg.prefix_max_tokens, temperature=cfg.sample_temperature, seed=seed,
                                stop_regex=ANSWER_DONE)
    else:
        convs = [explain_messages(task, it) for it in items]
        params = replace(_explain_params(cfg, seed), temperature=cfg.sample_temperature)
    samples = _sample_answers(student, task, convs, params, cfg.n_samples)
    return [{"item_id": it.id, "score": round(inter_uncertainty(s), 6), "sample_answers": s,
             "student_calls": len(s)} for it, s in zip(items, samples, strict=True)]


SCORERS: dict[str, Callable[..., list[dict[str, Any]]]] = {"egss": egss_scores,
                                                           "answer_entropy": answer_entropy_scores}


# ============================================================================== annotation with the teacher

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


# ===================================================================================== the active loop

@dataclass(frozen=True)
class Strategy:
    """One learning curve: how questions are selected and how the teacher annotates them."""

    name: str
    selection: str  # egss | random | answer_entropy
    annotation: str  # clear | teacher_own


BASELINES = {"random": ("random", "clear"), "answer_entropy": ("answer_entropy", "clear"),
             "teacher_explain": ("egss", "teacher_own")}


def strategies_for(cfg: EladConfig) -> list[Strategy]:
    """ELAD itself first, then each configured baseline."""
    return [Strategy("elad", cfg.selection, cfg.revision),
            *(Strategy(name, *BASELINES[name]) for name in cfg.baselines)]


Trainer = Callable[[list[dict[str, Any]], Path], Path]
StudentOpener = Callable[[Path], ChatModel]


@dataclass
class LoopEnv:
    """Everything the loop needs; the model-facing parts are injectable (tests use fakes)."""

    root: Path
    task: Task
    cfg: EladConfig
    pool: list[Item]
    eval_items: list[Item]
    val_items: list[Item]
    base_dir: Path
    annotator: Annotator
    open_student: StudentOpener
    train: Trainer
    eval_params: SamplingParams
    seed: int
    open_eval_student: StudentOpener | None = None  # evaluation's opener when it differs (batch-1 decoding)

    @property
    def elad_dir(self) -> Path:
        return self.root / "elad"

    @property
    def curve_path(self) -> Path:
        return self.elad_dir / "curve.jsonl"

    def curve(self) -> dict[tuple[str, int], dict[str, Any]]:
        return {(r["strategy"], r["round"]): r for r in read_jsonl(self.curve_path)}

    def append_curve(self, row: dict[str, Any]) -> None:
        JsonlAppender(self.curve_path).write_batch([row])


def _rel(env: LoopEnv, path: Path) -> str:
    try:
        return str(path.relative_to(env.root))
    except ValueError:
        return str(path)


def _abs(env: LoopEnv, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else env.root / p


def evaluate_dir(env: LoopEnv, model_dir: Path, items: Sequence[Item], out_path: Path, label: str) -> list[bool]:
    """Per-item correctness of the model in ``model_dir`` (resumable per item)."""
    from arte_edge.stages.evaluate import evaluate_model

    if not items:
        return []
    model = (env.open_eval_student or env.open_student)(model_dir)
    try:
        rows = evaluate_model(model, env.task, items, out_path, env.eval_params, label=label)
    finally:
        model.close()
    return [bool(r["correct"]) for r in rows]


def _metrics(env: LoopEnv, model_dir: Path, out_dir: Path, label: str) -> dict[str, Any]:
    from arte_edge.stats import accuracy_summary

    flags = evaluate_dir(env, model_dir, env.eval_items, out_dir / "eval.jsonl", label)
    summary = accuracy_summary(flags)
    val = evaluate_dir(env, model_dir, env.val_items, out_dir / "validation.jsonl", f"{label} (validation)")
    return {"accuracy": summary["accuracy"], "ci_low": summary["ci_low"], "ci_high": summary["ci_high"],
            "n": summary["n_eval"], "val_accuracy": (sum(val) / len(val)) if val else None,
            "n_val": len(val), "eval_file": _rel(env, out_dir / "eval.jsonl")}


def base_point(env: LoopEnv) -> dict[str, Any]:
    """Round 0, shared by every strategy: the untrained student, no teacher call."""
    row = env.curve().get(("base", 0))
    if row:
        return row
    row = {"strategy": "base", "round": 0, "teacher_calls": 0, "teacher_prompt_tokens": 0,
           "teacher_completion_tokens": 0, "n_train": 0, "model_dir": str(env.base_dir),
           **_metrics(env, env.base_dir, env.elad_dir / "base", "base student")}
    env.append_curve(row)
    return row


def stop_value(env: LoopEnv, row: dict[str, Any]) -> float | None:
    """The accuracy the stopping rule watches for one curve point (None: rule off)."""
    if env.cfg.stop_metric == "none":
        return None
    if env.cfg.stop_metric == "validation" and row.get("val_accuracy") is not None:
        return row["val_accuracy"]
    return row["accuracy"]


def patience_exhausted(values: Sequence[float], patience: int, min_delta: float) -> bool:
    """True when none of the last ``patience`` values beat the best before them by more than ``min_delta``."""
    if len(values) <= patience:
        return False
    best_before = max(values[:-patience])
    return all(v <= best_before + min_delta for v in values[-patience:])


@dataclass
class StrategyState:
    """What a strategy has acquired so far (rebuilt from its files on resume)."""

    labelled: set[str]
    examples: list[dict[str, Any]]
    rejected: list[dict[str, Any]]

    def spent(self) -> dict[str, int]:
        rows = self.examples + self.rejected
        return {"teacher_calls": sum(r["meta"].get("teacher_calls", 0) for r in rows),
                "teacher_prompt_tokens": sum(r["meta"].get("prompt_tokens", 0) for r in rows),
                "teacher_completion_tokens": sum(r["meta"].get("completion_tokens", 0) for r in rows)}


class StrategyRun:
    """The rounds of one strategy: select → annotate → train → evaluate → curve point."""

    def __init__(self, env: LoopEnv, strategy: Strategy):
        self.env, self.strategy = env, strategy
        self.dir = env.elad_dir / strategy.name
        self.examples_file = JsonlAppender(self.dir / "examples.jsonl")
        self.rejected_file = JsonlAppender(self.dir / "rejected.jsonl")

    def state(self, up_to_round: int) -> StrategyState:
        """Labelled ids and records of rounds ≤ ``up_to_round``."""
        examples = [r for r in read_jsonl(self.examples_file.path) if r["meta"]["round"] <= up_to_round]
        rejected = [r for r in read_jsonl(self.rejected_file.path) if r["meta"]["round"] <= up_to_round]
        labelled: set[str] = set()
        for r in range(1, up_to_round + 1):
            sel = self.dir / f"round-{r}" / "selection.json"
            if sel.exists():
                labelled.update(s["item_id"] for s in json.loads(sel.read_text())["selected"])
        return StrategyState(labelled, examples, rejected)

    def run(self, base: dict[str, Any]) -> dict[str, Any]:
        """Run (or resume) every round; returns the last curve point."""
        env, cfg = self.env, self.env.cfg
        prev, values = base, [v for v in [stop_value(env, base)] if v is not None]
        for r in range(1, cfg.rounds + 1):
            row = env.curve().get((self.strategy.name, r))
            if row is None:
                row = self.round(r, prev, values)
                if row is None:
                    break
                env.append_curve(row)
                self._drop_old_model(prev, row)
            prev = row
            if (v := stop_value(env, row)) is not None:
                values.append(v)
            if row.get("stop_reason"):
                break
        return prev

    def round(self, r: int, prev: dict[str, Any], values: list[float]) -> dict[str, Any] | None:
        """One round; None when nothing can be sent any more (budget or pool exhausted)."""
        from arte_edge.progress import log

        env, cfg = self.env, self.env.cfg
        state = self.state(r - 1)
        per_q = calls_per_question(env.annotator.checker, cfg)
        unlabelled = [it for it in env.pool if it.id not in state.labelled]
        n_take = affordable(cfg.budget, state.spent()["teacher_calls"], per_q, cfg.batch_size, len(unlabelled))
        if n_take == 0:
            return None
        round_dir = self.dir / f"round-{r}"
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        selection = self.select(r, unlabelled, n_take, _abs(env, prev["model_dir"]), round_dir)
        timings["select_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        self.annotate(r, selection)
        timings["annotate_s"] = round(time.perf_counter() - t0, 1)
        state = self.state(r)
        t0 = time.perf_counter()
        new = [x for x in state.examples if x["meta"]["round"] == r]
        # Nothing new kept this round: the student is unchanged (no retraining on the same data).
        model_dir = env.train(state.examples, round_dir) if new else _abs(env, prev["model_dir"])
        timings["train_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        same = str(model_dir) == str(_abs(env, prev["model_dir"]))
        metrics = ({k: prev[k] for k in ("accuracy", "ci_low", "ci_high", "n", "val_accuracy", "n_val", "eval_file")}
                   if same else _metrics(env, model_dir, round_dir, f"{self.strategy.name} round {r}"))
        timings["eval_s"] = round(time.perf_counter() - t0, 1)
        this_round = [x for x in state.examples + state.rejected if x["meta"]["round"] == r]
        kinds = Counter(x["meta"].get("outcome") for x in this_round)
        row = {"strategy": self.strategy.name, "round": r, **state.spent(), "n_train": len(state.examples),
               "n_selected": len(selection["selected"]), "n_accepted": kinds["accepted"],
               "n_parse_failure": kinds["parse_failure"], "n_still_wrong": kinds["still_wrong"],
               "n_teacher_error": kinds["teacher_error"], "model_dir": _rel(env, model_dir), **metrics,
               "seconds": timings, "student_calls": selection.get("student_calls", 0)}
        row["stop_reason"] = self.stop_reason(r, row, values, per_q, len(unlabelled) - n_take)
        stop = f" — stop: {row['stop_reason']}" if row["stop_reason"] else ""
        log(f"elad {self.strategy.name} round {r}: {row['teacher_calls']} teacher calls, {row['n_train']} examples, "
            f"accuracy {100 * row['accuracy']:.1f}% (n={row['n']}){stop}")
        return row

    def stop_reason(self, r: int, row: dict[str, Any], values: list[float], per_q: int, n_left: int) -> str | None:
        """Why the loop ends after this round (None: go on)."""
        cfg = self.env.cfg
        value = stop_value(self.env, row)
        if value is not None and patience_exhausted([*values, value], cfg.patience, cfg.min_delta_pt / 100):
            return (f"patience: {cfg.stop_metric} accuracy did not improve by > {cfg.min_delta_pt} pt for "
                    f"{cfg.patience} round(s)")
        if r >= cfg.rounds:
            return "rounds: all rounds done"
        if cfg.budget - row["teacher_calls"] < per_q:
            return f"budget: {row['teacher_calls']} of {cfg.budget} teacher calls spent"
        if n_left <= 0:
            return "pool: no unlabelled question left"
        return None

    # -- selection --------------------------------------------------------------------------------
    def select(self, r: int, unlabelled: list[Item], n_take: int, student_dir: Path,
               round_dir: Path) -> dict[str, Any]:
        """Choose this round's questions (resumes from ``selection.json``)."""
        path = round_dir / "selection.json"
        if path.exists():
            return json.loads(path.read_text())
        env, cfg, kind = self.env, self.env.cfg, self.strategy.selection
        rng = random.Random(f"{env.seed}/elad/candidates/{r}")
        n_cand = min(len(unlabelled), cfg.candidates_per_round or len(unlabelled))
        candidates = sorted(rng.sample(unlabelled, n_cand), key=lambda it: it.id) if kind != "random" else []
        student: ChatModel | None = None
        student_calls = 0
        try:
            if kind == "random":
                pick = random.Random(f"{env.seed}/elad/random/{self.strategy.name}/{r}").sample(unlabelled, n_take)
                chosen = [{"item_id": it.id, "score": None} for it in pick]
            else:
                student = env.open_student(student_dir)
                rows = self.scores(r, kind, candidates, student, student_dir)
                student_calls = sum(x.get("student_calls", 0) for x in rows)
                chosen = rank_by_score(rows, n_take, env.seed)
            by_id = {it.id: it for it in unlabelled}
            if self.strategy.annotation == "clear":
                missing = [c for c in chosen if not c.get("explanation")]
                if missing:
                    student = student or env.open_student(student_dir)
                    texts = explain(student, env.task, [by_id[c["item_id"]] for c in missing], cfg, env.seed)
                    student_calls += len(missing)
                    for c, text in zip(missing, texts, strict=True):
                        c["explanation"] = text
        finally:
            if student is not None:
                student.close()
        keep = ("item_id", "score", "intra", "inter", "explanation", "final_answer", "prefix_answers",
                "sample_answers")
        selection = {"round": r, "strategy": self.strategy.name, "selection": kind, "n_candidates": len(candidates),
                     "student_dir": str(student_dir), "student_calls": student_calls,
                     "selected": [{k: c[k] for k in keep if k in c} for c in chosen]}
        atomic_write_json(path, selection)
        return selection

    def scores(self, r: int, kind: str, candidates: list[Item], student: ChatModel,
               student_dir: Path) -> list[dict[str, Any]]:
        """Uncertainty rows of the candidates, durable per batch; round 1 (base student) is shared."""
        env, cfg = self.env, self.env.cfg
        shared = str(student_dir) == str(env.base_dir) and r == 1
        path = (env.elad_dir / "shared" / f"round-1-scores-{kind}.jsonl" if shared
                else self.dir / f"round-{r}" / f"scores-{kind}.jsonl")
        done = {x["item_id"]: x for x in read_jsonl(path)}
        todo = [it for it in candidates if it.id not in done]
        appender = JsonlAppender(path)
        for start in range(0, len(todo), cfg.score_batch):
            batch = todo[start:start + cfg.score_batch]
            rows = SCORERS[kind](student, env.task, batch, cfg, env.seed * 1000 + r)
            appender.write_batch(rows)
            done.update({x["item_id"]: x for x in rows})
        return [done[it.id] for it in candidates]

    # -- annotation -------------------------------------------------------------------------------
    def annotate(self, r: int, selection: dict[str, Any]) -> None:
        """Send each selected question to the teacher once (records are durable; resume skips done ids)."""
        env = self.env
        by_id = {it.id: it for it in env.pool}
        done = {x["id"] for x in read_jsonl(self.examples_file.path)} | {x["id"] for x in
                                                                          read_jsonl(self.rejected_file.path)}
        for sel in selection["selected"]:
            item = by_id[sel["item_id"]]
            record_id = stable_id("elad", self.strategy.name, r, item.id, env.annotator.teacher_name, env.seed)
            if record_id in done:
                continue
            meta = {"method": "elad", "strategy": self.strategy.name, "round": r, "selection": selection["selection"],
                    "score": sel.get("score"), "annotation": self.strategy.annotation}
            example, rejected = env.annotator.annotate(item, sel.get("explanation", ""), self.strategy.annotation,
                                                       record_id, meta)
            if example is not None:
                self.examples_file.write_batch([example])
            if rejected is not None:
                self.rejected_file.write_batch([rejected])

    def _drop_old_model(self, prev: dict[str, Any], row: dict[str, Any]) -> None:
        """Keep only the newest merged student of this strategy (``keep_models: last``)."""
        if self.env.cfg.keep_models == "all" or prev.get("strategy") != self.strategy.name:
            return
        old = _abs(self.env, prev["model_dir"])
        if old == _abs(self.env, row["model_dir"]):
            return
        if old != self.env.base_dir and old.name == "merged" and old.is_relative_to(self.dir):
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(quantized_dir(old), ignore_errors=True)


def run_loop(env: LoopEnv, strategies: Sequence[Strategy]) -> dict[str, dict[str, Any]]:
    """Every strategy's rounds; returns each one's last curve point."""
    base = base_point(env)
    return {s.name: StrategyRun(env, s).run(base) for s in strategies}


# ============================================================================================ report

def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def curve_rows(root: Path) -> list[dict[str, Any]]:
    """The learning-curve points of a run directory (base first, then strategy by round)."""
    rows = read_jsonl(root / "elad" / "curve.jsonl")
    return sorted(rows, key=lambda r: (r["strategy"] != "base", r["strategy"], r["round"]))


def plot_curve(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Held-out accuracy vs teacher calls with 95% CI error bars, one line per strategy (from the base point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = [r for r in rows if r["strategy"] == "base"]
    names = list(dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "base"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(names):
        pts = base + [r for r in rows if r["strategy"] == name]
        x = [p["teacher_calls"] + 0.004 * i * max(1, pts[-1]["teacher_calls"]) for p in pts]  # dodge the bars
        y = [100 * p["accuracy"] for p in pts]
        err = [[100 * (p["accuracy"] - p["ci_low"]) for p in pts], [100 * (p["ci_high"] - p["accuracy"]) for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
    n = rows[0]["n"] if rows else 0
    ax.set(xlabel="teacher calls", ylabel=f"held-out accuracy % (n={n}, 95% CI)", title="ELAD learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def paired_final(root: Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each baseline's last point vs ELAD's on the same held-out items (exact McNemar)."""
    from arte_edge.stats import mcnemar_p

    last = {}
    for r in rows:
        if r["strategy"] != "base":
            last[r["strategy"]] = r
    if "elad" not in last:
        return []

    def flags(row: dict[str, Any]) -> dict[str, bool]:
        return {x["item_id"]: bool(x["correct"]) for x in read_jsonl(root / row["eval_file"])}

    ref = flags(last["elad"])
    out = []
    for name, row in last.items():
        if name == "elad":
            continue
        other = flags(row)
        common = [i for i in ref if i in other]
        if not common:
            continue
        out.append({"strategy": name, "n": len(common), "elad_accuracy": sum(ref[i] for i in common) / len(common),
                    "accuracy": sum(other[i] for i in common) / len(common),
                    "mcnemar_p": round(mcnemar_p([ref[i] for i in common], [other[i] for i in common]), 4)})
    return out


def unanswered(root: Path, row: dict[str, Any]) -> int | None:
    """Held-out items of a curve point without a parseable final answer (cut at max_tokens, or no answer line)."""
    path = root / row["eval_file"]
    return sum(x.get("predicted") is None for x in read_jsonl(path)) if path.exists() else None


def render_section(info: dict[str, Any]) -> str:
    """The Markdown section ``report/sections/elad.md``."""
    lines = ["## ELAD: learning curve (held-out accuracy vs teacher calls)", "", info["setup"], "",
             "| strategy | round | teacher calls | n_train | accepted / sent | parse fail | still wrong | "
             "accuracy % | 95% CI | no answer | validation % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in info["rows"]:
        sent = f"{r.get('n_accepted', 0)} / {r.get('n_selected', 0)}" if r["strategy"] != "base" else "–"
        lines.append(f"| {r['strategy']} | {r['round']} | {r['teacher_calls']} | {r['n_train']} | {sent} | "
                     f"{r.get('n_parse_failure', '–')} | {r.get('n_still_wrong', '–')} | {_pct(r['accuracy'])} | "
                     f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}] | {r.get('n_no_answer', '–')} | "
                     f"{_pct(r.get('val_accuracy'))} |")
    lines += ["", "*no answer*: held-out items without a parseable final answer line (usually cut at "
              "`evaluate.max_tokens`); a drop there is the student learning the answer format, not the task."]
    lines += ["", "### Stopping decisions", ""]
    lines += [f"- **{name}**: after round {s['round']}: {s['reason']}" for name, s in info["stops"].items()]
    if info["paired"]:
        lines += ["", "### Last point vs ELAD on the same held-out items", "",
                  "| strategy | n | accuracy % | ELAD accuracy % | McNemar p |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {p['strategy']} | {p['n']} | {_pct(p['accuracy'])} | {_pct(p['elad_accuracy'])} | "
                  f"{p['mcnemar_p']} |" for p in info["paired"]]
    lines += ["", f"![ELAD learning curve]({info['plot_rel_md']})", ""]
    return "\n".join(lines)


def write_report(root: Path, setup: str, cfg: EladConfig) -> dict[str, Any]:
    """``report/sections/elad.{md,json}`` and ``report/elad_curve.png`` from ``elad/curve.jsonl``."""
    return _write_report(root, setup, cfg.model_dump(mode="json"))


def refresh_report(root: Path) -> bool:
    """Re-render the ELAD section of a finished loop (``arte-edge report``) from its curve and the setup and
    config recorded in ``report/sections/elad.json``; False when the run has no ELAD loop."""
    recorded = root / "report" / "sections" / "elad.json"
    if not (root / "elad" / "curve.jsonl").exists() or not recorded.exists():
        return False
    old = json.loads(recorded.read_text())
    _write_report(root, old["setup"], old["config"])
    return True


def _write_report(root: Path, setup: str, config: dict[str, Any]) -> dict[str, Any]:
    rows = [{**r, "n_no_answer": unanswered(root, r)} for r in curve_rows(root)]
    stops: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["strategy"] != "base":
            stops[r["strategy"]] = {"round": r["round"], "reason": r.get("stop_reason") or "not finished"}
    plot = root / "report" / "elad_curve.png"
    if rows:
        plot_curve(rows, plot)
    info = {"setup": setup, "rows": rows, "stops": stops, "paired": paired_final(root, rows),
            "plot": "report/elad_curve.png", "plot_rel_md": "elad_curve.png", "config": config}
    atomic_write_text(root / "report" / "sections" / "elad.md", render_section(info))
    atomic_write_json(root / "report" / "sections" / "elad.json", {k: v for k, v in info.items()
                                                                    if k != "plot_rel_md"})
    return info


# ============================================================================ entry point (generate)

def resolve_checker(cfg: EladConfig, pool: Sequence[Item]) -> str:
    """gold when asked (or auto and every pool item has a gold answer), else teacher self-consistency."""
    if cfg.checker != "auto":
        if cfg.checker == "gold" and any(not it.answer for it in pool):
            raise ArteError("elad.checker: 'gold' but some pool items have no answer; use self_consistency or auto")
        return cfg.checker
    return "gold" if all(it.answer for it in pool) else "self_consistency"


def default_trainer(base_dir: Path, recipe: Any) -> Trainer:
    """Fine-tune the base student on the cumulative examples (LoRA as in `train:`), merge into round-r/merged."""

    def train(examples: list[dict[str, Any]], round_dir: Path) -> Path:
        from arte_edge.stages.merge import merge_adapter
        from arte_edge.stages.train import train_adapter

        merged = round_dir / "merged"
        if (merged / "config.json").exists():
            return merged
        adapter = round_dir / "adapter"
        if not (adapter / "adapter_config.json").exists() and not (adapter / "config.json").exists():
            train_adapter(base_dir, examples, adapter, recipe.train, recipe.seed, round_dir / "checkpoints")
        if (adapter / "adapter_config.json").exists():
            merge_adapter(base_dir, adapter, merged, recipe.train.threads)
        else:  # full fine-tuning: the trained model is already whole
            shutil.copytree(adapter, merged)
        shutil.rmtree(round_dir / "checkpoints", ignore_errors=True)  # optimizer states: large, no longer needed
        return merged

    return train


def default_opener(threads: int, quant: str | None = None, root: Path | None = None, n_ctx: int = 2048,
                   verify: bool = True, batch_size: int = 8) -> StudentOpener:
    """Open a student folder with transformers (fp32, as the evaluate stage), or with ``quant`` as a GGUF in
    llama.cpp: exported once to ``<folder>-gguf/`` (the base student, outside the run, to ``root/elad/base/gguf``)."""

    def open_student(model_dir: Path) -> ChatModel:
        if quant is None:
            from arte_edge.backends.hf import HFChat

            return HFChat(model_dir, threads=threads)
        from arte_edge.backends.llamacpp import LlamaCppChat
        from arte_edge.export.gguf import cached_gguf
        from arte_edge.progress import log

        inside = root is not None and model_dir.resolve().is_relative_to(root.resolve())
        out_dir = quantized_dir(model_dir) if inside or root is None else root / "elad" / "base" / "gguf"
        path = cached_gguf(model_dir, out_dir, quant, "student", log, verify=verify, threads=threads)
        return LlamaCppChat(path, threads=threads, n_ctx=n_ctx, name=f"{model_dir.parent.name}/{model_dir.name}",
                            batch_size=batch_size)

    return open_student


def student_openers(recipe: Any, root: Path) -> tuple[StudentOpener, StudentOpener]:
    """``(scoring, evaluation)`` openers: scoring decodes 8 sequences together; evaluation does too unless
    ``elad.device_faithful_eval`` asks for the device's one-at-a-time decoding of the GGUF."""
    cfg = recipe.elad
    args = (recipe.evaluate.threads, cfg.student_quant, root, recipe.student.n_ctx, recipe.export.verify)
    scoring = default_opener(*args)
    if cfg.student_quant and cfg.device_faithful_eval:
        return scoring, default_opener(*args, batch_size=1)
    return scoring, scoring


def quantized_dir(model_dir: Path) -> Path:
    """Where the GGUF of a round's merged student goes (removed with it under ``keep_models: last``)."""
    return model_dir.parent / f"{model_dir.name}-gguf"


def _setup_text(ctx: StageContext, env: LoopEnv) -> str:
    cfg, recipe = env.cfg, ctx.recipe
    checker = ("the task's checker against the gold answer (the pool stays unlabelled for selection; only the "
               "revision check sees gold)" if env.annotator.checker == "gold"
               else f"teacher self-consistency ({cfg.consistency_samples} independent answers, majority must agree)")
    val = (f"validation = the `preference` split (n={len(env.val_items)})" if env.val_items
           else "validation split empty: the rule watches held-out accuracy (biases the last point)")
    cand = cfg.candidates_per_round or "all remaining"
    runtime = "in fp32 (torch)"
    if cfg.student_quant and cfg.device_faithful_eval:
        runtime = (f"as a GGUF {cfg.student_quant.upper()} in llama.cpp (scored one sequence at a time, as the "
                   "device and the Artifacts table do)")
    elif cfg.student_quant:
        runtime = (f"as a GGUF {cfg.student_quant.upper()} in llama.cpp, 8 sequences decoded together for speed (the "
                   "Artifacts table decodes one at a time, as the device does; batching changes float rounding, so "
                   "the same model's accuracy there can differ by a few items)")
    return (f"Task **{ctx.task.name}**, student `{recipe.student.model}`, teacher `{recipe.teacher.model}`. Budget "
            f"B = {cfg.budget} teacher calls per strategy, up to R = {cfg.rounds} rounds of b = {cfg.batch_size} "
            f"questions from a pool of {len(env.pool)}; {cand} candidates scored per round; EGSS λ = {cfg.lambda_} "
            f"(intra: {cfg.intra_measure} over ≤ {cfg.max_prefixes} step prefixes; inter: entropy of "
            f"N = {cfg.n_samples} samples at T = {cfg.sample_temperature}). Revisions checked by {checker}; parse "
            f"failures and still-wrong revisions are counted and dropped. The student is re-trained from the base "
            f"each round on all data kept so far; it runs {runtime}. Held-out n = {len(env.eval_items)}, accuracy "
            "with 95% Wilson "
            f"interval. Stopping: {cfg.stop_metric}, patience {cfg.patience}, min Δ {cfg.min_delta_pt} pt; {val}.")


def write_outputs(ctx: StageContext, env: LoopEnv, strategies: Sequence[Strategy],
                  last: dict[str, dict[str, Any]]) -> int:
    """ELAD's final data → data/examples.jsonl; each baseline's → data/variants/<name>/ (+ cost.json)."""
    n_elad = 0
    for s in strategies:
        row = last.get(s.name, {})
        state = StrategyRun(env, s).state(row.get("round", 0))
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in state.examples)
        if s.name == "elad":
            atomic_write_text(ctx.run.examples_path, text)
            n_elad = len(state.examples)
            continue
        out = ctx.run.root / "data" / "variants" / s.name
        atomic_write_text(out / "examples.jsonl", text)
        atomic_write_json(out / "cost.json", {**state.spent(), "n_examples": len(state.examples),
                                              "rounds": row.get("round", 0), "stop_reason": row.get("stop_reason")})
    return n_elad


def generate_datasets(ctx: StageContext, *, teacher: ChatModel | None = None,
                      open_student: StudentOpener | None = None, trainer: Trainer | None = None) -> dict[str, Any]:
    """Run the ELAD active loop and each baseline at the same budget; write datasets, curve, report section.

    ``teacher``, ``open_student`` and ``trainer`` replace the recipe's models (tests inject fakes).
    """
    from arte_edge import models
    from arte_edge.backends import open_chat_model
    from arte_edge.stages.evaluate import eval_params

    recipe, cfg = ctx.recipe, ctx.recipe.elad
    if ctx.task.kind == "code":
        raise ArteError("method: elad needs an answer-checked task (numeric or multiple_choice), not a code task; "
                        "use method: persd for code")
    pool = ctx.split("train_pool")
    if not pool:
        raise ArteError("splits.train_pool: is 0 but method elad selects from that pool; set splits.train_pool")
    eval_items = ctx.split("eval")[: cfg.eval_size or None]
    val_items = ctx.split("preference")[: cfg.validation_size or None] if cfg.stop_metric == "validation" else []
    base_dir = models.hf_folder(recipe.student.model)
    scoring, evaluation = student_openers(recipe, ctx.run.root)
    own_teacher = teacher is None
    teacher = teacher or open_chat_model(recipe.teacher, seed=recipe.seed)
    try:
        annotator = Annotator(teacher, ctx.task, cfg, resolve_checker(cfg, pool), recipe.teacher.model, recipe.seed)
        env = LoopEnv(root=ctx.run.root, task=ctx.task, cfg=cfg, pool=pool, eval_items=eval_items,
                      val_items=val_items, base_dir=base_dir, annotator=annotator,
                      open_student=open_student or scoring,
                      open_eval_student=None if open_student else evaluation,
                      train=trainer or default_trainer(base_dir, recipe),
                      eval_params=eval_params(ctx.task, recipe.evaluate.max_tokens), seed=recipe.seed)
        strategies = strategies_for(cfg)
        last = run_loop(env, strategies)
    finally:
        if own_teacher:
            teacher.close()
    n_elad = write_outputs(ctx, env, strategies, last)
    write_report(ctx.run.root, _setup_text(ctx, env), cfg)
    if n_elad == 0:
        raise ArteError(f"generate: no CLEAR revision passed the checker (see {env.elad_dir / 'elad'}"
                        "/rejected.jsonl); try a stronger teacher or a larger elad.budget")
    spent = StrategyRun(env, strategies[0]).state(last["elad"].get("round", 0)).spent()
    return {"n_examples": n_elad, **spent, "curve": "elad/curve.jsonl",
            "report_section": "report/sections/elad.md", "plot": "report/elad_curve.png",
            "strategies": {k: {"rounds": v.get("round"), "teacher_calls": v.get("teacher_calls"),
                               "accuracy": v.get("accuracy"), "stop_reason": v.get("stop_reason")}
                           for k, v in last.items()}}
