"""ARTE step 1: the preference set D_pref.

The scorer models answer the ``splits.preference`` questions with 0–3 seed shots (the student as the one artifact
that also scores ŝ_r, :func:`~arte_edge.methods.arte.students.student_artifact`); a 2PL IRT model
(discrimination α, difficulty β per question, ability θ per (model, shots) respondent) is fitted by maximum a
posteriori with scipy, and the ``arte.preference_size`` most discriminating questions are kept
(``preference_selection: random``: a seeded sample instead). Cached in ``align/dpref.json``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.errors import ArteError
from arte_edge.methods.arte import students
from arte_edge.methods.arte.files import StepTimer, durable_map
from arte_edge.methods.arte.prompts import demo_answer, shot_prefix
from arte_edge.progress import log
from arte_edge.runctx import RunContext
from arte_edge.rundir import atomic_write_json, stable_id
from arte_edge.tasks.base import Item, Task

if TYPE_CHECKING:
    import numpy as np

    from arte_edge.methods.arte.scorer import DemoScorer


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


def collect_irt_responses(task: Task, candidates: Sequence[Item], seeds: Sequence[Item],
                          scorers: dict[str, Callable[[], DemoScorer]], shots: Sequence[int],
                          path: Path, keys: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Each scorer model answers every candidate with k seed shots, for k in ``shots``; durable per respondent.

    ``keys`` (name → artifact content key) enter the row ids, so rows answered by another file of the same name
    are not reused.
    """
    keys = keys or {}
    done, out = durable_map(path)

    def row_id(name: str, k: int) -> str:
        return stable_id("irt", name, k, [c.id for c in candidates], *([keys[name]] if name in keys else []))

    for name, open_scorer in scorers.items():
        todo = [k for k in shots if row_id(name, k) not in done]
        if not todo:
            continue
        scorer = open_scorer()
        try:
            for k in todo:
                prefix = shot_prefix(task, [(task.user_prompt(s), demo_answer(task, s)) for s in seeds[:k]])
                texts = scorer.answer(prefix, [task.user_prompt(c) for c in candidates])
                row = {"id": row_id(name, k), "model": name, "shots": k,
                       "correct": {c.id: task.check(c, t).correct for c, t in zip(candidates, texts, strict=True)}}
                out.write_batch([row])
                done[row["id"]] = row
                log(f"align: IRT respondent {name} {k}-shot: {sum(row['correct'].values())}/{len(candidates)}")
        finally:
            scorer.close()
    return [done[row_id(n, k)] for n in scorers for k in shots]


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


def preference_set(ctx: RunContext, timer: StepTimer, student: dict[str, Any]) -> tuple[list[Item], dict[str, Any]]:
    """Step 1, cached in ``align/dpref.json``; ``student`` is the artifact record of
    :func:`~arte_edge.methods.arte.students.student_artifact` (the student's IRT respondent answers as it)."""
    cfg = ctx.method_config
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
                scorers = students.irt_scorers(ctx, student)
                keys = {n: students.artifact_key(student) for n in scorers if students.is_student(ctx, n, student)}
                rows = collect_irt_responses(ctx.task, candidates, seeds, scorers, shots,
                                             ctx.run.path("align", "irt_responses.jsonl"), keys)
                info = select_preference_set(candidates, rows, cfg.preference_size, cfg.irt_prior_sd)
                info["student"] = {"respondents": list(keys), **student}
        atomic_write_json(path, info)
    info = json.loads(path.read_text())
    by_id = {c.id: c for c in candidates}
    return [by_id[i] for i in info["selected"]], info

