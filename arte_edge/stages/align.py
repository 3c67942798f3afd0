"""Stage `align` (method arte): ARTE steps 1–4, from the preference set to the DPO-aligned teacher.

1. D_pref: the scorer models answer the `splits.preference` questions with 0–3 seed shots; a 2PL IRT model
   (discrimination α, difficulty β per question, ability θ per (model, shots) respondent) is fitted by
   maximum a posteriori with scipy, and the ``arte.preference_size`` most discriminating questions are kept.
2. Elicitation: the teacher drafts ``n_drafts`` questions (T=1) from the task description and 3 seeds, then
   writes one rationale per reasoning style, each ending with the task's ``Answer:`` line.
3. Preferences: ŝ_r = fraction of D_pref the student answers correctly (greedy) with (q, r) as the one-shot
   demonstration; ŝ_q = mean ŝ_r of the question's rationales.
4. Pairs and DPO: question level (the drafting prompt; chosen from the top, rejected from the bottom quantile
   of ŝ_q) and rationale level (the plain step-by-step prompt; best vs worst ŝ_r), mixed in one DPO run per
   requested dataset (full / question-only / rationale-only), then merged and exported to GGUF.

Everything lands in ``align/`` as JSONL/JSON; every loop writes through a durable appender keyed by
:func:`stable_id`, so a killed run resumes without losing or repeating work. ``arte-edge align`` runs this
stage alone; the ``generate`` stage of method arte calls :func:`ensure_aligned` itself (the aligned teacher
writes the training data), after which this stage only summarises.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.backends.base import ChatModel, Completion, Message, SamplingParams
from arte_edge.errors import ArteError
from arte_edge.progress import log, progress
from arte_edge.rundir import JsonlAppender, atomic_write_json, read_jsonl, stable_id
from arte_edge.stages.context import StageContext
from arte_edge.tasks.base import Item, Task

if TYPE_CHECKING:
    import numpy as np

    from arte_edge.methods.arte_config import ArteConfig
    from arte_edge.methods.arte_scorer import DemoScorer

ANSWER_FORMAT = " Always finish with a final line 'Answer: <answer>' in the task's answer format."
TEACHER_WINDOW = 8  # teacher conversations per batched call (drafts, rationales, regeneration)
DPO_SETS = {"full": ("question", "rationale"), "question-only": ("question",), "rationale-only": ("rationale",)}


# ==================================================================================================== IRT
def fit_irt_2pl(responses: np.ndarray, prior_sd: float = 1.0) -> dict[str, np.ndarray]:
    """MAP fit of a 2PL IRT model to a 0/1 matrix (respondents × items); NaN marks a missing answer.

    P(correct) = σ(α_i (θ_r − β_i)); priors θ ~ N(0, s²), log α ~ N(0, s²), β ~ N(0, (2s)²) make the
    model identifiable with few respondents. Optimised jointly with L-BFGS-B and an analytic gradient.
    """
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import expit

    y = np.asarray(responses, dtype=float)
    n_resp, n_items = y.shape
    seen = ~np.isnan(y)
    y0 = np.where(seen, y, 0.0)
    sd_b = 2 * prior_sd

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return x[:n_resp], x[n_resp:n_resp + n_items], x[n_resp + n_items:]

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        theta, log_a, beta = unpack(x)
        a = np.exp(log_a)
        z = a[None, :] * (theta[:, None] - beta[None, :])
        p = expit(z)
        ll = np.where(seen, y0 * z - np.logaddexp(0.0, z), 0.0).sum()
        prior = (theta ** 2).sum() / (2 * prior_sd ** 2) + (log_a ** 2).sum() / (2 * prior_sd ** 2) \
            + (beta ** 2).sum() / (2 * sd_b ** 2)
        r = np.where(seen, y0 - p, 0.0)  # d ll / d z
        g_theta = (r * a[None, :]).sum(1) - theta / prior_sd ** 2
        g_loga = (r * (theta[:, None] - beta[None, :])).sum(0) * a - log_a / prior_sd ** 2
        g_beta = -(r * a[None, :]).sum(0) - beta / sd_b ** 2
        return -(ll - prior), -np.concatenate([g_theta, g_loga, g_beta])

    rate = np.clip(np.nanmean(np.where(seen, y, np.nan), axis=0), 0.05, 0.95) if seen.any() else np.full(n_items, .5)
    x0 = np.concatenate([np.zeros(n_resp), np.zeros(n_items), -np.log(rate / (1 - rate))])
    result = minimize(objective, x0, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    theta, log_a, beta = unpack(result.x)
    return {"theta": theta, "alpha": np.exp(log_a), "beta": beta, "converged": np.array(bool(result.success))}


def rank_by_discrimination(responses: np.ndarray, alpha: np.ndarray) -> list[int]:
    """Item indices, most discriminating first; items everyone got right (or wrong) go last.

    A constant column carries no information about α (its MAP estimate is the prior's), so it must not
    outrank an item that actually separates the respondents.
    """
    import numpy as np

    y = np.asarray(responses, dtype=float)
    varied = np.array([len(set(col[~np.isnan(col)].tolist())) > 1 for col in y.T])
    return sorted(range(len(alpha)), key=lambda i: (not varied[i], -float(alpha[i])))


# ============================================================================================ small helpers
class StepTimer:
    """Wall seconds per ARTE step, accumulated across resumes in ``align/timings.json``."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    @contextmanager
    def step(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)
            atomic_write_json(self.path, self.seconds)


def demo_answer(task: Task, item: Item) -> str:
    """The assistant turn of a seed demonstration: its gold rationale (when any) and answer line."""
    return task.target(item.rationale or "", item.answer)


def shot_prefix(task: Task, demos: Sequence[tuple[str, str]]) -> list[Message]:
    """System prompt plus ``demos`` (question, answer) as earlier turns: the shared part of every prompt."""
    messages: list[Message] = [{"role": "system", "content": task.system_prompt}]
    for question, answer in demos:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def _durable_map(path: Path) -> tuple[dict[str, dict[str, Any]], JsonlAppender]:
    return {r["id"]: r for r in read_jsonl(path)}, JsonlAppender(path)


def _chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


# ================================================================================== step 1: D_pref
def collect_irt_responses(task: Task, candidates: Sequence[Item], seeds: Sequence[Item],
                          scorers: dict[str, Callable[[], DemoScorer]], shots: Sequence[int],
                          path: Path) -> list[dict[str, Any]]:
    """Each scorer model answers every candidate with k seed shots, for k in ``shots``; durable per respondent."""
    done, out = _durable_map(path)
    for name, open_scorer in scorers.items():
        todo = [k for k in shots if stable_id("irt", name, k, [c.id for c in candidates]) not in done]
        if not todo:
            continue
        scorer = open_scorer()
        try:
            for k in todo:
                prefix = shot_prefix(task, [(task.user_prompt(s), demo_answer(task, s)) for s in seeds[:k]])
                texts = scorer.answer(prefix, [task.user_prompt(c) for c in candidates])
                row = {"id": stable_id("irt", name, k, [c.id for c in candidates]), "model": name, "shots": k,
                       "correct": {c.id: task.check(c, t).correct for c, t in zip(candidates, texts, strict=True)}}
                out.write_batch([row])
                done[row["id"]] = row
                log(f"align: IRT respondent {name} {k}-shot: {sum(row['correct'].values())}/{len(candidates)}")
        finally:
            scorer.close()
    return [done[stable_id("irt", n, k, [c.id for c in candidates])] for n in scorers for k in shots]


def select_preference_set(candidates: Sequence[Item], rows: Sequence[dict[str, Any]], size: int,
                          prior_sd: float) -> dict[str, Any]:
    """Fit the 2PL model on the respondents' rows and keep the ``size`` most discriminating candidates."""
    import numpy as np

    y = np.array([[float(r["correct"][c.id]) for c in candidates] for r in rows])
    fit = fit_irt_2pl(y, prior_sd)
    order = rank_by_discrimination(y, fit["alpha"])
    keep = [candidates[i].id for i in order[:size]]
    return {"method": "irt", "selected": keep, "n_candidates": len(candidates), "n_respondents": len(rows),
            "respondents": [f"{r['model']}/{r['shots']}-shot" for r in rows],
            "respondent_accuracy": [round(float(v), 4) for v in y.mean(1)],
            "theta": [round(float(v), 4) for v in fit["theta"]], "converged": bool(fit["converged"]),
            "items": [{"id": c.id, "alpha": round(float(fit["alpha"][i]), 4), "beta": round(float(fit["beta"][i]), 4),
                       "p_correct": round(float(y[:, i].mean()), 4), "selected": c.id in keep}
                      for i, c in enumerate(candidates)]}


def random_preference_set(candidates: Sequence[Item], size: int, seed: int) -> dict[str, Any]:
    """The fallback: a seeded random sample of the candidates."""
    chosen = random.Random(f"dpref/{seed}").sample([c.id for c in candidates], k=min(size, len(candidates)))
    return {"method": "random", "selected": chosen, "n_candidates": len(candidates)}


# ============================================================================ step 2: elicitation
def draft_prompt(task: Task, seeds: Sequence[Item]) -> list[Message]:
    """The question-generation prompt: task description and (up to) 3 seeds in a fixed order.

    Fixed, so that the DPO question pairs are trained on exactly the prompt that produced the drafts and that
    the aligned teacher is later asked with.
    """
    from arte_edge.methods.standard import draft_messages

    return draft_messages(task, seeds, random.Random(0))


def rationale_prompt(task: Task, question: str, cfg: ArteConfig) -> list[Message]:
    """The plain rationale prompt (DPO rationale pairs and regeneration): the question + "Let's think step by step"."""
    return [{"role": "system", "content": task.system_prompt},
            {"role": "user", "content": f"{task.user_prompt(Item(id='', question=question, answer=''))}\n\n"
                                        f"{cfg.rationale_prompt}"}]


def styled_prompt(task: Task, question: str, style: str) -> list[Message]:
    """A rationale prompt in one reasoning style (elicitation)."""
    return [{"role": "system", "content": f"{style} {task.system_prompt}{ANSWER_FORMAT}"},
            {"role": "user", "content": task.user_prompt(Item(id="", question=question, answer=""))}]


def cost_of(*completions: Completion) -> dict[str, int]:
    """Teacher calls and tokens of ``completions``."""
    return {"teacher_calls": len(completions), "prompt_tokens": sum(c.prompt_tokens for c in completions),
            "completion_tokens": sum(c.completion_tokens for c in completions)}


def elicit_drafts(teacher: ChatModel, task: Task, seeds: Sequence[Item], cfg: ArteConfig, seed: int,
                  path: Path, tag: str) -> list[dict[str, Any]]:
    """Draft ``cfg.n_drafts`` usable questions (with answer keys); unparseable drafts are kept as rejects.

    Draft i samples with seed ``seed·100003 + i``; drafts are asked for in windows of ``TEACHER_WINDOW`` (one
    batched teacher call each) and attempts stop at 3·m so a weak teacher cannot loop forever.
    """
    from arte_edge.methods.common import chat_seeded
    from arte_edge.methods.standard import read_draft

    done, out = _durable_map(path)
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
                item, why = read_draft(task, c.text, f"{task.name}/arte-{rid}") if c.ok else (None, "")
                rows.append({"id": rid, "index": i, "ok": item is not None, "text": c.text,
                             "question": item.question if item else None, "key": item.answer if item else None,
                             "reason": why if c.ok else f"teacher error: {c.error}", **cost_of(c)})
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
    """One rationale per (draft, style); an answer line that cannot be parsed makes the rationale unusable."""
    done, out = _durable_map(path)
    jobs = [(d, s, style) for d in drafts if d["ok"] for s, style in enumerate(cfg.styles)]
    with progress("align: eliciting rationales", len(jobs)) as advance:
        advance(sum(_rationale_id(d, s, cfg, seed) in done for d, s, _ in jobs))
        for batch in _chunks([j for j in jobs if _rationale_id(j[0], j[1], cfg, seed) not in done],
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
    from arte_edge.methods.common import rationale_of

    answer = task.extract_answer(c.text) if c.ok else None
    return {"id": _rationale_id(draft, style, cfg, seed), "draft_id": draft["id"], "style": style, "text": c.text,
            "ok": answer is not None, "answer": answer, "finish_reason": c.finish_reason,
            "agrees_with_key": answer is not None and
            task.check(Item(id="", question="", answer=draft["key"]), c.text).correct,
            "target": task.target(rationale_of(c.text), answer) if answer is not None else None, **cost_of(c)}


# ============================================================================== step 3: preferences
def score_rationales(scorer: DemoScorer, task: Task, drafts: Sequence[dict[str, Any]],
                     rationales: Sequence[dict[str, Any]], dpref: Sequence[Item], path: Path) -> list[dict[str, Any]]:
    """ŝ_r per usable rationale: mean correctness of the student on D_pref with (q, r) as the one shot."""
    done, out = _durable_map(path)
    question_of = {d["id"]: d["question"] for d in drafts}
    usable = [r for r in rationales if r["ok"]]
    dpref_prompts = [task.user_prompt(i) for i in dpref]
    with progress(f"align: student scores ({scorer.name}, |D_pref|={len(dpref)})", len(usable)) as advance:
        advance(sum(r["id"] in done for r in usable))
        for r in usable:
            if r["id"] in done:
                continue
            prefix = shot_prefix(task, [(question_of[r["draft_id"]], r["target"])])
            texts = scorer.answer(prefix, dpref_prompts)
            flags = [task.check(item, text).correct for item, text in zip(dpref, texts, strict=True)]
            row = {"id": r["id"], "draft_id": r["draft_id"], "style": r["style"], "score": sum(flags) / len(flags),
                   "correct": dict(zip([i.id for i in dpref], flags, strict=True))}
            out.write_batch([row])
            done[r["id"]] = row
            advance(1)
    return [done[r["id"]] for r in usable]


def question_scores(scores: Sequence[dict[str, Any]]) -> dict[str, float]:
    """ŝ_q: the mean ŝ_r of each draft's scored rationales."""
    by_draft: dict[str, list[float]] = {}
    for s in scores:
        by_draft.setdefault(s["draft_id"], []).append(s["score"])
    return {d: sum(v) / len(v) for d, v in by_draft.items()}


# ==================================================================================== step 4: pairs
def question_pairs(drafts: Sequence[dict[str, Any]], q_scores: dict[str, float], n_pairs: int, quantile: float,
                   prompt: list[Message], seed: int) -> list[dict[str, Any]]:
    """Pairs (chosen from the top, rejected from the bottom ``quantile`` by ŝ_q) on the drafting prompt."""
    scored = sorted((d for d in drafts if d["id"] in q_scores), key=lambda d: (-q_scores[d["id"]], d["index"]))
    k = max(1, round(len(scored) * quantile))
    top, bottom = scored[:k], scored[-k:]
    combos = [(a, b) for a in top for b in bottom if q_scores[a["id"]] > q_scores[b["id"]]]
    random.Random(f"qpairs/{seed}").shuffle(combos)
    return [{"id": stable_id("qpair", a["id"], b["id"]), "kind": "question", "prompt": prompt,
             "chosen": [{"role": "assistant", "content": a["text"]}],
             "rejected": [{"role": "assistant", "content": b["text"]}],
             "chosen_score": q_scores[a["id"]], "rejected_score": q_scores[b["id"]]} for a, b in combos[:n_pairs]]


def rationale_pairs(task: Task, drafts: Sequence[dict[str, Any]], rationales: Sequence[dict[str, Any]],
                    scores: Sequence[dict[str, Any]], n_pairs: int, cfg: ArteConfig) -> list[dict[str, Any]]:
    """Per draft: best-ŝ_r rationale vs worst (only when they differ), on the plain step-by-step prompt.

    When there are more candidates than ``n_pairs``, the drafts with the largest score gap are kept.
    """
    score_of = {s["id"]: s["score"] for s in scores}
    by_draft: dict[str, list[dict[str, Any]]] = {}
    for r in rationales:
        if r["id"] in score_of:
            by_draft.setdefault(r["draft_id"], []).append(r)
    pairs = []
    for d in drafts:
        rs = sorted(by_draft.get(d["id"], []), key=lambda r: (-score_of[r["id"]], r["style"]))
        if len(rs) < 2 or score_of[rs[0]["id"]] <= score_of[rs[-1]["id"]]:
            continue
        best, worst = rs[0], rs[-1]
        pairs.append({"id": stable_id("rpair", best["id"], worst["id"]), "kind": "rationale",
                      "prompt": rationale_prompt(task, d["question"], cfg),
                      "chosen": [{"role": "assistant", "content": best["target"]}],
                      "rejected": [{"role": "assistant", "content": worst["target"]}],
                      "chosen_score": score_of[best["id"]], "rejected_score": score_of[worst["id"]]})
    pairs.sort(key=lambda p: -(p["chosen_score"] - p["rejected_score"]))
    return pairs[:n_pairs]


# ======================================================================================= step 4: DPO
def dpo_warmup_steps(cfg: ArteConfig, n_pairs: int) -> int:
    """Warm-up optimizer steps of the DPO run (the ratio of its steps, rounded down: see train.warmup_steps)."""
    from arte_edge.stages.train import warmup_steps

    micro, accum = dpo_batches(cfg)
    return warmup_steps(n_pairs, micro, accum, cfg.dpo_epochs, cfg.dpo_warmup_ratio)


def dpo_batches(cfg: ArteConfig) -> tuple[int, int]:
    """(pairs per forward pass, accumulation steps) that make one optimizer step of ``dpo_batch_size`` pairs."""
    micro = min(cfg.dpo_micro_batch, cfg.dpo_batch_size)
    return micro, max(1, cfg.dpo_batch_size // micro)


def dpo_config(cfg: ArteConfig, output_dir: Path, seed: int, n_pairs: int):
    """TRL DPOConfig with the paper's schedule (warm-up then cosine), CPU-safe precision."""
    import torch
    from trl import DPOConfig

    cuda = torch.cuda.is_available()
    micro, accum = dpo_batches(cfg)
    return DPOConfig(
        output_dir=str(output_dir), learning_rate=cfg.dpo_lr, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, num_train_epochs=cfg.dpo_epochs,
        lr_scheduler_type="cosine", warmup_steps=dpo_warmup_steps(cfg, n_pairs), beta=cfg.dpo_beta,
        loss_type=["sigmoid"],
        max_length=cfg.dpo_max_length, bf16=cuda and torch.cuda.is_bf16_supported(), fp16=False,
        activation_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], seed=seed,
        use_cpu=not cuda, disable_tqdm=True, dataloader_num_workers=0)


def train_dpo(base_dir: Path, pairs: Sequence[dict[str, Any]], out_dir: Path, cfg: ArteConfig,
              seed: int) -> dict[str, Any]:
    """DPO on ``pairs`` (conversational prompt/chosen/rejected); saves the adapter (or full model) + metrics."""
    import shutil

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    if not pairs:
        raise ArteError("align: no DPO pairs (every rationale scored the same); raise arte.n_drafts or "
                        "splits.preference, or use arte.alignment: select")
    torch.set_num_threads(cfg.dpo_threads)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                              for p in pairs])
    peft = None if cfg.dpo_mode == "full" else LoraConfig(
        r=cfg.dpo_lora_r, lora_alpha=cfg.dpo_lora_alpha, lora_dropout=0.0, target_modules="all-linear",
        task_type="CAUSAL_LM")
    work = out_dir.with_name(out_dir.name + ".work")
    trainer = DPOTrainer(model=model, args=dpo_config(cfg, work, seed, len(pairs)), train_dataset=data,
                         processing_class=tokenizer, peft_config=peft)
    result = trainer.train()
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    shutil.rmtree(work, ignore_errors=True)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {"steps": trainer.state.global_step, "n_pairs": len(pairs), "mode": cfg.dpo_mode,
               "train_loss": round(result.training_loss, 5), "runtime_s": round(result.metrics["train_runtime"], 1),
               "log": logs}
    for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
        values = [h[key] for h in logs if key in h]
        if values:
            metrics[key.replace("/", "_") + "_last"] = round(values[-1], 5)
            metrics[key.replace("/", "_") + "_mean"] = round(sum(values) / len(values), 5)
    atomic_write_json(out_dir.parent / "metrics.json", metrics)
    return metrics


def aligned_teacher_dir(ctx: StageContext, name: str) -> Path:
    """``align/teachers/<name>/``: adapter, merged model, GGUF and metrics of one aligned teacher."""
    return ctx.run.path("align", "teachers", name, ".keep").parent


def build_aligned_teacher(ctx: StageContext, name: str, pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """DPO on ``pairs``, merge (LoRA), and export to GGUF for llama.cpp teachers; resumable per step."""
    from arte_edge import models
    from arte_edge.stages.merge import merge_adapter

    cfg, recipe = ctx.recipe.arte, ctx.recipe
    base = models.hf_folder(recipe.teacher.model)
    work = aligned_teacher_dir(ctx, name)
    adapter, merged = work / "adapter", work / "merged"
    if not (work / "metrics.json").exists():
        train_dpo(base, pairs, adapter, cfg, recipe.seed)
    if not (merged / "config.json").exists():
        if cfg.dpo_mode == "lora":
            merge_adapter(base, adapter, merged, cfg.dpo_threads)
        else:
            import shutil

            shutil.copytree(adapter, merged)
    out: dict[str, Any] = {"merged": str(merged), "metrics": json.loads((work / "metrics.json").read_text())}
    if recipe.teacher.backend == "llama_cpp":
        out["gguf"] = str(export_teacher(merged, work, cfg))
    return out


def export_teacher(merged: Path, work: Path, cfg: ArteConfig) -> Path:
    """The aligned teacher as a verified GGUF (fast generation through llama.cpp)."""
    from arte_edge.export.gguf import artifact_name, export_gguf, normalize_qtype

    final = work / artifact_name("teacher", normalize_qtype(cfg.teacher_quant))
    if not final.exists():
        export_gguf(merged, work, [cfg.teacher_quant], "teacher", progress=log, verify=cfg.verify_export,
                    threads=cfg.dpo_threads)
    return final


# ==================================================================================== orchestration
def check_alignment_possible(ctx: StageContext) -> None:
    """DPO needs the teacher's weights: refuse an API-only teacher up front with the fix."""
    if ctx.recipe.arte.alignment == "dpo" and ctx.recipe.teacher.backend == "openai":
        raise ArteError("arte.alignment: 'dpo' needs local teacher weights but teacher.backend is openai; "
                        "set arte.alignment: select (keep the student-preferred drafts and rationales) or use a "
                        "llama_cpp/transformers teacher")


def student_scorer(ctx: StageContext) -> tuple[DemoScorer, dict[str, Any]]:
    """The student that answers D_pref, and a record of which artifact it is."""
    from arte_edge import models
    from arte_edge.stages.evaluate import eval_params

    cfg, spec = ctx.recipe.arte, ctx.recipe.student
    params = eval_params(ctx.task, cfg.student_max_tokens)
    if cfg.preference_student == "fp32":
        from arte_edge.backends.hf import HFChat
        from arte_edge.methods.arte_scorer import ChatModelScorer

        folder = models.hf_folder(spec.model)
        return (ChatModelScorer(HFChat(folder, threads=spec.threads, name="student-fp32"), params),
                {"kind": "fp32", "path": str(folder)})
    if cfg.student_gguf:
        path = Path(cfg.student_gguf)
    elif cfg.student_quant:
        path = student_in_quant(ctx, cfg.student_quant)
    else:
        path = models.gguf_path(spec.model)
    return gguf_scorer(path, ctx, params), {"kind": "gguf", "path": str(path), "sha256": models.sha256_of(path)}


def student_in_quant(ctx: StageContext, qtype: str) -> Path:
    """The student exported from its HF folder to GGUF ``qtype`` (verified), cached in ``align/student/``."""
    from arte_edge import models
    from arte_edge.export.gguf import cached_gguf

    return cached_gguf(models.hf_folder(ctx.recipe.student.model), ctx.run.path("align", "student", ".keep").parent,
                       qtype, "student", log, verify=ctx.recipe.arte.verify_export, threads=ctx.recipe.student.threads)


def gguf_scorer(path: Path, ctx: StageContext, params: SamplingParams) -> DemoScorer:
    """A prefix-reuse llama.cpp scorer for ``path`` with the recipe's settings."""
    from arte_edge.methods.arte_scorer import PrefixReuseScorer

    return PrefixReuseScorer(path, threads=ctx.recipe.student.threads, batch=ctx.recipe.arte.score_batch,
                             max_tokens=params.max_tokens, stop_regex=params.stop_regex)


def irt_scorers(ctx: StageContext) -> dict[str, Callable[[], DemoScorer]]:
    """``{name: opener}`` of the IRT respondent models (default: the student and a local teacher)."""
    from arte_edge import models
    from arte_edge.stages.evaluate import eval_params

    names = ctx.recipe.arte.irt_scorers
    if names is None:
        names = [ctx.recipe.student.model] + ([ctx.recipe.teacher.model] if ctx.recipe.teacher.backend != "openai"
                                              else [])
    params = eval_params(ctx.task, ctx.recipe.arte.student_max_tokens)
    return {n: (lambda n=n: gguf_scorer(models.gguf_path(n), ctx, params)) for n in dict.fromkeys(names)}


def preference_set(ctx: StageContext, timer: StepTimer) -> tuple[list[Item], dict[str, Any]]:
    """Step 1, cached in ``align/dpref.json``."""
    cfg = ctx.recipe.arte
    path = ctx.run.path("align", "dpref.json")
    candidates, seeds = ctx.split("preference"), ctx.split("seeds")
    if not candidates:
        raise ArteError("splits.preference: is 0; ARTE needs labelled questions for D_pref "
                        f"(e.g. splits.preference: {2 * cfg.preference_size})")
    if not path.exists():
        with timer.step("1_dpref"):
            if cfg.preference_selection == "random" or len(candidates) <= cfg.preference_size:
                info = random_preference_set(candidates, cfg.preference_size, ctx.recipe.seed)
            else:
                shots = [k for k in cfg.irt_shots if k <= len(seeds)]
                rows = collect_irt_responses(ctx.task, candidates, seeds, irt_scorers(ctx), shots,
                                             ctx.run.path("align", "irt_responses.jsonl"))
                info = select_preference_set(candidates, rows, cfg.preference_size, cfg.irt_prior_sd)
        atomic_write_json(path, info)
    info = json.loads(path.read_text())
    by_id = {c.id: c for c in candidates}
    return [by_id[i] for i in info["selected"]], info


def ensure_aligned(ctx: StageContext, teacher: ChatModel | None = None) -> dict[str, Any]:
    """Steps 1–4 (idempotent): D_pref, elicitation, scores, pairs, and one aligned teacher per needed dataset.

    ``teacher`` (the original one) may be passed in to share a loaded model with regeneration.
    Returns the summary written to ``align/summary.json``.
    """
    from arte_edge.backends import open_chat_model
    from arte_edge.methods.arte_fingerprint import retire_stale_steps

    check_alignment_possible(ctx)
    cfg, recipe = ctx.recipe.arte, ctx.recipe
    if moved := retire_stale_steps(ctx.run.root / "align", recipe):
        log(f"align: the recipe changed; moved {', '.join(moved)} to {ctx.run.root / 'align' / 'stale'}, "
            "redoing them")
    timer = StepTimer(ctx.run.path("align", "timings.json"))
    dpref, dpref_info = preference_set(ctx, timer)
    own = teacher is None
    teacher = teacher or open_chat_model(recipe.teacher, seed=recipe.seed)
    try:
        with timer.step("2_elicit"):
            seeds = ctx.split("seeds")
            drafts = elicit_drafts(teacher, ctx.task, seeds, cfg, recipe.seed, ctx.run.path("align", "drafts.jsonl"),
                                   "elicit")
            usable = [d for d in drafts if d["ok"]]
            rationales = elicit_rationales(teacher, ctx.task, usable, cfg, recipe.seed,
                                           ctx.run.path("align", "rationales.jsonl"))
    finally:
        if own:
            teacher.close()
    if not usable:
        raise ArteError(f"align: the teacher wrote no parseable question draft ({len(drafts)} tried, "
                        f"see {ctx.run.path('align', 'drafts.jsonl')}); use a stronger teacher")
    scores_path = ctx.run.path("align", "scores.jsonl")
    student_info = json.loads(p.read_text()) if (p := ctx.run.path("align", "student.json")).exists() else None
    with timer.step("3_preferences"):
        if student_info is None or len(read_jsonl(scores_path)) < sum(r["ok"] for r in rationales):
            scorer, student_info = student_scorer(ctx)
            atomic_write_json(ctx.run.path("align", "student.json"), student_info)
            try:
                scores = score_rationales(scorer, ctx.task, usable, rationales, dpref, scores_path)
            finally:
                scorer.close()
        scores = read_jsonl(scores_path)
    q_scores = question_scores(scores)
    qp = question_pairs(usable, q_scores, cfg.question_pairs, cfg.quantile, draft_prompt(ctx.task, seeds), recipe.seed)
    rp = rationale_pairs(ctx.task, usable, rationales, scores, cfg.rationale_pairs, cfg)
    _write_jsonl(ctx.run.path("align", "pairs.jsonl"), qp + rp)
    teachers: dict[str, Any] = {}
    if cfg.alignment == "dpo":
        for name in needed_teachers(cfg):
            with timer.step(f"4_dpo_{name}"):
                chosen = [p for p in qp + rp if p["kind"] in DPO_SETS[name]]
                teachers[name] = build_aligned_teacher(ctx, name, chosen)
    summary = {
        "alignment": cfg.alignment, "dpref": {k: v for k, v in dpref_info.items() if k != "items"},
        "student": student_info, "n_drafts_tried": len(drafts), "n_drafts_usable": len(usable),
        "n_drafts_unparseable": len(drafts) - len(usable), "n_rationales": len(rationales),
        "n_rationales_unparseable": sum(not r["ok"] for r in rationales),
        "n_rationales_cut": sum(not r["ok"] and r.get("finish_reason") == "length" for r in rationales),
        "n_rationales_agreeing_with_key": sum(r["agrees_with_key"] for r in rationales),
        "mean_rationale_score": round(sum(s["score"] for s in scores) / max(1, len(scores)), 4),
        "question_score_range": [min(q_scores.values(), default=0), max(q_scores.values(), default=0)],
        "n_question_pairs": len(qp), "n_rationale_pairs": len(rp),
        "teacher_calls": sum(d["teacher_calls"] for d in drafts) + sum(r["teacher_calls"] for r in rationales),
        "teacher_prompt_tokens": sum(d["prompt_tokens"] for d in drafts) + sum(r["prompt_tokens"] for r in rationales),
        "teacher_completion_tokens": sum(d["completion_tokens"] for d in drafts)
        + sum(r["completion_tokens"] for r in rationales),
        "teachers": {n: {k: v for k, v in t.items() if k != "metrics"} | {"dpo": _short_metrics(t["metrics"])}
                     for n, t in teachers.items()},
        "seconds": timer.seconds,
    }
    atomic_write_json(ctx.run.path("align", "summary.json"), summary)
    return summary


def needed_teachers(cfg: ArteConfig) -> list[str]:
    """The aligned teachers the requested datasets need (the unaligned one needs none)."""
    wanted = [cfg.ablation, *cfg.variants]
    return [n for n in DPO_SETS if n in wanted]


def _short_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "log"}


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    from arte_edge.rundir import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ========================================================================================= the report
def write_report_section(ctx: StageContext, summary: dict[str, Any], datasets: dict[str, Any] | None = None) -> None:
    """``report/sections/arte.md`` and ``arte.json``: D_pref, counts, DPO metrics, student, wall times."""
    timings = ctx.run.path("align", "timings.json")
    if timings.exists():  # every step's time, regeneration included (steps 1-4 alone when only `align` ran)
        summary = {**summary, "seconds": json.loads(timings.read_text())}
    data = {"align": summary, "datasets": datasets or {}}
    atomic_write_json(ctx.run.path("report", "sections", "arte.json"), data)
    d = summary["dpref"]
    lines = ["## ARTE: aligning the teacher with the student's preferences", "",
             f"- D_pref: {len(d['selected'])} of {d['n_candidates']} preference questions, selected by "
             f"**{d['method']}**" + (f" (2PL IRT over {d['n_respondents']} respondents: "
                                     f"{', '.join(d['respondents'])})" if d["method"] == "irt" else "") + ".",
             f"- Student answering D_pref: **{summary['student']['kind']}** `{summary['student']['path']}`.",
             f"- Drafts: {summary['n_drafts_usable']} usable of {summary['n_drafts_tried']} "
             f"({summary['n_drafts_unparseable']} unusable: no key, no question or no choices; dropped); "
             f"rationales: {summary['n_rationales']} "
             f"({summary['n_rationales_unparseable']} without a parseable answer, dropped, "
             f"{summary.get('n_rationales_cut', 0)} of them cut at arte.max_tokens; "
             f"{summary['n_rationales_agreeing_with_key']} agree with the drafted key).",
             f"- Mean ŝ_r {summary['mean_rationale_score']:.3f}; ŝ_q range {summary['question_score_range']}.",
             f"- Pairs: {summary['n_question_pairs']} question-level, {summary['n_rationale_pairs']} rationale-level; "
             f"alignment: **{summary['alignment']}**.", ""]
    if summary["teachers"]:
        lines += ["| aligned teacher | pairs | steps | loss | reward margin (last) | reward accuracy (last) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, t in summary["teachers"].items():
            m = t["dpo"]
            lines.append(f"| {name} | {m['n_pairs']} | {m['steps']} | {m['train_loss']} | "
                         f"{m.get('rewards_margins_last', '–')} | {m.get('rewards_accuracies_last', '–')} |")
        lines.append("")
    if datasets:
        lines += ["| dataset | examples (after the cut) | checked examples | drafts tried | teacher calls |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {n} | {v['n_examples']} | {v.get('n_checked', '–')} | {v.get('attempts', '–')} | "
                  f"{v['teacher_calls']} |" for n, v in datasets.items()]
        lines += ["", "`unaligned` is standard distillation: the same teacher, drafting prompt, seeds and checks, "
                  "without DPO; its teacher calls exclude elicitation. Every dataset is cut to the same size.", ""]
    lines += ["| step | seconds |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in summary["seconds"].items()]
    from arte_edge.rundir import atomic_write_text

    atomic_write_text(ctx.run.path("report", "sections", "arte.md"), "\n".join(lines) + "\n")


def run(ctx: StageContext) -> dict[str, Any]:
    """Steps 1–4 of ARTE (a no-op apart from the summary when `generate` already ran them)."""
    if ctx.recipe.method != "arte":
        raise ArteError(f"align: only method arte aligns a teacher (recipe method is {ctx.recipe.method})")
    summary = ensure_aligned(ctx)
    sections = ctx.run.root / "report" / "sections" / "arte.json"
    datasets = json.loads(sections.read_text()).get("datasets") if sections.exists() else None
    write_report_section(ctx, summary, datasets)
    return {"summary": "align/summary.json", "n_question_pairs": summary["n_question_pairs"],
            "n_rationale_pairs": summary["n_rationale_pairs"], "alignment": summary["alignment"],
            "student": summary["student"]["kind"] if summary["student"] else None}
