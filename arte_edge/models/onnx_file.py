"""Reading ONNX files without their weights: the graph, and each initializer's stored size (external data included).

Shared by the export (per-tensor dtypes and sizes in ``verify.json``) and the bench (bytes read per token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError

FOUR_BIT_TYPES = frozenset({"INT4", "UINT4", "FLOAT4E2M1"})


def load_model_proto(model_path: str | Path) -> Any:
    """The ``onnx.ModelProto`` of ``model_path`` without its external weights (ArteError when unreadable)."""
    import onnx

    try:
        return onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, ...: a damaged, truncated or missing file
        raise ArteError(f"{model_path}: unreadable ONNX ({type(exc).__name__}: {exc}); re-export it") from exc


def load_graph(model_path: str | Path) -> Any:
    """The ``onnx.GraphProto`` of ``model_path`` without its external weights (ArteError when unreadable)."""
    return load_model_proto(model_path).graph


def initializer_bytes(tensor: Any) -> int:
    """Stored bytes of one ``TensorProto``: its external-data ``length``, else its inline bytes, else dims × size."""
    from onnx import TensorProto

    external = {e.key: e.value for e in tensor.external_data}
    if tensor.data_location == TensorProto.EXTERNAL and "length" in external:
        return int(external["length"])
    if tensor.raw_data:
        return len(tensor.raw_data)
    n = 1
    for d in tensor.dims:
        n *= int(d)
    if tensor.data_type == TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    if TensorProto.DataType.Name(tensor.data_type) in FOUR_BIT_TYPES:
        return (n + 1) // 2  # two 4-bit values per byte
    from onnx.helper import tensor_dtype_to_np_dtype

    return n * tensor_dtype_to_np_dtype(tensor.data_type).itemsize
