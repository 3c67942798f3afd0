"""Stage `merge`: fold the LoRA adapter into the fp32 student and check the merge is faithful."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.stages.context import StageContext

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
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _copy_generation_config(base_dir, tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return {"max_logit_diff": diff}


def _copy_generation_config(base_dir: Path, out_dir: Path) -> None:
    src = base_dir / "generation_config.json"
    if src.exists():
        shutil.copy(src, out_dir / "generation_config.json")


def run(ctx: StageContext) -> dict[str, Any]:
    """Merge the run's adapter into its base student."""
    from arte_edge import models

    adapter = ctx.run.root / "student" / "adapter"
    if not (adapter / "adapter_config.json").exists():
        if (adapter / "config.json").exists():  # full fine-tuning: the trained model is already merged
            out = ctx.run.path("student", "merged")
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(adapter, out)
            return {"merged": "student/merged", "max_logit_diff": 0.0}
        raise ArteError(f"{adapter}: no adapter found; run the train stage first")
    out = ctx.run.path("student", "merged")
    stats = merge_adapter(models.hf_folder(ctx.recipe.student.model), adapter, out, ctx.recipe.train.threads)
    return {"merged": "student/merged", **stats}
