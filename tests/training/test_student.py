"""train_and_merge: one path for every caller, keyed by what produced the adapter (never stale state)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arte_edge.config import TrainConfig
from arte_edge.training.student import ensure_merged, ensure_trained, train_and_merge, training_key

CFG = TrainConfig(epochs=1, batch_size=2, save_steps=2, max_length=96, threads=1, lora_r=4, lora_alpha=8)


def _examples(n: int, offset: int = 0) -> list[dict]:
    return [{"id": f"e{i}", "messages": [{"role": "user", "content": f"What is {i} + {offset}?"},
                                         {"role": "assistant", "content": f"Answer: {i + offset}"}]}
            for i in range(n)]


def test_key_covers_what_is_learned_and_nothing_else(tiny_model_dir: Path) -> None:
    base = training_key(tiny_model_dir, _examples(4), CFG, 0)
    assert base == training_key(tiny_model_dir, _examples(4), CFG.model_copy(update={"threads": 2}), 0)
    assert base == training_key(tiny_model_dir, _examples(4), CFG.model_copy(update={"save_steps": 5}), 0)
    changed = {training_key(tiny_model_dir, _examples(4), CFG.model_copy(update={"epochs": 2}), 0),
               training_key(tiny_model_dir, _examples(4), CFG.model_copy(update={"mode": "full"}), 0),
               training_key(tiny_model_dir, _examples(4, offset=1), CFG, 0),
               training_key(tiny_model_dir, _examples(4), CFG, 1)}
    assert base not in changed and len(changed) == 4


@pytest.mark.timeout(300)
def test_same_key_reuses_a_changed_key_retrains_and_drops_stale_checkpoints(tiny_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    work = tmp_path / "student"
    first = train_and_merge(tiny_model_dir, _examples(6), work, CFG, 0)
    assert not first.reused and (first.merged / "config.json").exists()
    assert first.stats["steps"] == 3 and (work / "checkpoints" / first.key).is_dir()
    again = train_and_merge(tiny_model_dir, _examples(6), work, CFG, 0)
    assert again.reused and again.key == first.key

    # A leftover checkpoint of the old settings (what a killed run leaves) must not be resumed by new settings.
    two_epochs = CFG.model_copy(update={"epochs": 2})
    retrained = ensure_trained(tiny_model_dir, _examples(6), work, two_epochs, 0)
    assert not retrained.reused and retrained.key != first.key
    assert retrained.stats["steps"] == 6 and retrained.stats["resumed_from"] is None
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == [retrained.key]
    assert not (work / "merged").exists(), "the old merge is gone with its adapter"
    ensure_merged(tiny_model_dir, work, threads=1)
    record = json.loads((work / "training.json").read_text())
    assert record["key"] == record["merged_key"] == retrained.key


@pytest.mark.timeout(300)
def test_full_fine_tuning_and_qlora_go_through_the_same_path(tiny_model_dir: Path, tmp_path: Path) -> None:
    full = train_and_merge(tiny_model_dir, _examples(4), tmp_path / "full", CFG.model_copy(update={"mode": "full"}), 0)
    assert (full.adapter / "config.json").exists() and not (full.adapter / "adapter_config.json").exists()
    assert (full.merged / "model.safetensors").exists() and full.stats["max_logit_diff"] == 0.0
    pytest.importorskip("bitsandbytes")
    qlora = train_and_merge(tiny_model_dir, _examples(4), tmp_path / "qlora",
                            CFG.model_copy(update={"mode": "qlora"}), 0)
    assert qlora.stats["mode"] == "qlora" and qlora.stats["steps"] == 2
    assert (qlora.adapter / "adapter_config.json").exists() and (qlora.merged / "config.json").exists()
