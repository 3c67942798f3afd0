"""The active loop: per strategy and round, select → annotate → train → evaluate → one learning-curve point in
``elad/curve.jsonl``. Everything is resumable from the files of the run directory."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arte_edge.backends.base import ChatModel, SamplingParams
from arte_edge.errors import ArteError
from arte_edge.methods.elad.annotation import Annotator, affordable, calls_per_question
from arte_edge.methods.elad.config import EladConfig
from arte_edge.methods.elad.students import StudentOpener, Trainer, point_key, quantized_dir
from arte_edge.methods.elad.uncertainty import SCORERS, explain, rank_by_score
from arte_edge.rundir import JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl, stable_id
from arte_edge.tasks.base import Item, Task


@dataclass(frozen=True)
class Strategy:
    """One learning curve: how questions are selected and how the teacher annotates them."""

    name: str
    selection: str  # egss | random | answer_entropy
    annotation: str  # clear | teacher_own


# ``standard``: random questions, the teacher writes its own explanation: standard distillation at the same budget
# (the reference every strategy is compared against in the report).
BASELINES = {"standard": ("random", "teacher_own"), "random": ("random", "clear"),
             "answer_entropy": ("answer_entropy", "clear"), "teacher_explain": ("egss", "teacher_own")}


def strategies_for(cfg: EladConfig) -> list[Strategy]:
    """ELAD itself first, then each configured baseline."""
    return [Strategy("elad", cfg.selection, cfg.revision),
            *(Strategy(name, *BASELINES[name]) for name in cfg.baselines)]


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
    eval_mode: str = ""  # runtime and batch mode of curve evaluation: part of every cached row's key

    @property
    def elad_dir(self) -> Path:
        """``<run>/elad``: every file of the loop."""
        return self.root / "elad"

    @property
    def curve_path(self) -> Path:
        """The learning curve, one JSON row per (strategy, round)."""
        return self.elad_dir / "curve.jsonl"

    def curve(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The curve points written so far, by ``(strategy, round)``."""
        return {(r["strategy"], r["round"]): r for r in read_jsonl(self.curve_path)}

    def append_curve(self, row: dict[str, Any]) -> None:
        """Append one curve point durably."""
        JsonlAppender(self.curve_path).write_batch([row])

    def replace_curve(self, row: dict[str, Any]) -> None:
        """Rewrite the curve with ``row`` in place of the point of the same (strategy, round)."""
        rows = [row if (r["strategy"], r["round"]) == (row["strategy"], row["round"]) else r
                for r in read_jsonl(self.curve_path)]
        atomic_write_text(self.curve_path, "".join(json.dumps(r) + "\n" for r in rows))


def eval_key(env: LoopEnv, model_dir: Path) -> str:
    """What a curve point's score depends on (see :func:`point_key`) under the loop's evaluation settings."""
    return point_key(model_dir, env.eval_mode, env.eval_params)


def fresh_metrics(env: LoopEnv, row: dict[str, Any], out_dir: Path, label: str) -> dict[str, Any]:
    """``row`` with its scores redone when they were taken under another evaluation key (e.g. a resumed run that now
    decodes one sequence at a time) and its model still exists; marked ``eval_key_stale`` when it cannot be."""
    model_dir = _abs(env, row["model_dir"])
    if not model_dir.exists():
        return row if row.get("eval_key") is None else {**row, "eval_key_stale": True}
    key = eval_key(env, model_dir)
    if row.get("eval_key") == key:
        return row
    fixed = {**row, **_metrics(env, model_dir, out_dir, label)}
    fixed.pop("eval_key_stale", None)
    env.replace_curve(fixed)
    return fixed


def _rel(env: LoopEnv, path: Path) -> str:
    try:
        return str(path.relative_to(env.root))
    except ValueError:
        return str(path)


def _abs(env: LoopEnv, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else env.root / p


def evaluate_dir(env: LoopEnv, model_dir: Path, items: Sequence[Item], out_path: Path,
                 label: str) -> tuple[list[bool], dict[str, Any] | None]:
    """Per-item correctness of the model in ``model_dir`` (resumable per item), and how the model that answered
    decoded (:func:`~arte_edge.evaluation.reuse.runtime_record`: its GGUF's SHA-256, batch mode, threads, context;
    None for a torch model), so the evaluate stage can adopt these rows only for the very same file and runtime."""
    from arte_edge.evaluation.reuse import runtime_record
    from arte_edge.evaluation.scoring import evaluate_model

    if not items:
        return [], None
    model = (env.open_eval_student or env.open_student)(model_dir)
    try:
        rows = evaluate_model(model, env.task, items, out_path, env.eval_params, label=label,
                              key=eval_key(env, model_dir))
        record = runtime_record(model)
    finally:
        model.close()
    return [bool(r["correct"]) for r in rows], record


def _metrics(env: LoopEnv, model_dir: Path, out_dir: Path, label: str) -> dict[str, Any]:
    from arte_edge.stats import accuracy_summary

    flags, record = evaluate_dir(env, model_dir, env.eval_items, out_dir / "eval.jsonl", label)
    summary = accuracy_summary(flags)
    val, _ = evaluate_dir(env, model_dir, env.val_items, out_dir / "validation.jsonl", f"{label} (validation)")
    return {"accuracy": summary["accuracy"], "ci_low": summary["ci_low"], "ci_high": summary["ci_high"],
            "n": summary["n_eval"], "val_accuracy": (sum(val) / len(val)) if val else None,
            "n_val": len(val), "eval_file": _rel(env, out_dir / "eval.jsonl"), "eval_key": eval_key(env, model_dir),
            "scored_with": record}


def base_point(env: LoopEnv) -> dict[str, Any]:
    """Round 0, shared by every strategy: the untrained student, no teacher call."""
    row = env.curve().get(("base", 0))
    if row:
        return fresh_metrics(env, row, env.elad_dir / "base", "base student")
    row = {"strategy": "base", "round": 0, "teacher_calls": 0, "teacher_prompt_tokens": 0,
           "teacher_completion_tokens": 0, "n_train": 0, "model_dir": str(env.base_dir),
           **_metrics(env, env.base_dir, env.elad_dir / "base", "base student")}
    env.append_curve(row)
    return row


def stop_value(env: LoopEnv, row: dict[str, Any]) -> float | None:
    """The accuracy the stopping rule watches for one curve point (None: rule off)."""
    if env.cfg.stop_metric == "none":
        return None
    if env.cfg.stop_metric == "validation":
        if row.get("val_accuracy") is None:
            raise ArteError("elad.stop_metric: 'validation' but this curve point has no validation accuracy "
                            "(splits.preference is 0); set splits.preference or elad.stop_metric: none")
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
        """Teacher calls and tokens of every record so far (accepted and rejected alike)."""
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
            if row is not None:
                row = fresh_metrics(env, row, self.dir / f"round-{r}", f"{self.strategy.name} round {r}")
            else:
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
        metrics = ({k: prev.get(k) for k in ("accuracy", "ci_low", "ci_high", "n", "val_accuracy", "n_val", "eval_file",
                                             "eval_key", "scored_with")}
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
