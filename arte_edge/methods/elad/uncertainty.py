"""Uncertainty of the student on unlabelled questions: EGSS (intra- and inter-explanation, arXiv 2402.13098) and
the answer-entropy baseline; pure measures first, then the scorers that query the student."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from arte_edge.backends.base import ChatModel, Message, SamplingParams
from arte_edge.errors import ArteError
from arte_edge.evaluation.scoring import ANSWER_DONE
from arte_edge.methods.elad.config import EladConfig
from arte_edge.methods.elad.prompts import direct_answer_messages, explain_messages, prefix_messages, split_steps
from arte_edge.rundir import stable_id
from arte_edge.tasks.base import Item, Task

# The category of a missing answer in an entropy (failing to answer is uncertainty too).
NONE_ANSWER = "<none>"


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
