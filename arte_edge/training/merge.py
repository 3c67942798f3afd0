"""Fold a LoRA adapter into its fp32 base model and check the merge is faithful (logits before = after)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.rundir import atomic_folder

MAX_MERGE_LOGIT_DIFF = 1e-3


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, threads: int = 2) -> dict[str, Any]:
    """Merge ``adapter_dir`` into ``base_dir``, save to ``out_dir`` and compare logits before/after."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    probe = tokenizer("The capital of France is Paris. 12 + 30 = 42.", return_tensors="pt")
    with torch.inference_mode():
        before = model(**probe).logits
        merged = model.merge_and_unload()
        after = merged(**probe).logits
    diff = float((before - after).abs().max())
    if diff > MAX_MERGE_LOGIT_DIFF:
        raise ArteError(f"{adapter_dir}: merged model differs from adapter model (max logit diff {diff:.2e}); "
                        "the adapter may not match the base model")
    with atomic_folder(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _copy_generation_config(base_dir, tmp)
    return {"max_logit_diff": diff}


def _copy_generation_config(base_dir: Path, out_dir: Path) -> None:
    src = base_dir / "generation_config.json"
    if src.exists():
        shutil.copy(src, out_dir / "generation_config.json")


def materialize(base_dir: Path, trained_dir: Path, out_dir: Path, threads: int = 2) -> dict[str, Any]:
    """The whole trained model at ``out_dir``: a LoRA adapter merged into ``base_dir``, or a fully fine-tuned
    model (already whole) copied. ArteError when ``trained_dir`` holds neither."""
    if (trained_dir / "adapter_config.json").exists():
        return merge_adapter(base_dir, trained_dir, out_dir, threads)
    if (trained_dir / "config.json").exists():
        with atomic_folder(out_dir) as tmp:
            shutil.copytree(trained_dir, tmp, dirs_exist_ok=True)
        return {"max_logit_diff": 0.0}
    raise ArteError(f"{trained_dir}: no adapter or model found; train first")
