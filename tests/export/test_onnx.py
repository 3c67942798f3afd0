"""ONNX export through onnxruntime-genai's model builder, its verification, and the runner (tiny model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("onnx_ir")

from arte_edge.backends.onnx_genai import OnnxGenaiRunner
from arte_edge.bench.onnx_runner import run_onnx
from arte_edge.errors import ArteError
from arte_edge.export.errors import VerificationError
from arte_edge.export.onnx import (
    MANIFEST_FILE,
    OnnxArtifact,
    export_onnx,
    last_meaningful_line,
    read_manifest,
    supported_architectures,
)
from arte_edge.export.onnx_verify import verify_onnx

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def exports(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, OnnxArtifact]:
    """fp32 (threads=2), int8 and int4 exports of the tiny model, each verified by export_onnx."""
    root = tmp_path_factory.mktemp("onnx")
    messages: list[str] = []
    out = {p: export_onnx(tiny_model_dir, root / p, p, progress=messages.append, threads=2 if p == "fp32" else None)
           for p in ("fp32", "int8", "int4")}
    assert any("verifying" in m for m in messages)
    return out


def _nbits(model_path: Path) -> set[int]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}


def _copy_hf(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name not in skip:
            shutil.copy2(item, dst / item.name)
    return dst


def test_fp32_export_verifies_exactly(exports: dict[str, OnnxArtifact]) -> None:
    art = exports["fp32"]
    report = art.verification
    assert report is not None and report["passed"], report["failures"]
    assert report["greedy"]["exact"] and report["greedy"]["agreement"] == 1.0
    assert report["next_token"]["top1"] >= 0.99 and report["next_token"]["kl_mean"] < 1e-6
    assert report["tokenizer"]["encode_mismatches"] == [] and report["tokenizer"]["chat_template_match"]
    for name in ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", MANIFEST_FILE):
        assert (art.path / name).is_file(), name
    assert read_manifest(art.path)["precision"] == "fp32"
    assert not [p for p in art.path.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    genai = json.loads((art.path / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 2
    eos = genai["model"]["eos_token_id"]
    assert 2 in (eos if isinstance(eos, list) else [eos])  # <|im_end|>


def test_int4_export_loads_in_genai_and_plain_onnxruntime(exports: dict[str, OnnxArtifact]) -> None:
    import numpy as np
    import onnxruntime as ort
    import onnxruntime_genai as og

    art = exports["int4"]
    assert art.verification["passed"] and art.verification["next_token"]["top1"] >= 0.80
    assert _nbits(art.model_path) == {4}
    assert art.size_bytes < exports["fp32"].size_bytes
    # Tied embeddings: the LM head's 4-bit matrix is stored once and also serves the embedding lookup.
    tensors = art.tensors
    assert tensors["shared_embedding"] and tensors["embedding"]["op"] == "GatherBlockQuantized"
    assert (tensors["lm_head"]["op"], tensors["lm_head"]["bits"], tensors["lm_head"]["dtype"]) == ("MatMulNBits", 4,
                                                                                                   "UINT8")
    assert read_manifest(art.path)["tensor_summary"] == tensors
    og.Model(str(art.path))
    session = ort.InferenceSession(str(art.model_path), providers=["CPUExecutionProvider"])
    from arte_edge.export.onnx_verify import full_sequence_logits

    logits = full_sequence_logits(session, [1, 2, 3, 4], kv_heads=2, head_size=16)
    assert logits.shape[0] == 4 and np.isfinite(logits).all()


def test_int8_export_is_8bit_weight_only(exports: dict[str, OnnxArtifact]) -> None:
    art = exports["int8"]
    assert art.verification["passed"] and art.verification["next_token"]["top1"] >= 0.95
    assert _nbits(art.model_path) == {8}
    # GatherBlockQuantized is 4-bit only: int8 keeps a float embedding beside its 8-bit LM head.
    assert (art.tensors["embedding"]["op"], art.tensors["embedding"]["dtype"]) == ("Gather", "FLOAT")
    assert art.tensors["lm_head"]["bits"] == 8 and not art.tensors["shared_embedding"]


def test_refuses_unknown_architecture(tiny_model_dir: Path, tmp_path: Path) -> None:
    hf = _copy_hf(tiny_model_dir, tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (hf / "config.json").write_text(json.dumps(config))
    assert "LlamaForCausalLM" in supported_architectures()
    with pytest.raises(ArteError, match="MambaForCausalLM is not supported"):
        export_onnx(hf, tmp_path / "out", "int4")
    assert not (tmp_path / "out").exists()


def test_refuses_missing_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    hf = _copy_hf(tiny_model_dir, tmp_path / "hf", skip=("tokenizer.json",))
    with pytest.raises(ArteError, match="no tokenizer"):
        export_onnx(hf, tmp_path / "out", "fp32")


def test_refuses_to_overwrite_a_foreign_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ArteError, match="not an arte-edge ONNX export"):
        export_onnx(tiny_model_dir, tmp_path / "out", "fp32")


def test_builder_failure_names_the_cause(tiny_model_dir: Path, tmp_path: Path) -> None:
    hf = _copy_hf(tiny_model_dir, tmp_path / "hf")
    (hf / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArteError, match="model builder failed") as info:
        export_onnx(hf, tmp_path / "out", "fp32")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "out.builder.log").is_file()


def test_last_meaningful_line_prefers_the_exception() -> None:
    stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad config\n"
              "Loading weights: 100%|██| 20/20 [00:00<00:00, 10.0it/s]\n")
    assert last_meaningful_line(stderr) == "ValueError: bad config"
    assert last_meaningful_line("step 1\nstep 2\n 50%|█ | 1/2 [00:01<00:01, 1.00it/s]") == "step 2"


def test_verification_catches_a_wrong_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    other = _copy_hf(tiny_model_dir, tmp_path / "other", skip=("model.safetensors",))
    torch.manual_seed(1)
    LlamaForCausalLM(AutoConfig.from_pretrained(str(tiny_model_dir))).save_pretrained(str(other))
    wrong = export_onnx(other, tmp_path / "wrong", "fp32", verify=False)
    with pytest.raises(VerificationError, match="wrong-model: ONNX verification failed") as info:
        verify_onnx(tiny_model_dir, wrong.path, precision="fp32", label="wrong-model")
    assert "\n" not in str(info.value)
    report = verify_onnx(tiny_model_dir, wrong.path, precision="fp32", raise_on_failure=False)
    # Random tied-embedding models mostly repeat their input, so top-1 can stay high; KL cannot.
    assert not report["passed"] and report["next_token"]["kl_mean"] > 1e-3
    assert any("KL" in failure for failure in report["failures"])


def test_runner_generates_and_stops_on_eos(exports: dict[str, OnnxArtifact], tmp_path: Path) -> None:
    with OnnxGenaiRunner(exports["int4"].path, threads=1) as runner:
        first = runner.generate(CHAT, max_new_tokens=6)
        assert first.n_generated == 6 and first.n_prompt_tokens > 5
        assert first.ttft_s > 0 and first.decode_s > 0
        t0 = next(runner.generate_ids(runner.encode(CHAT), 1))
    # Make the model's own first greedy token the eos: generation must end right there, text empty.
    folder = shutil.copytree(exports["int4"].path, tmp_path / "eos")
    genai = json.loads((folder / "genai_config.json").read_text())
    genai["model"]["eos_token_id"] = [t0, 2]
    (folder / "genai_config.json").write_text(json.dumps(genai))
    with OnnxGenaiRunner(folder, threads=1) as runner:
        stopped = runner.generate(CHAT, max_new_tokens=6)
    assert (stopped.text, stopped.n_generated, stopped.decode_s) == ("", 1, 0.0)


def test_runner_cuts_at_stop_string(exports: dict[str, OnnxArtifact]) -> None:
    with OnnxGenaiRunner(exports["fp32"].path, threads=1) as runner:
        full = runner.generate("The capital of France is", max_new_tokens=8)
        assert full.text
        stop = full.text[len(full.text) // 2:][:3] or full.text
        cut = runner.generate("The capital of France is", max_new_tokens=8, stop=[stop])
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.n_generated <= full.n_generated


def test_run_onnx_reports_bench_samples(exports: dict[str, OnnxArtifact]) -> None:
    result = run_onnx(exports["int4"].path, threads=1, prompt_tokens=16, gen_tokens=4, repetitions=2, warmup=1)
    assert len(result["pp_s"]) == len(result["tg_s"]) == len(result["ttft_s"]) == 2
    assert len(result["tpot_s"]) == 2 * 3 and result["model_size_bytes"] > 0
