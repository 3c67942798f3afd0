"""``train.precision``: auto is bf16 only on a CUDA GPU with bf16; fp32 on every CPU (measured: no faster there)."""

from __future__ import annotations

from pathlib import Path

from arte_edge.config import TrainConfig
from arte_edge.training.sft import resolve_precision


def test_auto_is_fp32_on_cpu_and_an_explicit_choice_wins() -> None:
    assert resolve_precision("auto", cuda=False) == "fp32"
    assert resolve_precision("fp32", cuda=False) == "fp32"
    assert resolve_precision("bf16", cuda=False) == "bf16"


def test_sft_config_turns_autocast_on_only_for_bf16(tmp_path: Path) -> None:
    from arte_edge.training.sft import sft_config

    assert not sft_config(TrainConfig(), tmp_path, 0, 8).bf16  # this suite runs without CUDA
    assert sft_config(TrainConfig(precision="bf16"), tmp_path, 0, 8).bf16


def test_the_training_key_names_the_resolved_precision(tmp_path: Path, monkeypatch) -> None:
    from arte_edge.training import sft, student

    (tmp_path / "config.json").write_text("{}")
    examples = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    monkeypatch.setattr(sft, "resolve_precision", lambda precision, *a, **k: "fp32")
    on_cpu = student.training_key(tmp_path, examples, TrainConfig(), 0)
    assert student.training_key(tmp_path, examples, TrainConfig(precision="fp32"), 0) == on_cpu
    monkeypatch.setattr(sft, "resolve_precision", lambda precision, *a, **k: "bf16")
    assert student.training_key(tmp_path, examples, TrainConfig(), 0) != on_cpu  # auto on a GPU: another run
