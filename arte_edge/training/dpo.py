"""Direct preference optimisation (DPO) of a causal LM with TRL's DPOTrainer: LoRA adapter or full fine-tuning.

Pairs are conversational ``prompt`` / ``chosen`` / ``rejected`` records. The schedule is linear warm-up then cosine
(ARTE's), with CPU-safe precision settings; the trained adapter (or whole model) and ``metrics.json`` are written
atomically, so a caller can take ``metrics.json`` as the mark of a finished run. Heavy libraries are imported
inside the functions.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.rundir import atomic_write_json
from arte_edge.training.lm_head import labelled_positions_only


@dataclass(frozen=True)
class DpoSettings:
    """Everything one DPO run needs, fully resolved (a method maps its recipe section onto this)."""

    lr: float
    batch_size: int  # pairs per optimizer step
    micro_batch: int  # pairs per forward pass
    epochs: float
    warmup_ratio: float
    beta: float
    mode: str  # "lora" or "full"
    lora_r: int
    lora_alpha: int
    max_length: int
    threads: int


def dpo_batches(settings: DpoSettings) -> tuple[int, int]:
    """(pairs per forward pass, accumulation steps) that make one optimizer step of ``batch_size`` pairs."""
    micro = min(settings.micro_batch, settings.batch_size)
    return micro, max(1, settings.batch_size // micro)


def dpo_warmup_steps(settings: DpoSettings, n_pairs: int) -> int:
    """Warm-up optimizer steps of the DPO run (the ratio of its steps, rounded down: see sft.warmup_steps)."""
    from arte_edge.training.sft import warmup_steps

    micro, accum = dpo_batches(settings)
    return warmup_steps(n_pairs, micro, accum, settings.epochs, settings.warmup_ratio)


def dpo_config(settings: DpoSettings, output_dir: Path, seed: int, n_pairs: int):
    """TRL DPOConfig with the paper's schedule (warm-up then cosine), CPU-safe precision."""
    import torch
    from trl import DPOConfig

    cuda = torch.cuda.is_available()
    micro, accum = dpo_batches(settings)
    return DPOConfig(
        output_dir=str(output_dir), learning_rate=settings.lr, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, num_train_epochs=settings.epochs,
        lr_scheduler_type="cosine", warmup_steps=dpo_warmup_steps(settings, n_pairs), beta=settings.beta,
        loss_type=["sigmoid"],
        max_length=settings.max_length, bf16=cuda and torch.cuda.is_bf16_supported(), fp16=False,
        activation_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], seed=seed,
        use_cpu=not cuda, disable_tqdm=True, dataloader_num_workers=0)


def train_dpo(base_dir: Path, pairs: Sequence[dict[str, Any]], out_dir: Path, settings: DpoSettings,
              seed: int) -> dict[str, Any]:
    """DPO on ``pairs`` (conversational prompt/chosen/rejected); saves the adapter (or full model) to ``out_dir``
    and the metrics to ``out_dir.parent/metrics.json``; returns the metrics."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    if not pairs:
        raise ArteError(f"{out_dir}: DPO needs at least one preference pair")
    torch.set_num_threads(settings.threads)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                              for p in pairs])
    peft = None if settings.mode == "full" else LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
        task_type="CAUSAL_LM")
    work = out_dir.with_name(out_dir.name + ".work")
    trainer = DPOTrainer(model=model, args=dpo_config(settings, work, seed, len(pairs)), train_dataset=data,
                         processing_class=tokenizer, peft_config=peft)
    with labelled_positions_only():  # on CPU, the LM head skips prompt positions (same gradients)
        result = trainer.train()
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    shutil.rmtree(work, ignore_errors=True)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {"steps": trainer.state.global_step, "n_pairs": len(pairs), "mode": settings.mode,
               "train_loss": round(result.training_loss, 5), "runtime_s": round(result.metrics["train_runtime"], 1),
               "log": logs}
    for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
        values = [h[key] for h in logs if key in h]
        if values:
            metrics[key.replace("/", "_") + "_last"] = round(values[-1], 5)
            metrics[key.replace("/", "_") + "_mean"] = round(sum(values) / len(values), 5)
    atomic_write_json(out_dir.parent / "metrics.json", metrics)
    return metrics
