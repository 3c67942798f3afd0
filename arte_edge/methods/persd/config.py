"""Recipe section `persd:` (used when `method: persd`). Owned by the persd method; defaults follow the paper.

PERsD (Chen et al., EMNLP 2023, arXiv 2310.18628): the student attempts each train-pool task (T=0.3); tasks it
already solves are dropped; the teacher refines the student's failing code given the test error; only refinements
that pass the tests become training data. Evaluation is held out on HumanEval (pass@1, greedy and from n samples
at T=0.2), with and without multi-step inference (the student repairs its own code from the visible tests' error).
The teacher's temperature and max_tokens come from `generate:` (temperature, max_tokens, batch_size); the teacher
budget is `persd.teacher_budget` (generate.n_examples / max_attempts are not used by this method).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from arte_edge.config import Section
from arte_edge.formats import check_gguf_type

VARIANT_NAMES = ("persd-refine", "persd-combined", "stand", "inpd", "stand-full")
DEFAULT_VARIANTS = ("persd-refine", "persd-combined", "stand", "inpd")
Variant = Literal["persd-refine", "persd-combined", "stand", "inpd", "stand-full"]


class PersdConfig(Section):
    """Settings of the persd method: student attempts, teacher refinement, budget, held-out evaluation."""

    pool_extra_tasks: list[str] = Field(
        default_factory=list, description="More tasks (built-in names or user task YAML/JSONL paths) whose items "
        "are all added after recipe.task's train_pool split; must be the same kind (code: with unit tests).")
    student_temperature: float = Field(0.3, ge=0.0, le=2.0, description="Student attempt temperature (paper: 0.3).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling for student attempts and n samples.")
    student_max_tokens: int = Field(384, ge=16, description="Max new tokens per student attempt.")
    test_timeout_s: float = Field(5.0, gt=0.0, le=60.0, description="Sandbox wall clock per unit test "
                                  "(paper: 3-5 s).")
    refine_mode: Literal["code", "nl"] = Field(
        "code", description="code: the teacher writes the fixed code; nl: it first writes natural-language "
        "feedback on the mistakes, then the fixed code (the paper's feedback prompt; persd-refine learns both).")
    error_max_chars: int = Field(300, ge=40, le=4000, description="Bound on the execution error shown to the "
                                 "teacher and to the student (per failing test).")
    error_tests: int = Field(1, ge=1, le=10, description="How many failing tests' errors go into the prompt.")
    variants: list[Variant] = Field(
        default_factory=lambda: list(DEFAULT_VARIANTS), description="Datasets written beside the main PERsD one "
        "(data/variants/<name>/): persd-refine (task+attempt+error → fix), persd-combined (the refine examples + "
        "the teacher's from-scratch solution of each refined task, as the authors' scripts build it), stand "
        "(teacher solves the first B pool tasks: equal budget), inpd (teacher solves the student's failed tasks), "
        "stand-full (teacher solves every pool task: standard distillation on the whole set, not at equal cost).")
    teacher_budget: int | None = Field(
        None, ge=1, description="Teacher calls each equal-budget arm may spend. None: as many as the student "
        "failures found in the pool; StanD then gets the first that many pool tasks (stand-full: all of them).")
    multi_step_rounds: int = Field(2, ge=0, le=5, description="Self-repair rounds at evaluation: run the code on "
                                   "the visible tests, on failure prompt again with the error (paper: 2).")
    eval_task: str = Field("humaneval", description="Held-out code task for pass@1 (built-in or user task).")
    eval_limit: int | None = Field(None, ge=1, description="Only the first N items of eval_task (None: all).")
    eval_max_tokens: int = Field(384, ge=16, description="Max new tokens per evaluation answer.")
    pass_k_samples: int = Field(20, ge=0, description="n samples per item for unbiased pass@1 (paper: 20; "
                                "0 skips sampling).")
    sample_temperature: float = Field(0.2, gt=0.0, le=2.0, description="Temperature of the n samples (paper: 0.2).")
    eval_batch_size: int = Field(8, ge=1, description="Conversations per chat_batch call at evaluation.")
    eval_variants: bool = Field(True, description="Also evaluate each variant's merged student (after the "
                                "variants stage) on eval_task.")
    eval_quant: str | None = Field(
        None, description="Score the base student, the PERsD student and each variant as a GGUF of this type "
        "(e.g. q8_0) in llama.cpp, the runtime that ships; on a 2-core CPU ~3x faster than fp32 torch. The merged "
        "student reuses the export stage's file of that type; the others are exported and verified once into "
        "eval/persd/models/. None: those three in fp32 (torch). Other exported artifacts: their own runtime.")

    _known_gguf_type = field_validator("eval_quant")(check_gguf_type)

    @field_validator("variants")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        """Each variant name at most once."""
        if len(set(value)) != len(value):
            raise ValueError("variants: each name at most once")
        return value
