"""Recipe section `arte:` (used when `method: arte`), and its sub-section `arte.dpo:`; defaults follow the paper.

ARTE (arXiv 2406.19227): the teacher drafts questions and rationales, the *student* scores them by how much
each helps it answer a small preference set D_pref as a one-shot demonstration, the teacher is aligned to those
preferences with DPO, and the aligned teacher writes the training data. Every default below is the paper's
value where the paper gives one; recipes scale the counts down for a CPU and say so next to the key.

DPO settings live under ``arte.dpo`` (``arte.dpo.lr``, ``arte.dpo.epochs``, ...). Those with a counterpart in the
recipe's ``train:`` section (``lora_r``, ``lora_alpha``, ``threads``) default to ``None``: take train's value
(:func:`dpo_settings` resolves them). A recipe still using the flat ``arte.dpo_<key>`` names fails validation with
one line per key naming its new place.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from arte_edge.config import Section, TrainConfig
from arte_edge.formats import check_gguf_type
from arte_edge.training.dpo import DpoSettings

DEFAULT_STYLES: tuple[str, ...] = (
    "You are a patient teacher. Explain the solution step by step, naming each fact you use.",
    "You are a concise expert. Give the shortest correct chain of reasoning that reaches the answer.",
    "You are a tutor who first restates what the question asks, then works it out carefully.",
    "You are a teacher who reasons by checking each option or quantity before committing to an answer.",
)

ABLATIONS = ("full", "question-only", "rationale-only", "unaligned")

# arte.dpo keys that default to the recipe's train section (same name there).
FROM_TRAIN = ("lora_r", "lora_alpha", "threads")


class DpoConfig(Section):
    """Recipe sub-section ``arte.dpo``: the DPO run that aligns the teacher (ARTE step 4)."""

    lr: float = Field(1e-7, gt=0, description="DPO learning rate (paper: 1e-7, full fine-tuning; with LoRA "
                      "this barely moves the adapter: recipes may raise it and say so).")
    batch_size: int = Field(16, ge=1, description="DPO batch size in pairs per optimizer step (paper: 16); "
                            "gradient accumulation fills it.")
    micro_batch: int = Field(2, ge=1, description="Pairs per forward pass (CPU memory); "
                             "batch_size / micro_batch accumulation steps.")
    epochs: float = Field(1.0, gt=0, description="DPO epochs (paper: 1).")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Linear warm-up fraction, then cosine "
                                "(paper: 10%).")
    beta: float = Field(0.1, gt=0, description="DPO β (not given in the paper; TRL's default).")
    mode: Literal["lora", "full"] = Field("lora", description="LoRA adapter or full fine-tuning of the teacher "
                                          "(not given in the paper).")
    lora_r: int | None = Field(None, ge=1, description="LoRA rank for DPO (default: train.lora_r).")
    lora_alpha: int | None = Field(None, ge=1, description="LoRA alpha for DPO (default: train.lora_alpha).")
    max_length: int = Field(1024, ge=64, description="Max tokens of prompt + completion in DPO.")
    threads: int | None = Field(None, ge=1, description="torch threads for DPO, merge and the aligned teacher's "
                                "export (default: train.threads, itself the recipe's threads unless set).")


def dpo_settings(dpo: DpoConfig, train: TrainConfig) -> DpoSettings:
    """The settings of one DPO run: ``arte.dpo``'s values, each unset (None) key of :data:`FROM_TRAIN`
    (``lora_r``, ``lora_alpha``, ``threads``) taken from the recipe's ``train`` section."""
    values = dpo.model_dump()
    for key in FROM_TRAIN:
        if values[key] is None:
            values[key] = getattr(train, key)
    return DpoSettings(**values)


class ArteConfig(Section):
    """Settings of the arte method: preference set, elicitation, preference collection, DPO, regeneration."""

    # -- step 1: preference set D_pref (candidates are the recipe's `splits.preference` items) ---------
    preference_size: int = Field(40, ge=1, description="|D_pref|: questions kept from splits.preference "
                                 "(paper: top 40 by IRT discrimination per task).")
    preference_selection: Literal["irt", "random"] = Field(
        "irt", description="irt: fit a 2PL IRT model on the scorer models' answers and keep the most "
        "discriminating questions; random: a seeded random sample (no scoring cost).")
    irt_scorers: list[str] | None = Field(
        None, description="Models (bundled names or .gguf paths) that answer the candidates for the IRT fit; "
        "each model × shot count is one respondent. Default: the student and the teacher (when local). The student "
        "(its recipe name) answers as the same artifact that scores the rationales (preference_student, "
        "student_gguf, student_quant), so D_pref is picked by the student whose preferences it measures.")
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
        "gguf", description="Which student answers, as the IRT respondent (step 1) and for the rationale scores "
        "(step 3), one artifact for both: gguf = the quantized file the device runs (student_gguf, default the "
        "student's own GGUF), fp32 = the trainable HF student.")
    student_gguf: str | None = Field(None, description="GGUF the student answers as when preference_student is "
                                     "gguf (default: arte_edge.models.gguf_path(student.model)).")
    student_quant: str | None = Field(None, description="Re-quantize the student to this GGUF type (e.g. q8_0, "
                                      "the type the recipe ships) before it answers (IRT and scores): exported "
                                      "from the student's HF folder, verified, kept in align/student/. None: the "
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
    min_score_gap: float = Field(
        0.15, ge=0.0, le=1.0, description="Smallest score difference, as a fraction of the D_pref questions, "
        "between the chosen and the rejected side of a question or rationale pair; closer candidates form no pair "
        "and are counted in the summary. One question's difference is one greedy answer flipping, not a "
        "preference: 0.15 needs 2 questions on a D_pref of 10 (the recipes'), 3 of 20, 6 of the paper's 40. "
        "0: any difference forms a pair (the paper, which sets no minimum).")
    rationale_prompt: str = Field("Let's think step by step.", description="Appended to the question in the "
                                  "plain rationale prompt (DPO prompt and regeneration prompt).")
    dpo: DpoConfig = Field(DpoConfig(), description="The DPO run (arte.dpo.lr, arte.dpo.epochs, ...; see "
                           "DpoConfig); lora_r, lora_alpha and threads default to the train section's.")
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

    _known_gguf_type = field_validator("teacher_quant", "student_quant")(check_gguf_type)

    @model_validator(mode="before")
    @classmethod
    def _renamed_dpo_keys(cls, data: Any) -> Any:
        """Refuse the flat ``dpo_<key>`` names of older recipes: one error per key, naming ``arte.dpo.<key>``."""
        if not isinstance(data, dict):
            return data
        errors = [InitErrorDetails(type=PydanticCustomError("renamed_key", "renamed to arte.dpo.{new}",
                                                            {"new": key[4:]}), loc=(key,), input=data[key])
                  for key in data if isinstance(key, str) and key[4:] in DpoConfig.model_fields
                  and key.startswith("dpo_")]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data
