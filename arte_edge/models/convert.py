"""GGUF → trainable Hugging Face folder (fp32 safetensors + repaired tokenizer), cached per GGUF sha256."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.models.fetch import Progress, sha256_of
from arte_edge.models.specs import gguf_path, resolve
from arte_edge.paths import models_dir

MARKER = "arte_source.json"


class _Steps:
    """Progress in units of work: 1 for the pull, 1 per tensor dequantized, 3 for save/tokenizer/verify."""

    def __init__(self, progress: Progress | None, n_tensors: int = 0):
        self.progress = progress
        self.total = n_tensors + 4
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if self.progress:
            self.progress(self.done, self.total)

    def finish(self) -> None:
        self.advance(self.total)


def hf_folder(spec: str, progress: Progress | None = None) -> Path:
    """A trainable HF folder for ``spec``: converted from its GGUF once and cached by the GGUF's sha256.

    HF folders (and hub downloads) are returned as they are. For GGUF models the weights are
    dequantized to fp32 safetensors, the tokenizer is rebuilt from the GGUF metadata and verified
    token-for-token against llama.cpp before the folder is cached; a mismatch raises ArteError.
    ``progress(done, total)`` counts units of work (one per tensor, plus a few steps).
    """
    from arte_edge.models.gguf_file import read_header

    ref = resolve(spec)
    if ref.hf_dir is not None:
        return ref.hf_dir
    gguf = gguf_path(spec)
    sha = sha256_of(gguf)
    out = models_dir() / (ref.name if ref.kind == "bundled" else f"{ref.name}-{sha[:12]}") / "hf"
    steps = _Steps(progress, len(read_header(gguf).tensors))
    if _cached(out, sha):
        steps.finish()
        return out
    steps.advance()
    _check_convertible(gguf)
    tmp = out.with_name(f"hf.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(gguf, tmp, steps)
        _write_marker(tmp, gguf, sha)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    steps.finish()
    return out


def _cached(out: Path, sha: str) -> bool:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("gguf_sha256") == sha and (out / "config.json").is_file()


def _check_convertible(gguf: Path) -> None:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from arte_edge.models.gguf_file import read_header

    arch = read_header(gguf).architecture
    supported = {a.replace("_", "") for a in GGUF_SUPPORTED_ARCHITECTURES}
    if arch.replace("_", "") not in supported:
        raise ArteError(
            f"{gguf}: transformers cannot load GGUF architecture {arch!r} for training; "
            "pass the original HF folder instead"
        )


def _convert(gguf: Path, out: Path, steps: _Steps) -> None:
    from arte_edge.models.tokenizer import (
        build_tokenizer,
        check_tokenizer_matches_gguf,
        read_tokenizer_meta,
        save_portable,
    )

    with _hf_bars_off():
        model = _load_dequantized(gguf, steps)
        meta = read_tokenizer_meta(gguf)
        tokenizer = build_tokenizer(meta, gguf)
        _set_special_ids(model, tokenizer)
        model.save_pretrained(str(out), safe_serialization=True)
        del model
    steps.advance()
    save_portable(tokenizer, out, add_bos=meta.add_bos)
    steps.advance()
    problems = check_tokenizer_matches_gguf(out, gguf)
    if problems:
        raise ArteError(
            f"{gguf}: rebuilt tokenizer differs from llama.cpp ({len(problems)} case(s), first: {problems[0]}); "
            "report this model, or pass an HF folder with its original tokenizer"
        )
    steps.advance()


def _load_dequantized(gguf: Path, steps: _Steps) -> Any:
    """Load ``gguf`` into an fp32 transformers model, reporting one step per tensor."""
    import functools

    import gguf as gguf_pkg
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM, GgufConfig

    def counting(iterable: Iterable[Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
        for item in iterable:
            yield item
            steps.advance()

    # transformers draws a plain tqdm bar per tensor; count tensors into the caller's progress instead.
    # transformers also rebuilds gguf's (immutable) tensor-name map once per submodule, ~400 times:
    # memoizing it cuts about a quarter of the load time.
    original_tqdm, original_map = gguf_utils.tqdm, gguf_pkg.get_tensor_name_map
    gguf_utils.tqdm = counting
    gguf_pkg.get_tensor_name_map = functools.lru_cache(maxsize=8)(original_map)
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
    finally:
        gguf_utils.tqdm, gguf_pkg.get_tensor_name_map = original_tqdm, original_map


@contextlib.contextmanager
def _hf_bars_off() -> Iterator[None]:
    """Silence transformers' own progress bars (the CLI draws rich bars from our callback)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _set_special_ids(model: Any, tokenizer: Any) -> None:
    """Point config and generation_config at the repaired tokenizer's bos/eos/pad ids."""
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for cfg in (model.config, model.generation_config):
        for key, value in ids.items():
            setattr(cfg, key, value)


def _write_marker(out: Path, gguf: Path, sha: str) -> None:
    marker = {"gguf": str(gguf), "gguf_sha256": sha, "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "tokenizer_check": "matches llama.cpp"}
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
