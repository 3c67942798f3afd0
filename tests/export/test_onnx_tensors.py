"""How an int4 ONNX export stores its token embedding and LM head, as recorded in verify.json (tiny models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("onnx_ir")

from arte_edge.export.onnx import _builder_options, read_manifest


@pytest.fixture(scope="module")
def untied_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with ``tie_word_embeddings=false``: its LM head is the embedding plus a little noise, stored
    as a second matrix, as in a GGUF-converted Qwen2.5 (token_embd and output.weight dequantized apart)."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("untied")
    config = AutoConfig.from_pretrained(str(tiny_model_dir))
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.load_state_dict(LlamaForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict(), strict=False)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        model.lm_head.weight.copy_(embed + 0.05 * embed.std() * torch.randn_like(embed))
    model.save_pretrained(str(out), safe_serialization=True)
    for item in tiny_model_dir.iterdir():
        if not (out / item.name).exists():
            shutil.copy2(item, out / item.name)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    return out


def test_int4_quantizes_an_untied_embedding_and_verify_json_records_it(untied_model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from arte_edge.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(untied_model_dir), "--format", "onnx:int4", "--out", str(out),
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    [row] = json.loads((out / "verify.json").read_text())
    verification = row["verification"]
    assert verification["passed"], verification["failures"]
    tensors = verification["tensors"]
    embedding, lm_head = tensors["embedding"], tensors["lm_head"]
    # The embedding table is a 4-bit GatherBlockQuantized lookup, not a float Gather (the builder's default);
    # the separate LM head is 8-bit (as Q4_K_M keeps output.weight at 6-8 bits).
    assert (embedding["op"], embedding["bits"], embedding["dtype"]) == ("GatherBlockQuantized", 4, "INT4")
    assert (lm_head["op"], lm_head["bits"], lm_head["dtype"]) == ("MatMulNBits", 8, "UINT8")
    assert not tensors["shared_embedding"]
    assert embedding["shape"] == [49152, 64] and embedding["bytes"] == 49152 * 64 // 2
    assert sum(d["bytes"] for d in tensors["by_dtype"].values()) == tensors["total_bytes"]
    assert all(t["dtype"] != "FLOAT" for t in tensors["largest"][:2])
    assert set(tensors["largest"][0]) == {"name", "dtype", "shape", "bytes"}
    # Every tensor, one by one, in the folder's manifest.
    manifest = read_manifest(out / f"{untied_model_dir.name}-onnx-int4")
    assert manifest["tensor_summary"] == tensors
    assert len(manifest["tensors"]) == tensors["n_tensors"]
    assert sum(t["bytes"] for t in manifest["tensors"]) == tensors["total_bytes"]


def test_int4_builder_options_quantize_the_embedding_and_keep_a_separate_head_at_8_bits() -> None:
    gather = {"op_types_to_quantize": "MatMul/Gather"}
    head8 = {"matmul_mixed_precision": "last_matmul:int8"}
    assert _builder_options("int4", None, {"tie_word_embeddings": True}) == gather  # builder shares one 4-bit matrix
    assert _builder_options("int4", None, {"tie_word_embeddings": False}) == {**head8, **gather}
    assert _builder_options("int4", {"matmul_mixed_precision": "last_matmul:int4"}, {"tie_word_embeddings": False}) \
        == {"matmul_mixed_precision": "last_matmul:int4", **gather}
    asymmetric = _builder_options("int4", {"is_symmetric": "false"}, {"tie_word_embeddings": True})
    assert asymmetric == {**head8, **gather, "is_symmetric": "false", "shared_embeddings": "false"}
    assert _builder_options("int8", None, {"tie_word_embeddings": False}) == {}  # Gather has no 8-bit form
