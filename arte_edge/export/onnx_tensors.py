"""What an ONNX export stores, tensor by tensor, and how it stores the token embedding and the LM head.

Read from the protobuf alone (``onnx.load(..., load_external_data=False)``): every initializer's name, dtype,
shape and stored bytes (its external-data ``length``, else its inline bytes), summed per dtype, plus the two
largest matrices of a small decoder:

- ``embedding``: the lookup that reads ``input_ids`` (``Gather`` on a float table, or ``GatherBlockQuantized``
  on a 4-bit packed one), traced back through ``Reshape``/``Transpose``/``Cast`` to its initializer;
- ``lm_head``: the ``MatMul``/``MatMulNBits`` that produces ``logits``, and its weight initializer;
- ``shared``: whether both read the same initializer (a tied matrix stored once).

The builder's 4-bit weights are ``uint8`` initializers (two values per byte) read by ``MatMulNBits`` or
``GatherBlockQuantized`` with ``bits=4``: ``bits`` is the consuming op's, None for a plain float op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arte_edge.models.onnx_file import initializer_bytes, load_graph

LARGEST = 10  # tensors listed one by one in the summary
_PASS_THROUGH = frozenset({"Reshape", "Transpose", "Cast", "Identity", "Slice", "Add", "Squeeze", "Unsqueeze"})
_QUANTIZED_OPS = frozenset({"MatMulNBits", "GatherBlockQuantized"})


def onnx_tensors(model_path: str | Path) -> list[dict[str, Any]]:
    """Every initializer of ``model_path``: ``name, dtype, shape, bytes`` (weights in external data included)."""
    return tensor_rows(load_graph(model_path))


def tensor_rows(graph: Any) -> list[dict[str, Any]]:
    """:func:`onnx_tensors` of an already loaded ``onnx.GraphProto``."""
    return [_tensor_row(t) for t in graph.initializer]


def tensor_summary(model_path: str | Path, *, largest: int = LARGEST) -> dict[str, Any]:
    """Totals per dtype, the ``largest`` tensors, and how the embedding and LM head are stored (module docstring)."""
    graph = load_graph(model_path)
    return summarize(graph, tensor_rows(graph), largest=largest)


def summarize(graph: Any, rows: list[dict[str, Any]], *, largest: int = LARGEST) -> dict[str, Any]:
    """:func:`tensor_summary` of an already loaded ``onnx.GraphProto`` and its :func:`onnx_tensors` rows."""
    by_dtype: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = by_dtype.setdefault(row["dtype"], {"n": 0, "bytes": 0})
        entry["n"] += 1
        entry["bytes"] += row["bytes"]
    sizes = {row["name"]: row for row in rows}
    embedding = _describe(_embedding_node(graph), 0, sizes, graph)
    lm_head = _describe(_lm_head_node(graph), 1, sizes, graph)
    shared = bool(embedding and lm_head and embedding["weight"] and embedding["weight"] == lm_head["weight"])
    return {
        "n_tensors": len(rows),
        "total_bytes": sum(row["bytes"] for row in rows),
        "by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]["bytes"])),
        "largest": sorted(rows, key=lambda row: -row["bytes"])[:largest],
        "embedding": embedding,
        "lm_head": lm_head,
        "shared_embedding": shared,
    }


def _tensor_row(tensor: Any) -> dict[str, Any]:
    from onnx import TensorProto

    return {"name": tensor.name, "dtype": TensorProto.DataType.Name(tensor.data_type),
            "shape": [int(d) for d in tensor.dims], "bytes": initializer_bytes(tensor)}


def _embedding_node(graph: Any) -> Any | None:
    return next((n for n in graph.node if n.op_type in {"Gather", "GatherBlockQuantized"}
                 and len(n.input) > 1 and n.input[1] == "input_ids"), None)


def _lm_head_node(graph: Any) -> Any | None:
    """The MatMul/MatMulNBits/Gemm that ``logits`` comes from (through casts, reshapes and a bias Add)."""
    producers = {o: n for n in graph.node for o in n.output}
    value, seen = "logits", set()
    while value in producers and value not in seen:
        seen.add(value)
        node = producers[value]
        if node.op_type in {"MatMul", "MatMulNBits", "Gemm"}:
            return node
        if node.op_type not in _PASS_THROUGH:
            return None
        value = node.input[0]
    return None


def _describe(node: Any | None, index: int, sizes: dict[str, dict[str, Any]], graph: Any) -> dict[str, Any] | None:
    """Op, bits and weight initializer (traced back through pass-through ops) of the embedding or LM head."""
    if node is None or len(node.input) <= index:
        return None
    producers = {o: n for n in graph.node for o in n.output}
    value, seen = node.input[index], set()
    while value not in sizes and value in producers and value not in seen:
        seen.add(value)
        upstream = producers[value]
        if upstream.op_type not in _PASS_THROUGH or not upstream.input:
            break
        value = upstream.input[0]
    weight = sizes.get(value)
    bits = next((int(a.i) for a in node.attribute if a.name == "bits"), 4) if node.op_type in _QUANTIZED_OPS else None
    return {"op": node.op_type, "node": node.name, "bits": bits, "quantized": node.op_type in _QUANTIZED_OPS,
            "weight": weight["name"] if weight else None, "dtype": weight["dtype"] if weight else None,
            "shape": weight["shape"] if weight else None, "bytes": weight["bytes"] if weight else None}
