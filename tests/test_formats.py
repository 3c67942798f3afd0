"""The one list of export formats: every other list (presets, the export stage, recipe validation) derives
from it, and each GGUF type resolves to a llama.cpp ftype constant."""

from __future__ import annotations

from pathlib import Path

import pytest

from arte_edge.errors import ArteError
from arte_edge.formats import (
    FORMATS,
    GGUF_QUANTS,
    GGUF_TYPES,
    ONNX_PRECISIONS,
    ONNX_THRESHOLDS,
    check_formats,
    check_gguf_type,
    llama_ftype,
    normalize_qtype,
    parse_format,
    qtype_of_ftype,
)


def test_every_gguf_type_has_an_ftype_and_thresholds() -> None:
    pytest.importorskip("llama_cpp")
    for name, gguf_type in GGUF_TYPES.items():
        assert qtype_of_ftype(llama_ftype(name)) == name
        assert gguf_type.thresholds.exact_greedy == (name in ("F32", "F16", "BF16"))
    assert set(ONNX_THRESHOLDS) == set(ONNX_PRECISIONS)
    assert FORMATS == {"gguf": GGUF_QUANTS, "onnx": ONNX_PRECISIONS}


def test_names_are_normalised_once() -> None:
    assert normalize_qtype(" q4-k-m ") == "Q4_K_M"
    assert check_gguf_type("Q8-0") == "q8_0" and check_gguf_type(None) is None
    with pytest.raises(ValueError, match="unknown GGUF type 'q9'"):
        check_gguf_type("q9")
    assert parse_format("GGUF:Q2_K") == ("gguf", "q2_k")
    assert parse_format("onnx:int8") == ("onnx", "int8")
    with pytest.raises(ArteError, match=r"export\.formats: 'onnx:q8_0' is not a known format \(choose from gguf:f32"):
        parse_format("onnx:q8_0")
    assert check_formats(["gguf:F16", "onnx:fp32"]) == ["gguf:f16", "onnx:fp32"]
    with pytest.raises(ValueError, match="unknown format.*'gguf'.*'tflite:int8'"):
        check_formats(["gguf", "tflite:int8", "gguf:q8_0"])


def test_stage_and_presets_accept_the_same_list(tmp_path: Path) -> None:
    from arte_edge.export.presets import load_export_preset
    from arte_edge.export.targets import requested_formats

    preset = tmp_path / "all.yaml"
    preset.write_text(f"gguf: [{', '.join(GGUF_QUANTS)}]\nonnx: [{', '.join(ONNX_PRECISIONS)}]\n")
    specs = load_export_preset(preset)
    assert requested_formats([], str(preset)) == [parse_format(s) for s in specs]
    assert len(specs) == len(GGUF_QUANTS) + len(ONNX_PRECISIONS)
