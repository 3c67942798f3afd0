"""Bytes of weights an ONNX decoder reads per generated token, from its initializers (never the file size).

Every initializer counts in full, except a table that is only looked up by row: an initializer (or its
row-preserving ``Cast``/``Identity``/``Reshape``) consumed only as the data of a ``Gather`` on axis 0, as the
data, scales or zero points of ``GatherBlockQuantized`` (gather axis 0), or as the ``cos_cache``/``sin_cache`` of
``GroupQueryAttention``/``RotaryEmbedding`` (rows indexed by position). Batch-1 decode reads one row of such a
table per token (the token-embedding lookup, the rotary row of the new position), so it counts ``bytes ÷ rows``.
A table that also feeds anything else (the LM head's ``MatMul``/``MatMulNBits`` when embeddings are tied or
shared, a ``Transpose``) is read in full.

Sizes come from the protobuf alone (``onnx.load(..., load_external_data=False)``): the ``length`` of each
external-data entry (onnxruntime-genai's builder writes every weight to ``model.onnx.data``), else the inline
bytes, else dims × element size. ``Constant`` nodes are not weights (shape constants) and are not counted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arte_edge.models.onnx_file import initializer_bytes, load_graph

ROW_PRESERVING = frozenset({"Identity", "Cast", "Reshape"})  # followed through (input 0) to the real consumer
# (domain, op) -> (inputs read by row, the attribute naming the row axis, which must be 0; None: always rows)
ROW_LOOKUPS: dict[tuple[str, str], tuple[tuple[int, ...], str | None]] = {
    ("", "Gather"): ((0,), "axis"),
    ("com.microsoft", "GatherBlockQuantized"): ((0, 2, 3), "gather_axis"),  # data, scales, zero points
    ("com.microsoft", "GroupQueryAttention"): ((7, 8), None),  # cos_cache, sin_cache
    ("com.microsoft", "RotaryEmbedding"): ((2, 3), None),
    ("", "RotaryEmbedding"): ((1, 2), None),
}


@dataclass(frozen=True)
class OnnxWeights:
    """What one decode step reads from an ONNX graph's initializers.

    ``gathered`` maps each initializer counted as one row per token to its number of rows.
    """

    total_bytes: int
    read_bytes: int
    gathered: dict[str, int]
    n_initializers: int


def onnx_weights(model_path: Path) -> OnnxWeights:
    """Sum the initializers of ``model_path`` (external data included) and the bytes one decode token reads."""
    return weights_of_graph(load_graph(model_path))


def weights_of_graph(graph: Any) -> OnnxWeights:
    """:class:`OnnxWeights` of an ``onnx.GraphProto`` (its subgraphs' initializers and consumers included)."""
    graphs = list(_graphs(graph))
    tensors = {t.name: t for g in graphs for t in g.initializer}
    sizes = {name: initializer_bytes(t) for name, t in tensors.items()}
    gathered = gathered_initializers(graph)
    read = sum(-(-sizes[name] // gathered[name]) if name in gathered else size for name, size in sizes.items())
    return OnnxWeights(total_bytes=sum(sizes.values()), read_bytes=read, gathered=gathered,
                       n_initializers=len(tensors))


def gathered_initializers(graph: Any) -> dict[str, int]:
    """``{initializer name: rows}`` of the initializers read one row per token (see the module docstring)."""
    graphs = list(_graphs(graph))
    nodes = [n for g in graphs for n in g.node]
    consumers: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for node in nodes:
        for i, name in enumerate(node.input):
            if name:
                consumers[name].append((node, i))
    constants = _constant_values(graphs)
    outputs = {o.name for g in graphs for o in g.output}
    out: dict[str, int] = {}
    for g in graphs:
        for t in g.initializer:
            rows = int(t.dims[0]) if len(t.dims) > 1 else 0  # a 1-D tensor is no table
            if rows > 1 and _only_row_lookups(t.name, rows, consumers, constants, outputs):
                out[t.name] = rows
    return out


def _only_row_lookups(name: str, rows: int, consumers: dict[str, list[tuple[Any, int]]],
                      constants: dict[str, list[int]], outputs: set[str]) -> bool:
    """Whether every use of ``name`` (through row-preserving ops) is a row lookup on axis 0."""
    frontier, seen, uses = [name], set(), 0
    while frontier:
        value = frontier.pop()
        if value in seen:
            continue
        seen.add(value)
        if value in outputs:
            return False
        for node, index in consumers.get(value, []):
            uses += 1
            if node.op_type in ROW_PRESERVING and index == 0 and _keeps_rows(node, rows, constants):
                frontier.extend(o for o in node.output if o)
                continue
            inputs, axis = ROW_LOOKUPS.get((_domain(node), node.op_type), ((), None))
            if index not in inputs or (axis is not None and _attr(node, axis, 0) != 0):
                return False
    return uses > 0


def _domain(node: Any) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _keeps_rows(node: Any, rows: int, constants: dict[str, list[int]]) -> bool:
    if node.op_type != "Reshape":
        return True
    shape = constants.get(node.input[1]) if len(node.input) > 1 else None
    return bool(shape) and shape[0] in (rows, 0)  # 0 copies the input's first dimension


def _attr(node: Any, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _constant_values(graphs: list[Any]) -> dict[str, list[int]]:
    """Small integer constants (``Constant`` nodes and inline initializers) by name: Reshape targets."""
    from onnx import TensorProto, numpy_helper

    values: dict[str, list[int]] = {}
    candidates = [(n.output[0], a.t) for g in graphs for n in g.node if n.op_type == "Constant" and n.output
                  for a in n.attribute if a.name == "value"]
    candidates += [(t.name, t) for g in graphs for t in g.initializer]
    for name, tensor in candidates:
        if (tensor.data_type == TensorProto.INT64 and tensor.data_location != TensorProto.EXTERNAL
                and len(tensor.dims) == 1 and tensor.dims[0] <= 16):
            values[name] = [int(v) for v in numpy_helper.to_array(tensor).tolist()]
    return values


def _graphs(graph: Any) -> Any:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def decoder_model_path(folder: Path) -> Path | None:
    """The decoder's ``.onnx`` file: a file path as is, else ``genai_config.json``'s ``model.decoder.filename``,
    else ``model.onnx`` (None when there is none)."""
    if folder.is_file():
        return folder
    import contextlib
    import json

    filename = "model.onnx"
    genai = folder / "genai_config.json"
    if genai.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            filename = json.loads(genai.read_text(encoding="utf-8"))["model"]["decoder"].get("filename") or filename
    path = folder / filename
    return path if path.is_file() else None
