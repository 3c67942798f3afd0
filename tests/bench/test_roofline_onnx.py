"""Bytes read per decode token of ONNX graphs, from their initializers (hand-made graphs: fast; the
onnxruntime-genai builder's exports of the tiny model against its GGUF: a few seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arte_edge.bench.devices import load_device
from arte_edge.bench.onnx_weights import onnx_weights
from arte_edge.bench.roofline import assess, gguf_shape, model_shape, onnx_shape
from arte_edge.errors import ArteError

V, D = 50, 8  # vocabulary rows, hidden size
F32 = 4


def _init(name: str, *dims: int, dtype: str = "float32"):
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(len(name))
    return numpy_helper.from_array((rng.normal(size=dims) * 10).astype(dtype), name)


def _const(name: str, values: list[int]):
    import numpy as np
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64)))


def _save(folder: Path, nodes: list, inits: list, *, genai: bool = True) -> Path:
    """Write ``folder/model.onnx`` with every initializer in ``model.onnx.data`` (and a genai_config.json)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    if genai:
        (folder / "genai_config.json").write_text(json.dumps({"model": {"context_length": 256, "decoder": {
            "num_hidden_layers": 1, "num_key_value_heads": 1, "head_size": 8, "filename": "model.onnx"}}}))
    return folder


def _matmul_head(x: str, w: str):
    from onnx import helper

    return helper.make_node("MatMul", [x, w], ["logits"])


def test_gathered_embedding_counts_one_row(tmp_path: Path) -> None:
    from onnx import helper

    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["x"]), _matmul_head("x", "head")]
    folder = _save(tmp_path / "m", nodes, [_init("embed", V, D), _init("head", D, V)])
    assert (folder / "model.onnx").stat().st_size < 1000 < (folder / "model.onnx.data").stat().st_size
    shape = onnx_shape(folder)
    assert shape.weight_bytes == 2 * V * D * F32  # the tensors, from the external-data lengths
    assert shape.weight_read_bytes == V * D * F32 + D * F32  # the head in full, one row of the table
    assert shape.gathered == ("embed",)
    assert (shape.n_layers, shape.n_kv_heads, shape.head_dim, shape.context_length) == (1, 1, 8, 256)
    estimate = assess(shape, load_device("raspberry-pi-5"), context=128, gen_tokens=0)
    assert estimate["shape"]["gathered"] == ("embed",)
    assert estimate["roofline"]["bytes_per_token"] == shape.weight_read_bytes


def test_tied_embedding_is_read_in_full(tmp_path: Path) -> None:
    from onnx import helper

    # The builder's fp32 tied layout: one [D, V] matrix, transposed for the lookup and used as the LM head.
    nodes = [helper.make_node("Transpose", ["head"], ["table"], perm=[1, 0]),
             helper.make_node("Gather", ["table", "input_ids"], ["x"]), _matmul_head("x", "head")]
    shape = onnx_shape(_save(tmp_path / "m", nodes, [_init("head", D, V)]))
    assert shape.weight_bytes == shape.weight_read_bytes == V * D * F32 and shape.gathered == ()
    # The same table fed directly to Gather and MatMul (no Transpose) is read in full too.
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["x"]),
             helper.make_node("MatMul", ["x", "embed"], ["logits"])]
    shape = onnx_shape(_save(tmp_path / "m2", nodes, [_init("embed", V, D)]))
    assert shape.weight_read_bytes == V * D * F32 and shape.gathered == ()


def _block_quantized(name: str) -> list:
    return [_init(f"{name}_Q4", V, 1, D // 2, dtype="uint8"), _init(f"{name}_scales", V, 1)]


def test_gather_block_quantized_with_its_scales(tmp_path: Path) -> None:
    from onnx import helper

    # int4 with a separate LM head: the 4-bit table and its scales are looked up by row.
    nodes = [helper.make_node("Reshape", ["emb_Q4", "shape"], ["emb_2d"]), _const("shape", [V, D // 2]),
             helper.make_node("GatherBlockQuantized", ["emb_2d", "input_ids", "emb_scales"], ["x"],
                              domain="com.microsoft", block_size=16, bits=4),
             _matmul_head("x", "head")]
    shape = onnx_shape(_save(tmp_path / "m", nodes, [*_block_quantized("emb"), _init("head", D, V)]))
    table = V * (D // 2) + V * F32
    assert shape.weight_bytes == table + D * V * F32
    assert shape.weight_read_bytes == D // 2 + F32 + D * V * F32
    assert shape.gathered == ("emb_Q4", "emb_scales")


def test_shared_block_quantized_table_is_read_in_full(tmp_path: Path) -> None:
    from onnx import helper

    # The builder's int4 tied layout: MatMulNBits (the LM head) and GatherBlockQuantized share one matrix.
    nodes = [_const("shape", [V, D // 2]), helper.make_node("Reshape", ["lm_Q4", "shape"], ["emb_2d"]),
             helper.make_node("GatherBlockQuantized", ["emb_2d", "input_ids", "lm_scales"], ["x"],
                              domain="com.microsoft", block_size=16, bits=4),
             helper.make_node("MatMulNBits", ["x", "lm_Q4", "lm_scales"], ["logits"], domain="com.microsoft",
                              K=D, N=V, bits=4, block_size=16)]
    shape = onnx_shape(_save(tmp_path / "m", nodes, _block_quantized("lm")))
    assert shape.weight_bytes == shape.weight_read_bytes == V * (D // 2) + V * F32 and shape.gathered == ()


def test_row_lookups_that_do_not_hold(tmp_path: Path) -> None:
    from onnx import helper

    # A Reshape that changes the number of rows, and a Gather on axis 1, are not one-row lookups.
    nodes = [_const("flat", [V * D // 2, 2]), helper.make_node("Reshape", ["a", "flat"], ["a2"]),
             helper.make_node("Gather", ["a2", "input_ids"], ["x"]),
             helper.make_node("Gather", ["b", "input_ids"], ["y"], axis=1),
             helper.make_node("Add", ["x", "y"], ["logits"])]
    weights = onnx_weights(_save(tmp_path / "m", nodes, [_init("a", V, D), _init("b", V, D)]) / "model.onnx")
    assert weights.read_bytes == weights.total_bytes == 2 * V * D * F32 and weights.gathered == {}


def test_onnx_file_path_and_damaged_file(tmp_path: Path) -> None:
    from onnx import helper

    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["x"]), _matmul_head("x", "head")]
    folder = _save(tmp_path / "m", nodes, [_init("embed", V, D), _init("head", D, V)], genai=False)
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 2,
                                                    "hidden_size": 8}))
    assert model_shape(folder, "onnx").gathered == ("embed",)
    assert onnx_shape(folder / "model.onnx").weight_read_bytes == V * D * F32 + D * F32
    (folder / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ArteError, match="unreadable ONNX"):
        onnx_shape(folder)


# ---- the onnxruntime-genai builder's exports of the tiny model against its GGUF ---------------------------


def _tensor_sum_onnx(folder: Path) -> int:
    """Bytes of every initializer, loaded with its external data (independent of the estimate's reading)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


@pytest.fixture(scope="module")
def tiny_exports(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """f32 GGUF, and fp32 ONNX with the embedding shared with the LM head (the builder's default for a tied
    model) and not shared (``shared_embeddings=false``), plus the default int4 ONNX (shared 4-bit matrix)."""
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("onnx_ir")
    from arte_edge.export.converter import convert_to_gguf
    from arte_edge.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("roofline_exports")
    out = {"gguf": convert_to_gguf(tiny_model_dir, root / "tiny.f32.gguf", "f32")}
    for key, precision, options in (("fp32", "fp32", None), ("fp32_unshared", "fp32", {"shared_embeddings": "false"}),
                                    ("int4", "int4", None)):
        out[key] = export_onnx(tiny_model_dir, root / key, precision, verify=False, builder_options=options).path
    return out


def test_onnx_and_gguf_of_one_model_agree_with_their_tensors(tiny_model_dir: Path,
                                                             tiny_exports: dict[str, Path]) -> None:
    import numpy as np
    from gguf import GGUFReader

    hf_bytes = sum(np.asarray(t.data).nbytes for t in GGUFReader(str(tiny_exports["gguf"])).tensors)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    gguf = gguf_shape(tiny_exports["gguf"])
    # Tied: llama.cpp reads token_embd as the output layer, so every tensor is read each token.
    assert gguf.weight_bytes == gguf.weight_read_bytes == hf_bytes and gguf.gathered == ()

    shared = onnx_shape(tiny_exports["fp32"])
    rotary = 2 * config["max_position_embeddings"] * (hidden // config["num_attention_heads"] // 2) * F32
    assert shared.weight_bytes == _tensor_sum_onnx(tiny_exports["fp32"]) == hf_bytes + rotary
    # Same weights read as the GGUF; the rotary cos/sin caches (GroupQueryAttention) are read one row each.
    assert shared.gathered == ("cos_cache", "sin_cache")
    rotary_rows = rotary // config["max_position_embeddings"]
    assert shared.weight_read_bytes == gguf.weight_read_bytes + rotary_rows

    unshared = onnx_shape(tiny_exports["fp32_unshared"])
    table = vocab * hidden * F32
    assert unshared.weight_bytes == _tensor_sum_onnx(tiny_exports["fp32_unshared"]) == hf_bytes + rotary + table
    assert "model.embed_tokens.weight" in unshared.gathered
    # The untied copy of the table is read one row per token: still the GGUF's bytes, plus one row.
    assert unshared.weight_read_bytes == gguf.weight_read_bytes + rotary_rows + hidden * F32

    int4 = onnx_shape(tiny_exports["int4"])
    assert int4.weight_bytes == _tensor_sum_onnx(tiny_exports["int4"])
    assert int4.gathered == ("cos_cache", "sin_cache")  # the shared 4-bit table feeds the LM head: in full
    assert int4.weight_read_bytes == int4.weight_bytes - rotary + rotary_rows
