"""GGUF export on the tiny random model: conversion, refusals, quantization accounting, imatrix, verification,
Modelfile and presets.

The converter comes from the llama-cpp-python sdist (~75 MB from PyPI, once per cache: not a model
download); everything else runs on the ~12 MB tiny model in seconds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from arte_edge.errors import ArteError
from arte_edge.export import converter as C
from arte_edge.export import gguf as G
from arte_edge.export import quantize as Q
from arte_edge.export.errors import VerificationError
from arte_edge.formats import GGUF_TYPES, normalize_qtype
from arte_edge.models.gguf_file import read_header

if TYPE_CHECKING:
    from arte_edge.export.reference import HFReference

CALIBRATION = [
    "The river rose slowly through the night, and by morning the low fields were under water.",
    "def area(r):\n    return 3.14159 * r * r\n\nprint(area(2))\n",
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\nRed, green and blue.<|im_end|>\n",
] * 4


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def converter() -> Path:
    return C.ensure_converter()


@dataclass
class Exported:
    out: Path
    artifacts: list[G.GGUFArtifact]
    messages: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, converter: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """One verified export of the tiny model (f16 kept, Q8_0, Q4_K_M), shared by the tests below."""
    result = Exported(tmp_path_factory.mktemp("artifacts"), [])
    result.artifacts = G.export_gguf(tiny_model_dir, result.out, ["q8_0", "f16", "Q4_K_M"], "tiny",
                                     progress=result.messages.append,
                                     on_artifact=lambda a: result.seen.append(a.qtype))
    return result


@pytest.fixture(scope="module")
def tiny_gguf(exported: Exported) -> Path:
    """The tiny model as an f16 GGUF (read-only: tests write elsewhere)."""
    return exported.out / "tiny.f16.gguf"


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> HFReference:
    """The tiny HF model's outputs on the default verification inputs, computed once."""
    from arte_edge.export.reference import hf_reference

    return hf_reference(tiny_model_dir)


def _fake_converter(source: Path) -> Callable[..., Path]:
    """A stand-in for convert_to_gguf that copies an existing f16 GGUF (for tests about what happens after)."""

    def convert(_hf_dir: object, out_path: Path, *_args: object, **_kwargs: object) -> Path:
        shutil.copyfile(source, out_path)
        return Path(out_path)

    return convert


def _copy_model(src: Path, dst: Path) -> Path:
    """A copy of an HF folder whose weights are symlinked (the tests only edit the JSON files)."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.suffix == ".safetensors":
            (dst / item.name).symlink_to(item)
        else:
            shutil.copy2(item, dst / item.name)
    return dst


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data), encoding="utf-8")


def _random_model(src: Path, dst: Path, seed: int, **config_changes: object) -> Path:
    """A copy of ``src`` (tokenizer included) with new random weights from ``seed``."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    shutil.copytree(src, dst)
    config = AutoConfig.from_pretrained(src)
    for key, value in config_changes.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(dst)
    return dst


# ---------------------------------------------------------------------------------------------- converter


def test_converter_extracted_once_with_its_gguf_py(converter: Path) -> None:
    root = converter.parent
    assert converter.name == "convert_hf_to_gguf.py"
    assert (root / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert (root / "conversion" / "__init__.py").is_file()  # the local package the converter imports
    assert root.name == C.llama_cpp_version()
    before = converter.stat().st_mtime_ns
    assert C.ensure_converter() == converter
    assert converter.stat().st_mtime_ns == before


def test_converter_extraction_into_a_fresh_cache(converter: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Extraction from an sdist already on disk (linked, not downloaded): complete, public, no temp dirs left."""
    sdist = C._find_sdist(C.cache_dir() / "sdist", C.llama_cpp_version())
    if sdist is None:
        pytest.skip("the llama-cpp-python sdist is not in the cache (converter was extracted elsewhere)")
    monkeypatch.setenv("ARTE_EDGE_CACHE", str(tmp_path))
    (tmp_path / "sdist").mkdir()
    (tmp_path / "sdist" / sdist.name).symlink_to(sdist)
    (tmp_path / "llama.cpp-converter" / C.llama_cpp_version()).mkdir(parents=True)  # a broken earlier attempt
    script = C.ensure_converter()
    assert script == tmp_path / "llama.cpp-converter" / C.llama_cpp_version() / "convert_hf_to_gguf.py"
    assert (script.parent / "gguf-py" / "gguf" / "gguf_reader.py").is_file()
    assert not (script.parent / "ggml").exists()  # only the Python converter, not the C++ tree
    assert sorted(p.name for p in script.parent.parent.iterdir()) == [C.llama_cpp_version()]
    assert script.parent.stat().st_mode & 0o055 == 0o055
    assert C.converter_architectures(script) == C.converter_architectures(converter)


def test_converter_registry(converter: Path) -> None:
    archs = C.converter_architectures(converter)
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM"} <= archs
    assert "FooForCausalLM" not in archs


def test_convert_tiny_model_to_f16(tiny_gguf: Path) -> None:
    assert tiny_gguf.is_file()
    assert not tiny_gguf.with_name(tiny_gguf.name + ".partial").exists()
    info = Q.describe_gguf(tiny_gguf)
    assert info["type_histogram"] == {"F16": 15, "F32": 5}  # 2-D weights f16, norms f32
    kv = read_header(tiny_gguf).metadata
    assert kv["general.architecture"] == "llama"
    assert kv["tokenizer.ggml.pre"] == "smollm"
    assert kv["tokenizer.ggml.eos_token_id"] == 2


def test_header_reader_agrees_with_gguf_reader(tiny_gguf: Path) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(str(tiny_gguf))
    ours = {t["name"]: (t["type"], t["n_bytes"], t["n_elements"]) for t in Q.gguf_tensor_info(tiny_gguf)}
    theirs = {t.name: (t.tensor_type.name, int(t.n_bytes), int(t.n_elements)) for t in reader.tensors}
    assert ours == theirs
    kv = read_header(tiny_gguf).metadata
    assert kv["tokenizer.chat_template"] == reader.get_field("tokenizer.chat_template").contents()


def test_gguf_loads_in_llama_cpp(tiny_gguf: Path) -> None:
    from arte_edge.export.verify import check_gguf_loads_in_llama_cpp

    info = check_gguf_loads_in_llama_cpp(tiny_gguf)
    assert info["architecture"] == "llama"
    assert info["n_vocab"] == 49152
    assert info["n_ctx_train"] == 2048


def test_corrupt_gguf_is_refused(tmp_path: Path) -> None:
    from arte_edge.export.verify import check_gguf_loads_in_llama_cpp

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ArteError, match=r"bad\.gguf"):
        check_gguf_loads_in_llama_cpp(bad)
    with pytest.raises(ArteError, match=r"bad\.gguf: unsupported GGUF version 0"):
        Q.describe_gguf(tmp_path / "bad.gguf")


# ---------------------------------------------------------------------------------------------- refusals


def test_refuses_unknown_architecture(tiny_model_dir: Path, converter: Path, tmp_path: Path) -> None:
    model = _copy_model(tiny_model_dir, tmp_path / "foo")
    _edit_json(model / "config.json", architectures=["FooForCausalLM"])
    with pytest.raises(ArteError, match=r"config\.json: architecture 'FooForCausalLM' is not supported"):
        C.convert_to_gguf(model, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("out.gguf*"))


def test_refuses_tokenizer_larger_than_embeddings(tiny_model_dir: Path, converter: Path, tmp_path: Path) -> None:
    model = _random_model(tiny_model_dir, tmp_path / "small_vocab", seed=2, vocab_size=49000)
    with pytest.raises(ArteError, match=r"tokenizer has 49152 tokens but the embedding matrix has 49000 rows"):
        C.convert_to_gguf(model, tmp_path / "out.gguf")


def test_refuses_missing_chat_template(tiny_model_dir: Path, converter: Path, tmp_path: Path) -> None:
    model = _copy_model(tiny_model_dir, tmp_path / "base")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    _edit_json(model / "tokenizer_config.json", chat_template=None)
    with pytest.raises(ArteError, match="no chat template"):
        C.convert_to_gguf(model, tmp_path / "out.gguf")
    found = C.check_convertible(model, allow_no_chat_template=True, converter=converter)
    assert found["has_chat_template"] is False


def test_converter_failure_reports_its_last_line(tiny_model_dir: Path, converter: Path, tmp_path: Path) -> None:
    # A pre-tokenizer the converter does not know (different chkhsh): it must refuse, and we must say why.
    model = _copy_model(tiny_model_dir, tmp_path / "odd_pretok")
    data = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False}
    (model / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "odd.gguf"
    with pytest.raises(ArteError, match=r"llama\.cpp converter failed: .*pre-tokenizer") as info:
        C.convert_to_gguf(model, out)
    assert "\n" not in str(info.value)
    assert not out.exists() and not out.with_name("odd.gguf.partial").exists()
    assert out.with_name("odd.gguf.convert.log").is_file()


# ---------------------------------------------------------------------------------------------- quantization


def test_quant_names_are_case_insensitive() -> None:
    assert normalize_qtype("q4_k_m") == normalize_qtype("Q4_K_M") == "Q4_K_M"
    for name in ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"):
        assert normalize_qtype(name.lower()) == name
    with pytest.raises(ArteError, match="unknown GGUF quant type 'q3_xx'"):
        normalize_qtype("q3_xx")


def test_quantize_q8_0(tiny_gguf: Path, tmp_path: Path) -> None:
    res = Q.quantize_gguf(tiny_gguf, tmp_path / "tiny.q8_0.gguf", "q8_0")
    assert res.qtype == "Q8_0" and res.path.is_file()
    assert res.type_histogram == {"Q8_0": 15, "F32": 5}
    assert res.n_fallback == 0 and res.n_off_base == 0
    assert 8.4 < res.bits_per_weight < 8.6
    assert res.size_bytes == res.path.stat().st_size < tiny_gguf.stat().st_size
    assert res.source["type_histogram"] == {"F16": 15, "F32": 5}
    json.dumps(res.to_dict())


def test_full_disk_is_named_before_quantizing(tiny_gguf: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A full disk makes llama.cpp fail with "basic_ios::clear: iostream error"; the check names the folder first.
    monkeypatch.setattr("arte_edge.rundir.free_bytes", lambda _path: 1000)
    with pytest.raises(ArteError, match=r"out: the Q8_0 GGUF needs about 0\.\d GB but the disk has 0\.0 GB free"):
        Q.quantize_gguf(tiny_gguf, tmp_path / "out" / "tiny.q8_0.gguf", "q8_0")
    assert not (tmp_path / "out").exists()


def test_full_disk_is_named_before_converting(tiny_model_dir: Path, converter: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("arte_edge.rundir.free_bytes", lambda _path: 1000)
    with pytest.raises(ArteError, match=r"the f16 GGUF of .* needs about .* GB free; free space"):
        C.convert_to_gguf(tiny_model_dir, tmp_path / "x.gguf", "f16")


def test_size_estimate_is_close_to_the_written_file(tiny_model_dir: Path, tiny_gguf: Path) -> None:
    estimate = C.estimated_gguf_bytes(tiny_model_dir, "f16")
    assert 0.8 < estimate / tiny_gguf.stat().st_size < 1.3


def test_quantize_q4_k_m_reports_fallbacks(tiny_gguf: Path, tmp_path: Path) -> None:
    # Every block matrix has 64 or 128 columns, not a multiple of 256: all 14 fall back (Q4_K→Q5_0,
    # Q6_K→Q8_0); the tied embedding gets Q8_0 by the output-tensor rule (off base, not a fallback).
    res = Q.quantize_gguf(tiny_gguf, tmp_path / "tiny.q4_k_m.gguf", "Q4_K_M")
    assert res.base_type == "Q4_K"
    assert res.n_fallback == 14
    assert len(res.fallback_tensors) == 14
    assert res.fallback_tensors["blk.0.attn_q.weight"] == "q4_K->q5_0"
    assert res.n_off_base == 15
    assert "Q4_K" not in res.type_histogram
    assert sum(res.type_histogram.values()) == res.n_tensors == 20
    assert res.to_dict()["n_fallback"] == 14


def test_quantize_q4_0_has_no_shape_fallback_on_blocks(tiny_gguf: Path, tmp_path: Path) -> None:
    res = Q.quantize_gguf(tiny_gguf, tmp_path / "tiny.q4_0.gguf", "Q4_0")
    assert res.type_histogram["Q4_0"] == 14
    assert set(res.fallback_tensors) == {"token_embd.weight"}  # planned Q6_K for the tied output → Q8_0


def test_quantize_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ArteError, match="does not exist"):
        Q.quantize_gguf(tmp_path / "none.gguf", tmp_path / "out.gguf", "Q8_0")


def test_imatrix_matches_hf_activations(tiny_model_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    """blk.0's attention input is RMSNorm(embedding): position-independent, so HF gives the exact statistic."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from arte_edge.export.imatrix import compute_imatrix
    from arte_edge.export.verify import open_llama

    imatrix = compute_imatrix(tiny_gguf, CALIBRATION, tmp_path / "tiny.imatrix.gguf", chunk=64)
    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1)
               for t in __import__("gguf").GGUFReader(str(imatrix)).tensors}
    assert {f"blk.{i}.{w}.weight.in_sum2" for i in (0, 1) for w in ("attn_q", "attn_k", "attn_v", "attn_output",
                                                                   "ffn_gate", "ffn_up", "ffn_down")} \
        <= set(tensors)
    llm = open_llama(tiny_gguf, n_ctx=64, logits_all=False)
    ids = [t for text in CALIBRATION for t in llm.tokenize(text.encode(), add_bos=True, special=False)]
    llm.close()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        x = model.model.layers[0].input_layernorm(model.model.embed_tokens(torch.tensor(ids))).double().numpy()
    assert tensors["blk.0.attn_q.weight.counts"][0] == len(ids)
    mean_sq = tensors["blk.0.attn_q.weight.in_sum2"] / len(ids)
    np.testing.assert_allclose(mean_sq, (x * x).mean(0), rtol=2e-2)

    with_im = Q.quantize_gguf(tiny_gguf, tmp_path / "im.gguf", "Q4_0", imatrix=imatrix)
    without = Q.quantize_gguf(tiny_gguf, tmp_path / "plain.gguf", "Q4_0")
    assert with_im.imatrix == str(imatrix)
    assert with_im.path.read_bytes() != without.path.read_bytes()


# ---------------------------------------------------------------------------------------------- verification


def test_verify_f16_matches_hf(tiny_model_dir: Path, tiny_gguf: Path, reference: HFReference) -> None:
    from arte_edge.export.verify import verify_gguf

    report = verify_gguf(tiny_model_dir, tiny_gguf, exact=True, reference=reference)
    assert report["passed"] and report["qtype"] == "F16"
    tok = report["tokenizer"]
    assert tok["encode_mismatches"] == []
    assert tok["n_probes"] >= 15
    assert tok["chat_template_present"] and tok["chat_template_match"]
    assert tok["gguf_eos_token_id"] == tok["hf_eos_token_id"] == 2
    assert tok["gguf_add_bos"] is tok["hf_add_bos"] is False
    assert report["greedy"]["exact"] and report["greedy"]["tie_flips"] == []
    assert report["greedy"]["exact_prompts"] == report["greedy"]["n_prompts"]
    assert report["next_token"]["top1"] >= 0.99
    assert report["next_token"]["kl_mean"] < 1e-4
    json.dumps(report)


def test_verification_detects_a_different_model(tiny_model_dir: Path, converter: Path, tmp_path: Path,
                                                reference: HFReference) -> None:
    from arte_edge.export.verify import verify_gguf

    other = _random_model(tiny_model_dir, tmp_path / "seed1", seed=1)
    wrong = C.convert_to_gguf(other, tmp_path / "seed1.f16.gguf")
    with pytest.raises(VerificationError, match=r"seed1\.f16\.gguf: GGUF verification failed \(F16\): ") as info:
        verify_gguf(tiny_model_dir, wrong, exact=True, reference=reference)
    assert "\n" not in str(info.value)
    report = info.value.report  # type: ignore[attr-defined]
    assert not report["passed"] and report["tokenizer"]["encode_mismatches"] == []
    assert report["next_token"]["kl_mean"] > 1e-3


def test_verification_detects_a_norm_offset_bug(tiny_model_dir: Path, tiny_gguf: Path, tmp_path: Path,
                                                reference: HFReference) -> None:
    """A converter bug of the kind that slips through "it loads and talks": RMSNorm weights stored as 1 + w
    (Gemma's convention applied to a Llama). Argmax barely moves; the KL check must catch it."""
    import numpy as np
    from gguf import GGUFReader

    from arte_edge.export.verify import verify_gguf

    bad = tmp_path / "bad_norm.gguf"
    shutil.copyfile(tiny_gguf, bad)
    reader = GGUFReader(str(bad), "r+")
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    norm.data[...] = np.asarray(norm.data) + 1
    del reader, norm
    with pytest.raises(VerificationError, match=r"bad_norm\.gguf: GGUF verification failed \(F16\): .*KL"):
        verify_gguf(tiny_model_dir, bad, exact=True, reference=reference)


def test_thresholds_overrides() -> None:
    from arte_edge.formats import thresholds_for

    assert thresholds_for("q4_k_m") == GGUF_TYPES["Q4_K_M"].thresholds
    assert thresholds_for("Q8_0", {"min_top1": 0.5}).min_top1 == 0.5
    with pytest.raises(ArteError, match="unknown GGUF verification threshold"):
        thresholds_for("Q8_0", {"min_top_1": 0.5})
    with pytest.raises(ArteError, match="no verification thresholds for GGUF type 'Q9_9'"):
        thresholds_for("Q9_9")


# ---------------------------------------------------------------------------------------------- export + Modelfile


def test_export_gguf_f16_q8_and_q4(exported: Exported) -> None:
    out, arts = exported.out, exported.artifacts
    assert [a.qtype for a in arts] == ["Q8_0", "F16", "Q4_K_M"]
    assert sorted(exported.seen) == ["F16", "Q4_K_M", "Q8_0"]
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny.f16.Modelfile", "tiny.f16.gguf", "tiny.q4_k_m.Modelfile", "tiny.q4_k_m.gguf",
        "tiny.q8_0.Modelfile", "tiny.q8_0.gguf"]
    q4 = arts[2]
    assert q4.path == out / "tiny.q4_k_m.gguf" and q4.size_bytes == q4.path.stat().st_size
    assert q4.quant.n_fallback == 14 and q4.quant.path == q4.path
    for art in arts:
        assert art.verification is not None and art.verification["passed"], art.verification
    assert arts[1].verification is not None and arts[1].verification["greedy"]["exact"]
    assert any("fell back" in m for m in exported.messages)
    json.dumps([a.to_dict() for a in arts])


def test_export_drops_the_f16_intermediate(tiny_model_dir: Path, tiny_gguf: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(G, "convert_to_gguf", _fake_converter(tiny_gguf))
    arts = G.export_gguf(tiny_model_dir, tmp_path, ["q4_0"], "t", verify=False)
    assert [a.qtype for a in arts] == ["Q4_0"] and arts[0].verification is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.q4_0.Modelfile", "t.q4_0.gguf"]


def test_failed_verification_leaves_no_final_artifact(tiny_model_dir: Path, tiny_gguf: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from arte_edge.export import reference, verify

    def fail(*_args: object, **kwargs: object) -> dict[str, object]:
        raise VerificationError(f"{kwargs['label']}: GGUF verification failed (Q8_0): next-token top-1 0.1 < 0.95")

    monkeypatch.setattr(G, "convert_to_gguf", _fake_converter(tiny_gguf))
    monkeypatch.setattr(reference, "hf_reference", lambda *_a, **_k: object())
    monkeypatch.setattr(verify, "verify_gguf", fail)
    with pytest.raises(VerificationError, match=r"tiny\.q8_0\.gguf: GGUF verification failed"):
        G.export_gguf(tiny_model_dir, tmp_path, ["q8_0"], "tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.q8_0.unverified.gguf"]


def test_modelfile_has_template_system_and_stops(tiny_model_dir: Path) -> None:
    from arte_edge.export.modelfile import CHATML_GO_TEMPLATE, render_modelfile

    text = render_modelfile("tiny.q4_k_m.gguf", tiny_model_dir)
    assert "FROM ./tiny.q4_k_m.gguf\n" in text
    assert f'TEMPLATE """{CHATML_GO_TEMPLATE}"""' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "PARAMETER temperature " in text and "PARAMETER num_ctx 2048" in text
    assert text.count('PARAMETER stop "<|im_end|>"') == 1


def test_chatml_translation_is_checked_by_rendering() -> None:
    from arte_edge.export.modelfile import _chatml_reference, render_jinja, translate_chat_template

    qwen_like = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
                 "You are Qwen.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    chat = translate_chat_template(qwen_like)
    assert chat.family == "chatml" and chat.system == "You are Qwen." and chat.stops == ("<|im_end|>",)
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
             {"role": "user", "content": "bye"}]
    assert render_jinja(qwen_like, convo) == _chatml_reference(convo, chat.system)
    # ChatML markers but a different layout (no newline after the role): not translated.
    assert translate_chat_template(qwen_like.replace("{{ m['role'] }}\n", "{{ m['role'] }} ")).family is None
    llama3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
              "{{ m['content'] }}<|eot_id|>{% endfor %}")
    assert translate_chat_template(llama3).template is None


def test_modelfile_without_chatml_leaves_template_to_ollama(tiny_model_dir: Path, tmp_path: Path) -> None:
    from arte_edge.export.modelfile import render_modelfile

    model = _copy_model(tiny_model_dir, tmp_path / "m")
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    text = render_modelfile("m.gguf", model)
    assert "TEMPLATE" not in text.replace("# no TEMPLATE", "") and "SYSTEM" not in text
    assert 'PARAMETER stop "<|im_end|>"' in text  # the tokenizer's eos is still a stop


# ---------------------------------------------------------------------------------------------- presets


def test_presets_load() -> None:
    from arte_edge.export.presets import load_export_preset

    assert load_export_preset("edge-cpu") == ["gguf:q4_k_m", "gguf:q8_0", "onnx:int4"]
    full = load_export_preset("full")
    assert [s for s in full if s.startswith("gguf:")] == ["gguf:f16", "gguf:q8_0", "gguf:q6_k", "gguf:q5_k_m",
                                                          "gguf:q4_k_m", "gguf:q4_0"]
    assert [s for s in full if s.startswith("onnx:")] == ["onnx:fp32", "onnx:int8", "onnx:int4"]
    assert "gguf:q4_0" in load_export_preset("raspberry-pi-5")


def test_preset_errors_name_the_key(tmp_path: Path) -> None:
    from arte_edge.export.presets import load_export_preset

    bad_key = tmp_path / "a.yaml"
    bad_key.write_text("gguf: [q4_k_m]\ntflite: [int8]\n")
    with pytest.raises(ArteError, match="unknown key 'tflite'"):
        load_export_preset(bad_key)
    bad_quant = tmp_path / "b.yaml"
    bad_quant.write_text("gguf: [q4_k_m, q4_k_xl]\n")
    with pytest.raises(ArteError, match=r"gguf: unknown type 'q4_k_xl'"):
        load_export_preset(bad_quant)
    with pytest.raises(ArteError, match="unknown export preset 'nope'"):
        load_export_preset("nope")


def test_cached_gguf_reexports_only_for_another_model_or_more_verification(tiny_model_dir: Path, converter: Path,
                                                                            tmp_path: Path) -> None:
    import os
    import shutil

    from arte_edge.export.gguf import cached_gguf

    source, other, out = tmp_path / "merged", tmp_path / "other", tmp_path / "out"
    shutil.copytree(tiny_model_dir, source)
    shutil.copytree(tiny_model_dir, other)

    def export(folder: Path, verify: bool = False) -> int:
        path = cached_gguf(folder, out, "Q8_0", "m", verify=verify)
        assert path == out / "m.q8_0.gguf" and path.exists()
        return path.stat().st_mtime_ns

    first = export(source)
    assert export(source) == first  # up to date: reused
    os.utime(out / "m.q8_0.gguf", ns=(first - 10**10, first - 10**10))  # an older file is still the same export
    assert export(source) == first - 10**10
    os.utime(source / "config.json", ns=(first, first))  # the model was retrained (its files changed)
    second = export(source)
    assert second != first - 10**10 and export(source) == second
    third = export(other)  # another model under the same name
    assert third != second and export(other) == third
    assert export(other, verify=True) != third  # exported without verification: not good enough now
    assert (out / "m.q8_0.source.json").exists()
