"""Recipe section `arte:` (used when `method: arte`). Owned by the arte method; defaults follow the paper.

ARTE (arXiv 2406.19227): the teacher drafts questions and rationales, the *student* scores them by how much
each helps it answer a small preference set D_pref as a one-shot demonstration, the teacher is aligned to those
preferences with DPO, and the aligned teacher writes the training data. Every default below is the paper's
value where the paper gives one; recipes scale the counts down for a CPU and say so next to the key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_STYLES: tuple[str, ...] = (
    "You are a patient teacher. Explain the solution step by step, naming each fact you use.",
    "You are a concise expert. Give the shortest correct chain of reasoning that reaches the answer.",
    "You are a tutor who first restates what the question asks, then works it out carefully.",
    "You are a teacher who reasons by checking each option or quantity before committing to an answer.",
)

ABLATIONS = ("full", "question-only", "rationale-only", "unaligned")


class ArteConfig(BaseModel):
    """Settings of the arte method: preference set, elicitation, preference collection, DPO, regeneration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- step 1: preference set D_pref (candidates are the recipe's `splits.preference` items) ---------
    preference_size: int = Field(40, ge=1, description="|D_pref|: questions kept from splits.preference "
                                 "(paper: top 40 by IRT discrimination per task).")
    preference_selection: Literal["irt", "random"] = Field(
        "irt", description="irt: fit a 2PL IRT model on the scorer models' answers and keep the most "
        "discriminating questions; random: a seeded random sample (no scoring cost).")
    irt_scorers: list[str] | None = Field(
        None, description="Models (bundled names or .gguf paths) that answer the candidates for the IRT fit; "
        "each model × shot count is one respondent. Default: the student and the teacher (when local).")
    irt_shots: list[int] = Field([0, 1, 2, 3], description="Shot counts per scorer model (paper: 0-3-shot); "
                                 "demonstrations are the seed items.")
    irt_prior_sd: float = Field(1.0, gt=0, description="Std of the weak Gaussian priors on abilities θ and "
                                "log-discriminations (identifiability); difficulties get 2× this.")
    # -- step 2: knowledge elicitation ----------------------------------------------------------------
    n_drafts: int = Field(250, ge=2, description="m: question drafts the teacher brainstorms (paper: 250 per task).")
    styles: list[str] = Field(list(DEFAULT_STYLES), min_length=2, description="Reasoning-style system prompts; "
                              "one rationale per style per draft, so n = len(styles) (paper: n = 4).")
    question_temperature: float = Field(1.0, ge=0.0, le=2.0, description="Temperature for drafting questions "
                                        "(paper: 1.0), in elicitation and regeneration.")
    elicit_temperature: float = Field(0.0, ge=0.0, le=2.0, description="Temperature of the n styled rationales "
                                      "during elicitation (the styles give the diversity).")
    max_tokens: int = Field(256, ge=16, description="Max new tokens per teacher draft or rationale.")
    # -- step 3: preference collection ----------------------------------------------------------------
    preference_student: Literal["gguf", "fp32"] = Field(
        "gguf", description="Which student answers D_pref: gguf = the quantized file the device runs "
        "(student_gguf, default the student's own GGUF), fp32 = the trainable HF student.")
    student_gguf: str | None = Field(None, description="GGUF that answers D_pref when preference_student is gguf "
                                     "(default: arte_edge.models.gguf_path(student.model)).")
    student_quant: str | None = Field(None, description="Re-quantize the student to this GGUF type (e.g. q8_0, "
                                      "the type the recipe ships) before it answers D_pref: exported from the "
                                      "student's HF folder, verified, kept in align/student/. None: the "
                                      "student's own GGUF as it is. Ignored when student_gguf is set.")
    student_max_tokens: int = Field(160, ge=8, description="Max new tokens per student answer (stops at the "
                                    "answer line).")
    score_batch: int = Field(8, ge=1, description="D_pref questions decoded in parallel per demonstration "
                             "(llama.cpp sequences sharing the cached demonstration prefix).")
    # -- step 4: DPO pairs and training ---------------------------------------------------------------
    alignment: Literal["dpo", "select"] = Field(
        "dpo", description="dpo: align the teacher's weights (needs a local teacher: llama_cpp or "
        "transformers); select: no training, keep the top-scored drafts and rationales (for teachers behind an "
        "API, e.g. backend openai).")
    question_pairs: int = Field(50, ge=0, description="Question-level DPO pairs (paper: 50 per task).")
    rationale_pairs: int = Field(250, ge=0, description="Rationale-level DPO pairs (paper: 250 per task).")
    quantile: float = Field(0.25, gt=0.0, le=0.5, description="Question pairs: chosen from the top, rejected "
                            "from the bottom quantile by question score (paper: 25%).")
    rationale_prompt: str = Field("Let's think step by step.", description="Appended to the question in the "
                                  "plain rationale prompt (DPO prompt and regeneration prompt).")
    dpo_lr: float = Field(1e-7, gt=0, description="DPO learning rate (paper: 1e-7, full fine-tuning; with LoRA "
                          "this barely moves the adapter: recipes may raise it and say so).")
    dpo_batch_size: int = Field(16, ge=1, description="DPO batch size (paper: 16); grad accumulation fills it.")
    dpo_micro_batch: int = Field(2, ge=1, description="Pairs per forward pass (CPU memory); "
                                 "dpo_batch_size / dpo_micro_batch accumulation steps.")
    dpo_epochs: float = Field(1.0, gt=0, description="DPO epochs (paper: 1).")
    dpo_warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Linear warm-up fraction, then cosine "
                                    "(paper: 10%).")
    dpo_beta: float = Field(0.1, gt=0, description="DPO β (not given in the paper; TRL's default).")
    dpo_mode: Literal["lora", "full"] = Field("lora", description="LoRA adapter or full fine-tuning of the teacher "
                                              "(not given in the paper).")
    dpo_lora_r: int = Field(16, ge=1, description="LoRA rank for DPO.")
    dpo_lora_alpha: int = Field(32, ge=1, description="LoRA alpha for DPO.")
    dpo_max_length: int = Field(1024, ge=64, description="Max tokens of prompt + completion in DPO.")
    dpo_threads: int = Field(2, ge=1, description="torch threads for DPO.")
    # -- step 5: regeneration and the datasets written ------------------------------------------------
    teacher_quant: str = Field("q8_0", description="GGUF type the aligned teacher is exported to for fast "
                               "regeneration (llama_cpp teachers).")
    verify_export: bool = Field(True, description="Verify the aligned teacher's GGUF against its merged HF model.")
    ablation: Literal["full", "question-only", "rationale-only", "unaligned"] = Field(
        "full", description="Which dataset is the run's main one (data/examples.jsonl): full ARTE, a one-level "
        "ablation, or the unaligned teacher.")
    variants: list[Literal["full", "question-only", "rationale-only", "unaligned"]] = Field(
        ["unaligned", "question-only", "rationale-only"], description="Comparison datasets written to "
        "data/variants/<name>/ (each with its own aligned teacher); all are cut to the same size as the main one.")

    @field_validator("teacher_quant", "student_quant")
    @classmethod
    def _known_gguf_type(cls, value: str | None) -> str | None:
        from arte_edge.export.gguf import check_gguf_type

        return check_gguf_type(value)
