"""Recipe section `elad:` (used when `method: elad`), validated by the recipe loader with
``METHOD.config_model`` and read by the method as ``ctx.method_config``. Defaults follow the paper (EGSS with
intra- and inter-explanation uncertainty, CLEAR revision by the teacher), scaled for a CPU."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from arte_edge.config import Section
from arte_edge.formats import check_gguf_type

Selection = Literal["egss", "random", "answer_entropy"]
Baseline = Literal["standard", "random", "answer_entropy", "teacher_explain"]


class EladConfig(Section):
    """Settings of the ELAD active-distillation loop (arXiv 2402.13098); frozen, unknown keys rejected."""

    # -- budget and rounds -------------------------------------------------------------------------
    budget: int = Field(64, ge=1, description="Teacher-call budget B per strategy (every call counts, failed "
                        "or not); never exceeded. Each strategy gets the same B.")
    rounds: int = Field(4, ge=1, description="Active rounds R (select → revise → train → evaluate).")
    batch_size: int = Field(16, ge=1, description="Questions b sent to the teacher per round.")
    candidates_per_round: int | None = Field(
        None, ge=1, description="Unlabelled questions scored per round (a seeded random subset of the pool), at "
        "least 4 × batch_size so that selection chooses 1 in 4 or fewer; None scores the whole remaining pool "
        "(the paper; slow on CPU).")

    # -- selection (EGSS) --------------------------------------------------------------------------
    selection: Selection = Field("egss", description="How ELAD itself selects: egss (explanation-guided), "
                                 "random, or answer_entropy.")
    lambda_: float = Field(0.5, ge=0.0, le=1.0, description="EGSS weight: score = λ·intra + (1−λ)·inter "
                           "(1 = intra-explanation only, 0 = inter-explanation only).")
    intra_measure: Literal["flips", "disagreement", "entropy"] = Field(
        "flips", description="Intra-explanation uncertainty over the answers given after each step prefix: "
        "flips = answer changes between consecutive prefixes / (n−1); disagreement = share of prefixes whose "
        "answer differs from the explanation's final one; entropy = normalised entropy of those answers.")
    step_split: Literal["numbered", "lines", "sentences"] = Field(
        "numbered", description="How an explanation is cut into steps: numbered ('Step k:' lines, falling back "
        "to lines when there are none), non-empty lines, or sentences.")
    max_prefixes: int = Field(6, ge=4, description="At most this many step prefixes are answered per "
                              "explanation (evenly spaced; at least 4, or the intra-explanation score takes only "
                              "a few values); bounds the intra-explanation cost.")
    include_empty_prefix: bool = Field(False, description="Also ask for the answer before any step (k = 0).")
    n_samples: int = Field(4, ge=4, description="Explanations N sampled per question for the inter-explanation "
                           "entropy (and answers sampled for answer_entropy); at least 4: with 2 the entropy is 0 or "
                           "1 and most candidates tie at the top.")
    sample_temperature: float = Field(0.7, gt=0.0, le=2.0, description="Temperature of those samples.")
    answer_entropy_mode: Literal["direct", "explained"] = Field(
        "direct", description="answer_entropy baseline: entropy of N direct answers (no reasoning: classic "
        "uncertainty sampling) or of the final answers of N sampled explanations.")
    explain_max_tokens: int = Field(256, ge=16, description="Max new tokens of a student explanation.")
    prefix_max_tokens: int = Field(16, ge=4, description="Max new tokens of an answer after a step prefix.")
    score_batch: int = Field(8, ge=1, description="Questions scored per durable write (resume granularity).")

    # -- revision (CLEAR) and checking -------------------------------------------------------------
    revision: Literal["clear", "teacher_own"] = Field(
        "clear", description="How ELAD's selected questions are annotated: clear (the teacher checks the "
        "student's steps, keeps the correct prefix, rewrites from the first flawed step) or teacher_own.")
    teacher_max_tokens: int = Field(384, ge=32, description="Max new tokens of a teacher revision.")
    teacher_temperature: float = Field(0.0, ge=0.0, le=2.0, description="Teacher temperature for revisions.")
    checker: Literal["auto", "gold", "self_consistency"] = Field(
        "auto", description="What validates a revision: gold (the task's checker against the gold answer; the "
        "pool stays unlabelled for selection), self_consistency (agreement with the majority of the teacher's "
        "own independent answers, for unlabelled data; costs extra calls), auto = gold when every pool item "
        "has an answer.")
    consistency_samples: int = Field(3, ge=1, description="Independent teacher answers per question for "
                                     "self_consistency (each is a teacher call).")
    consistency_temperature: float = Field(0.7, ge=0.0, le=2.0, description="Their temperature.")

    # -- baselines and stopping --------------------------------------------------------------------
    baselines: list[Baseline] = Field(
        default_factory=lambda: ["standard", "random", "answer_entropy", "teacher_explain"],
        description="Baselines run at the same budget: standard (random questions, the teacher writes its own "
        "explanation: standard distillation, the arm every strategy is compared with), random (+CLEAR), "
        "answer_entropy (+CLEAR), teacher_explain (EGSS selection, the teacher writes its own explanation: no "
        "revision).")
    stop_metric: Literal["validation", "eval", "none"] = Field(
        "validation", description="Accuracy the stopping rule watches: validation (the `preference` split, "
        "which must then be non-empty), eval (held-out: biases the final number), or none (run all rounds).")
    patience: int = Field(1, ge=1, description="Stop after this many rounds without improvement.")
    min_delta_pt: float = Field(0.0, ge=0.0, description="Improvement (accuracy points) that counts.")
    eval_size: int | None = Field(None, ge=1, description="Held-out items evaluated per round (the first n of "
                                  "the eval split); None = all of it.")
    validation_size: int | None = Field(None, ge=1, description="Validation items per round; None = all.")
    student_quant: str | None = Field(
        None, description="Run each round's student (selection scoring and evaluation) as a GGUF of this type "
        "(e.g. q8_0) in llama.cpp, the runtime that ships; on a 2-core CPU ~3x faster than fp32 torch. Exported and "
        "verified once per model: round-r/merged-gguf/, the base student elad/base/gguf/. None: fp32 torch.")
    device_faithful_eval: bool = Field(
        True, description="With student_quant: score each curve point one sequence at a time, as the device runs "
        "the GGUF (the evaluate stage's rule), so a point equals the Artifacts table for the same model. False "
        "decodes 8 together: about 1.5x faster evaluation on 2 cores, but llama.cpp batching changes float rounding "
        "(measured: the same model 18.3% batched vs 21.7% at batch 1 on 60 GSM8K items).")
    keep_models: Literal["last", "all"] = Field(
        "last", description="Keep every round's merged student (disk heavy: ~2 GB per 0.5B model) or only the "
                            "latest per strategy.")

    _known_gguf_type = field_validator("student_quant")(check_gguf_type)

    @model_validator(mode="after")
    def _check(self) -> EladConfig:
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError("elad.baselines: names must be unique")
        if self.candidates_per_round is not None and self.candidates_per_round < 4 * self.batch_size:
            raise ValueError(f"elad.candidates_per_round must be ≥ 4 × elad.batch_size ({4 * self.batch_size}) or "
                             "null (the whole pool): selecting from barely more candidates than it takes is "
                             "close to random selection")
        return self
