"""``train.precision``: auto picks bf16 only where it is faster (CUDA with bf16, a CPU with AMX-BF16)."""

from __future__ import annotations

from pathlib import Path

from arte_edge.config import TrainConfig
from arte_edge.training.sft import resolve_precision

AMX = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"})
AMD_ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16"})  # bf16 instructions, no AMX tiles


def test_auto_is_bf16_only_on_a_cpu_with_amx_bf16() -> None:
    assert resolve_precision("auto", cuda=False, cpu_flags=AMX) == "bf16"
    assert resolve_precision("auto", cuda=False, cpu_flags=AMD_ZEN4) == "fp32"
    assert resolve_precision("auto", cuda=False, cpu_flags=frozenset()) == "fp32"  # ARM, unreadable cpuinfo
    assert resolve_precision("fp32", cuda=False, cpu_flags=AMX) == "fp32"  # an explicit choice wins
    assert resolve_precision("bf16", cuda=False, cpu_flags=AMD_ZEN4) == "bf16"


def test_the_training_key_names_the_resolved_precision(tmp_path: Path, monkeypatch) -> None:
    from arte_edge.training import sft, student

    (tmp_path / "config.json").write_text("{}")
    examples = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    monkeypatch.setattr(sft, "resolve_precision", lambda precision, *a, **k: "fp32")
    on_amd = student.training_key(tmp_path, examples, TrainConfig(), 0)
    assert student.training_key(tmp_path, examples, TrainConfig(precision="fp32"), 0) == on_amd
    monkeypatch.setattr(sft, "resolve_precision", lambda precision, *a, **k: "bf16")
    assert student.training_key(tmp_path, examples, TrainConfig(), 0) != on_amd  # auto on an AMX host: another run
