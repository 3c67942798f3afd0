"""Supervised fine-tuning of a student with TRL's SFTTrainer: (Q)LoRA or full, completion-only loss.

Each example becomes a conversational prompt/completion pair, so only the assistant's answer is learned.
Checkpoints every ``train.save_steps`` under the folder the caller gives (see :mod:`arte_edge.training.student`
for folders keyed by what produced them); a killed run resumes from the last checkpoint. Gradient checkpointing is
off on CPU (slower there); ``train.precision: auto`` is bf16 mixed precision on CUDA with bf16 and fp32 on CPU
(measured: no faster on an AMX CPU, slower without AMX); ``bf16`` forces autocast anywhere. Batches are
padding-free by default (``train.padding_free``): the examples of a batch are one sequence, kept apart by their
position ids, so no padding token is computed. On CPU each example attends on its own
(:mod:`arte_edge.training.packed_attention`) and the LM head projects only the completion's positions
(:mod:`arte_edge.training.lm_head`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from arte_edge.config import TrainConfig
from arte_edge.errors import ArteError
from arte_edge.progress import log, progress, quiet_libraries
from arte_edge.rundir import partial_path
from arte_edge.training.lm_head import labelled_positions_only
from arte_edge.training.packed_attention import per_example_attention


def to_prompt_completion(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL conversational prompt/completion records from ``messages`` records (last turn = completion)."""
    out = []
    for row in rows:
        messages = row["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise ArteError(f"example {row.get('id')}: the last message must be the assistant's answer")
        out.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return out


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete Trainer checkpoint in ``output_dir`` (one with trainer_state.json)."""
    ckpts = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [p for p in ckpts if (p / "trainer_state.json").exists()]
    return str(complete[-1]) if complete else None


def load_student(model_dir: Path, cfg: TrainConfig):
    """The base student for training: fp32 on CPU, or nf4 4-bit for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    if cfg.mode != "qlora":
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=compute)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=torch.cuda.is_available())


def warmup_steps(n_rows: int, micro_batch: int, grad_accum: int, epochs: float, ratio: float = 0.1) -> int:
    """Warm-up optimizer steps: ``ratio`` of the run's optimizer steps, rounded down.

    Rounded up (what a fractional ``warmup_steps`` gives in transformers), a run of fewer than 10 steps spends its
    first step at learning rate 0, and a one-step run (a handful of examples) never updates the model at all.
    """
    import math

    steps_per_epoch = math.ceil(math.ceil(n_rows / micro_batch) / grad_accum)
    return int(ratio * math.ceil(steps_per_epoch * epochs))


def rows_per_process(n_rows: int) -> int:
    """Rows one training process sees (``accelerate launch`` shards the data over ``WORLD_SIZE`` processes)."""
    import math
    import os

    return math.ceil(n_rows / max(1, int(os.environ.get("WORLD_SIZE", "1"))))


def resolve_precision(precision: str, cuda: bool | None = None) -> str:
    """``"bf16"`` or ``"fp32"`` for ``train.precision`` on this machine: ``auto`` is bf16 on a CUDA GPU with bf16
    and fp32 on every CPU. Measured on an Intel Xeon with AMX-BF16 (benchmarks/pipeline_speed.py, SmolLM2-135M
    LoRA, 54 examples, 3 alternating runs each): bf16 autocast 175 vs fp32 140 tok/s (medians; 1.02x in the
    quietest pair) with a higher mean loss (0.996 vs 0.914), although a bare bf16 matmul runs ~10x faster there;
    on CPUs without AMX bf16 is ~1.7x slower. Not worth a different result by default."""
    if precision != "auto":
        return precision
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"


def sft_config(cfg: TrainConfig, output_dir: Path, seed: int, n_rows: int):
    """TRL SFTConfig for this recipe (10% warm-up, then cosine); precision from :func:`resolve_precision`."""
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    bf16 = resolve_precision(cfg.precision, cuda) == "bf16"
    return SFTConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, lr_scheduler_type="cosine",
        warmup_steps=warmup_steps(rows_per_process(n_rows), cfg.batch_size, cfg.grad_accum, cfg.epochs),
        logging_steps=1,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        bf16=bf16, fp16=False, activation_checkpointing=False,
        # padding-free: TRL leaves truncation to the caller (see :func:`truncate_examples`)
        max_length=None if cfg.padding_free else cfg.max_length, padding_free=cfg.padding_free,
        completion_only_loss=True, packing=False, report_to=[], seed=seed,
        dataloader_num_workers=0, use_cpu=not cuda, disable_tqdm=True, save_only_model=False,
    )


def truncate_examples(dataset, max_length: int):
    """Tokenized examples cut to ``max_length`` tokens from the start, examples left without a completion token
    dropped: what TRL does in padded mode, which it leaves to the caller with ``padding_free=True``."""
    dataset = dataset.map(lambda row: {"input_ids": row["input_ids"][:max_length],
                                       "labels": row["labels"][:max_length]})
    return dataset.filter(lambda row: any(label != -100 for label in row["labels"]))


def lora_config(cfg: TrainConfig):
    """The peft LoRA adapter configuration."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")


def train_adapter(base_dir: Path, examples: list[dict[str, Any]], out_dir: Path, cfg: TrainConfig, seed: int,
                  work_dir: Path) -> dict[str, Any]:
    """Fine-tune ``base_dir`` on ``examples``; saves the adapter (or full model) to ``out_dir``."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    quiet_libraries()
    torch.set_num_threads(cfg.threads)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = load_student(base_dir, cfg)
    dataset = Dataset.from_list(to_prompt_completion(examples))
    trainer = SFTTrainer(model=model, args=sft_config(cfg, work_dir, seed, len(dataset)), train_dataset=dataset,
                         processing_class=tokenizer, peft_config=None if cfg.mode == "full" else lora_config(cfg))
    if cfg.padding_free:
        trainer.train_dataset = truncate_examples(trainer.train_dataset, cfg.max_length)
    resume = last_checkpoint(work_dir)
    if resume:
        log(f"train: resuming from {resume}")
    with progress("train", trainer.state.max_steps or None) as advance:
        trainer.add_callback(_progress_callback(advance))
        with labelled_positions_only() as compact, per_example_attention(model) as per_example:
            result = trainer.train(resume_from_checkpoint=resume)
    # Under `accelerate launch` every rank gets here. save_model is collective (FSDP gathers shards) and
    # writes on the main process only; everything else in the run directory is the main process's job.
    main = trainer.accelerator.is_main_process
    tmp = partial_path(out_dir)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if main:
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        (out_dir.parent / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    trainer.accelerator.wait_for_everyone()
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {"steps": trainer.state.global_step, "train_loss": round(result.training_loss, 4),
            "first_loss": history[0]["loss"] if history else None,
            "last_loss": history[-1]["loss"] if history else None,
            "runtime_s": round(result.metrics.get("train_runtime", 0.0), 1), "mode": cfg.mode,
            "precision": resolve_precision(cfg.precision), "tokens": _trained_tokens(trainer.state.log_history),
            "world_size": trainer.accelerator.num_processes,
            "lm_head": "labelled positions" if compact else "every position",
            "attention": "per example" if per_example else "sdpa",
            "resumed_from": resume}


def _trained_tokens(history: list[dict[str, Any]]) -> int | None:
    """Tokens the run processed (TRL's running ``num_tokens`` at the last logged step), for tokens/s."""
    counts = [h["num_tokens"] for h in history if "num_tokens" in h]
    return int(float(counts[-1])) if counts else None


def _progress_callback(advance):
    """A TrainerCallback that drives the progress bar (defined lazily: transformers is heavy)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            advance(state.global_step, f"train: {state.max_steps} steps")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                advance(0, f"train: step {state.global_step}/{state.max_steps} loss {logs['loss']:.3f}")

        def on_step_end(self, args, state, control, **kwargs):
            advance(1)

    return ProgressCallback()
