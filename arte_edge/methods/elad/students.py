"""The students of the loop: how a round's student is trained (the shared train → merge path) and opened for
scoring and evaluation (fp32 torch, or a cached GGUF in llama.cpp)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.backends.base import ChatModel, SamplingParams
from arte_edge.rundir import stable_id

if TYPE_CHECKING:
    from arte_edge.config import Recipe

# ``train(cumulative examples, round folder) -> merged model folder``; tests inject fakes.
Trainer = Callable[[list[dict[str, Any]], Path], Path]
# ``open(model folder) -> ChatModel``.
StudentOpener = Callable[[Path], ChatModel]


def default_trainer(base_dir: Path, recipe: Recipe) -> Trainer:
    """Fine-tune the base student on the cumulative examples (LoRA as in `train:`), merge into round-r/merged.

    The round folder is a work folder of :func:`~arte_edge.training.student.train_and_merge` (adapter/, merged/,
    training.json) trained with the recipe's ``train`` settings and seed, so the train and variants stages can
    adopt the last one instead of training the same student again."""

    def train(examples: list[dict[str, Any]], round_dir: Path) -> Path:
        from arte_edge.training.student import train_and_merge

        # optimizer states are large and no longer needed once a round's student is merged
        return train_and_merge(base_dir, examples, round_dir, recipe.train, recipe.seed, keep_checkpoints=False).merged

    return train


def default_opener(threads: int, quant: str | None = None, root: Path | None = None, n_ctx: int = 2048,
                   verify: bool = True, batch_size: int = 8) -> StudentOpener:
    """Open a student folder with transformers (fp32, as the evaluate stage), or with ``quant`` as a GGUF in
    llama.cpp: exported once to ``<folder>-gguf/`` (the base student, outside the run, to ``root/elad/base/gguf``)."""

    def open_student(model_dir: Path) -> ChatModel:
        if quant is None:
            from arte_edge.backends.hf import HFChat

            return HFChat(model_dir, threads=threads)
        from arte_edge.backends.llamacpp import LlamaCppChat
        from arte_edge.export.gguf import cached_gguf
        from arte_edge.progress import log

        path = gguf_path(model_dir, root, quant)
        path = cached_gguf(model_dir, path.parent, quant, "student", log, verify=verify, threads=threads)
        return LlamaCppChat(path, threads=threads, n_ctx=n_ctx, name=f"{model_dir.parent.name}/{model_dir.name}",
                            batch_size=batch_size)

    return open_student


def student_openers(recipe: Recipe, root: Path) -> tuple[StudentOpener, StudentOpener]:
    """``(scoring, evaluation)`` openers: scoring decodes 8 sequences together; evaluation does too unless
    ``elad.device_faithful_eval`` asks for the device's one-at-a-time decoding of the GGUF."""
    cfg = recipe.method_config
    args = (recipe.evaluate.threads, cfg.student_quant, root, recipe.student.n_ctx, recipe.export.verify)
    scoring = default_opener(*args)
    if cfg.student_quant and cfg.device_faithful_eval:
        return scoring, default_opener(*args, batch_size=1)
    return scoring, scoring


def quantized_dir(model_dir: Path) -> Path:
    """Where the GGUF of a round's merged student goes (removed with it under ``keep_models: last``)."""
    return model_dir.parent / f"{model_dir.name}-gguf"


def gguf_path(model_dir: Path, root: Path | None, quant: str) -> Path:
    """The GGUF of type ``quant`` that :func:`default_opener` runs for ``model_dir``: beside a round's merged folder,
    or ``root/elad/base/gguf/`` for the base student (a folder outside the run)."""
    from arte_edge.export.gguf import artifact_name
    from arte_edge.formats import normalize_qtype

    inside = root is not None and model_dir.resolve().is_relative_to(root.resolve())
    out_dir = quantized_dir(model_dir) if inside or root is None else root / "elad" / "base" / "gguf"
    return out_dir / artifact_name("student", normalize_qtype(quant))


def point_key(model_dir: Path, eval_mode: str, params: SamplingParams) -> str:
    """What a curve point's score depends on: the model (its training key, else its files), the evaluation's runtime
    and batch mode, and the decoding settings. Cached per-item rows and curve points count only under the same key."""
    record = model_dir.parent / "training.json"
    model = json.loads(record.read_text()).get("key") if record.exists() else [
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(model_dir.glob("*")) if p.is_file()]
    return stable_id("elad/eval", model, eval_mode, params.max_tokens, params.stop_regex)
