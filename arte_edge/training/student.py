"""Train, then merge: the one way every caller (train stage, variants, methods) turns examples into a student.

Layout of a ``work`` folder::

    adapter/               the trained adapter (LoRA/QLoRA) or the whole model (full fine-tuning)
    merged/                the whole fp32 model, ready to export or evaluate
    checkpoints/<key>/     Trainer checkpoints of the run that produced ``key``
    training.json          the key and the training stats of the finished adapter

The key hashes what produced the adapter: the training settings, the seed, the examples and the base model's
identity. A finished adapter with the same key is reused; a different key retrains from scratch (its stale
checkpoints are deleted first, so a changed recipe can never resume another recipe's optimizer state).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arte_edge.config import TrainConfig
from arte_edge.progress import log
from arte_edge.rundir import atomic_write_json

# TrainConfig fields that change nothing the model learns (where the work runs, how often it is saved, how a batch
# is laid out: padding-free batches give the padded loss to float rounding, tests/training/test_sft.py).
NOT_LEARNED = frozenset({"threads", "save_steps", "padding_free"})
RECORD = "training.json"


@dataclass(frozen=True)
class TrainedStudent:
    """Where a trained student is and how it was made."""

    adapter: Path
    merged: Path
    key: str
    stats: dict[str, Any]
    reused: bool


def model_identity(model_dir: Path) -> list[tuple[str, int]]:
    """Names and sizes of a model folder's weight and config files (cheap; changes when the model does)."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return [(p.name, p.stat().st_size) for p in files]


def training_key(base_dir: Path, examples: list[dict[str, Any]], cfg: TrainConfig, seed: int) -> str:
    """16 hex digits naming one training run: settings that shape learning, seed, examples, base model."""
    from arte_edge.training.sft import resolve_precision

    settings = {k: v for k, v in cfg.model_dump().items() if k not in NOT_LEARNED}
    settings["precision"] = resolve_precision(cfg.precision)  # auto differs between hosts: key what ran
    payload = json.dumps({"settings": settings, "seed": seed, "base": model_identity(base_dir),
                          "examples": [e.get("messages") for e in examples]}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ensure_trained(base_dir: Path, examples: list[dict[str, Any]], work: Path, cfg: TrainConfig,
                   seed: int) -> TrainedStudent:
    """``work/adapter`` trained on ``examples``: reused when its key matches, resumed from a checkpoint of the
    same key after an interruption, else trained afresh (stale adapter, merge and checkpoints removed first)."""
    from arte_edge.training.sft import train_adapter

    work.mkdir(parents=True, exist_ok=True)
    key = training_key(base_dir, examples, cfg, seed)
    record = read_record(work)
    adapter, merged = work / "adapter", work / "merged"
    trained = (adapter / "adapter_config.json").exists() or (adapter / "config.json").exists()
    reused = trained and record.get("key") == key
    if not reused:
        if trained or merged.exists():
            log(f"train: settings, data or base model changed since {adapter} was made; training afresh")
        shutil.rmtree(merged, ignore_errors=True)
        shutil.rmtree(adapter, ignore_errors=True)
        _drop_stale_checkpoints(work / "checkpoints", keep=key)
        record = {"key": key, "stats": train_adapter(base_dir, examples, adapter, cfg, seed,
                                                     work / "checkpoints" / key)}
        atomic_write_json(work / RECORD, record)
    return TrainedStudent(adapter, merged, key, record.get("stats", {}), reused)


def ensure_merged(base_dir: Path, work: Path, threads: int = 2) -> dict[str, Any]:
    """``work/merged`` from ``work/adapter`` (merged LoRA or copied full model), redone when the adapter changed."""
    from arte_edge.training.merge import materialize

    record = read_record(work)
    if "key" not in record:
        from arte_edge.errors import ArteError

        raise ArteError(f"{work / 'adapter'}: no trained adapter recorded in {work / RECORD}; run the train stage")
    if not (work / "merged" / "config.json").exists() or record.get("merged_key") != record["key"]:
        record.update(merge=materialize(base_dir, work / "adapter", work / "merged", threads),
                      merged_key=record["key"])
        atomic_write_json(work / RECORD, record)
    return record["merge"]


def train_and_merge(base_dir: Path, examples: list[dict[str, Any]], work: Path, cfg: TrainConfig, seed: int,
                    *, keep_checkpoints: bool = True) -> TrainedStudent:
    """:func:`ensure_trained` then :func:`ensure_merged`; ``keep_checkpoints=False`` drops optimizer states."""
    student = ensure_trained(base_dir, examples, work, cfg, seed)
    merge = ensure_merged(base_dir, work, cfg.threads)
    if not keep_checkpoints:
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return TrainedStudent(student.adapter, student.merged, student.key, {**student.stats, **merge}, student.reused)


def adopt_trained(source: Path, work: Path, base_dir: Path, examples: list[dict[str, Any]], cfg: TrainConfig,
                  seed: int) -> bool:
    """Take over a student a method already trained (``source``, laid out like ``work``) when it was trained on
    exactly these examples with these settings: its adapter (and merged model) are copied to ``work`` and
    recorded, so the caller does not train it again. False (nothing copied) when the keys differ."""
    record = read_record(source)
    if not record or record.get("key") != training_key(base_dir, examples, cfg, seed):
        return False
    if read_record(work).get("key") == record["key"] and (work / "adapter").exists():
        return True
    work.mkdir(parents=True, exist_ok=True)
    for name in ("adapter", "merged"):
        shutil.rmtree(work / name, ignore_errors=True)
        if (source / name).exists() and (name == "adapter" or record.get("merged_key") == record["key"]):
            shutil.copytree(source / name, work / name, copy_function=_link_or_copy)
    kept = {k: v for k, v in record.items() if k in ("key", "stats")}
    if (work / "merged").exists():
        kept.update({k: record[k] for k in ("merge", "merged_key") if k in record})
    atomic_write_json(work / RECORD, {**kept, "adopted_from": str(source)})
    return True


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (no second copy of a GB-sized model on the same disk), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_record(work: Path) -> dict[str, Any]:
    """``work/training.json`` (key, stats, merge) or an empty dict."""
    path = work / RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def _drop_stale_checkpoints(root: Path, keep: str) -> None:
    """Delete checkpoints of other training keys (and of the unkeyed layout older versions wrote)."""
    if not root.exists():
        return
    for child in root.iterdir():
        if child.name != keep:
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
