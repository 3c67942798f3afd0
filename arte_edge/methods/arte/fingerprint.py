"""Which of ARTE's intermediate files in ``align/`` are still valid for the current recipe.

Rows in ``align/`` are keyed by content ids, but a step's output also depends on settings its ids do not carry
(the teacher, token limits, the student artifact that answers, the DPO settings). Each step's settings are recorded in
``align/fingerprints.json``. When a recipe is changed and rerun with ``--from``, the first step whose settings
differ and every later step are moved to ``align/stale/<time>/`` (kept for inspection, never reused) and
recomputed; the steps before it are reused.

The student artifact enters by content (its sha256, or each file's size and mtime for an fp32 folder): into step 1
when D_pref is picked by IRT (the student is a respondent) and into step 3 always, so results answered by one
student file are never reused for another. ``align/student/`` (the student exported to ``arte.student_quant``) is
not a step's output but a cache keyed by its source (:func:`~arte_edge.export.gguf.cached_gguf`), never retired.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.methods.arte.config import dpo_settings
from arte_edge.rundir import atomic_write_json

if TYPE_CHECKING:
    from arte_edge.config import Recipe

STEP_FILES: dict[str, tuple[str, ...]] = {
    "1_dpref": ("dpref.json", "irt_responses.jsonl"),
    "2_elicit": ("drafts.jsonl", "rationales.jsonl"),
    "3_preferences": ("student.json", "scores.jsonl", "summary.json"),
    "4_dpo": ("pairs.jsonl", "teachers"),
    "5_regenerate": ("datasets",),
}


def step_settings(recipe: Recipe, student: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The recipe settings each ARTE step's output depends on (JSON-ready).

    The DPO run is recorded with its resolved settings (``arte.dpo`` plus what it takes from ``train``) under
    the ``dpo_<key>`` names earlier versions used, so their ``align/`` directories stay valid. ``student`` is the
    student artifact's :func:`~arte_edge.methods.arte.students.identity` (None: not known, e.g. in tests).
    """
    a = recipe.method_config
    dpo = {f"dpo_{k}": v for k, v in dataclasses.asdict(dpo_settings(a.dpo, recipe.train)).items()}

    def pick(*names: str) -> dict[str, Any]:
        return a.model_dump(mode="json", include=set(names))

    artifact = pick("preference_student", "student_gguf", "student_quant") | (
        {"student_artifact": student} if student is not None else {})
    irt = a.preference_selection == "irt" and recipe.splits.preference > a.preference_size
    settings = {
        "1_dpref": {"task": recipe.task, "seed": recipe.seed, "splits": recipe.splits.model_dump(mode="json"),
                    "student": recipe.student.model, "teacher": recipe.teacher.model,
                    **pick("preference_size", "preference_selection", "irt_scorers", "irt_shots", "irt_prior_sd",
                           "student_max_tokens"), **(artifact if irt else {})},
        "2_elicit": {"teacher": recipe.teacher.model,
                     **pick("n_drafts", "styles", "question_temperature", "elicit_temperature", "max_tokens")},
        # every rationale the teacher wrote is scored (cut ones too); earlier runs' missing scores are added
        "3_preferences": {"student": recipe.student.model, **artifact, **pick("student_max_tokens")},
        "4_dpo": {**dpo, **pick("alignment", "question_pairs", "rationale_pairs", "quantile", "rationale_prompt",
                                "teacher_quant", "verify_export", "min_score_gap")},
        # the unaligned teacher is exported like the aligned ones (runs made before that regenerate its data)
        "5_regenerate": {"max_tokens": recipe.generate.max_tokens, "unaligned_teacher": "fp32 export",
                         **pick("teacher_quant")},
    }
    return json.loads(json.dumps(settings))


def retire_stale_steps(align_dir: Path, recipe: Recipe, student: dict[str, Any] | None = None) -> list[str]:
    """Move the files of every step from the first changed one on to ``align/stale/<time>/``; returns the
    moved names. A directory without fingerprints (made before they existed) adopts the current ones.
    ``student``: the student artifact's identity (see :func:`step_settings`)."""
    path = align_dir / "fingerprints.json"
    current = step_settings(recipe, student)
    saved = json.loads(path.read_text()) if path.exists() else None
    moved: list[str] = []
    steps = list(STEP_FILES)
    first = next((i for i, step in enumerate(steps) if saved is not None and saved.get(step) != current[step]), None)
    if first is not None:
        stale = align_dir / "stale" / time.strftime("%Y%m%d-%H%M%S")
        for step in steps[first:]:
            for name in STEP_FILES[step]:
                if (align_dir / name).exists():
                    stale.mkdir(parents=True, exist_ok=True)
                    (align_dir / name).rename(stale / name)
                    moved.append(name)
        _forget_timings(align_dir / "timings.json", steps[first:])
    align_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, current)
    return moved


def _forget_timings(path: Path, steps: list[str]) -> None:
    if path.exists():
        timings = json.loads(path.read_text())
        prefixes = tuple(step.split("_")[0] + "_" for step in steps)
        atomic_write_json(path, {k: v for k, v in timings.items() if not k.startswith(prefixes)})
