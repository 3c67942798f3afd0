"""Padding-free SFT batches (``train.padding_free``): the loss of padded batches, without computing any padding."""

from __future__ import annotations

from pathlib import Path

import pytest

from arte_edge.config import TrainConfig

EXAMPLES = [
    {"messages": [{"role": "user", "content": "What is " + "two plus two " * n + "?"},
                  {"role": "assistant", "content": "It is four. " * (1 + n % 3) + "\nAnswer: 4"}]}
    for n in range(1, 6)
]


def _trainer(model_dir: Path, work: Path, cfg: TrainConfig):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from arte_edge.training.sft import lora_config, sft_config, to_prompt_completion, truncate_examples

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=sft_config(cfg, work, 0, len(EXAMPLES)),
                         train_dataset=Dataset.from_list(to_prompt_completion(EXAMPLES)),
                         processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=lora_config(cfg))
    if cfg.padding_free:
        trainer.train_dataset = truncate_examples(trainer.train_dataset, cfg.max_length)
    return trainer


@pytest.mark.parametrize("max_length", [512, 40])
def test_padding_free_batches_give_the_padded_loss(tiny_model_dir: Path, tmp_path: Path, max_length: int) -> None:
    import torch

    padded = _trainer(tiny_model_dir, tmp_path / "padded", TrainConfig(padding_free=False, max_length=max_length))
    free = _trainer(tiny_model_dir, tmp_path / "free", TrainConfig(padding_free=True, max_length=max_length))
    # the same tokens and labels per example, truncated the same way (TRL does it itself only when padded)
    assert free.train_dataset["input_ids"] == padded.train_dataset["input_ids"]
    assert free.train_dataset["labels"] == padded.train_dataset["labels"]
    lengths = [len(ids) for ids in free.train_dataset["input_ids"]]
    assert max(lengths) <= max_length and (max_length > 100 or max(lengths) == max_length)

    n = len(free.train_dataset)  # at 40 tokens, examples whose answer is cut off entirely are dropped (both ways)
    assert n == len(EXAMPLES) if max_length > 100 else 1 < n < len(EXAMPLES)
    rows = [free.train_dataset[i] for i in range(n)]
    batch_padded = padded.data_collator([padded.train_dataset[i] for i in range(n)])
    batch_free = free.data_collator(rows)
    assert batch_free["input_ids"].shape == (1, sum(lengths))  # one sequence, no padding
    assert batch_padded["input_ids"].numel() == n * max(lengths)
    assert max_length < 100 or n * max(lengths) > sum(lengths)  # the padded batch computes padding

    model = padded.model  # same random LoRA init is not needed: one model scores both layouts
    model.eval()
    with torch.no_grad():
        loss_padded = model(**{k: v for k, v in batch_padded.items() if k in ("input_ids", "attention_mask",
                                                                            "labels")}, use_cache=False).loss
        loss_free = model(input_ids=batch_free["input_ids"], position_ids=batch_free["position_ids"],
                          labels=batch_free["labels"], use_cache=False).loss
        # without the position ids the examples would attend to each other: a different loss (the check can fail)
        mixed = model(input_ids=batch_free["input_ids"], labels=batch_free["labels"], use_cache=False).loss
    assert abs(float(loss_free) - float(loss_padded)) < 1e-4
    assert abs(float(mixed) - float(loss_padded)) > 1e-3


def test_padding_free_is_not_part_of_the_training_key(tmp_path: Path) -> None:
    from arte_edge.training.student import training_key

    (tmp_path / "config.json").write_text("{}")
    key = training_key(tmp_path, EXAMPLES, TrainConfig(padding_free=True), 0)
    assert training_key(tmp_path, EXAMPLES, TrainConfig(padding_free=False), 0) == key
