"""Importance matrices: llama.cpp's imatrix algorithm, collected through the eval callback of the C API.

``compute_imatrix`` writes the same statistic and file layout as llama.cpp's ``llama-imatrix`` tool (which
llama-cpp-python does not build); ``imatrix_entries`` hands such a file to the quantizer.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.export.llama_log import capture_llama_log, last_error
from arte_edge.llama_build import check_llama_build
from arte_edge.rundir import partial_path

Progress = Callable[[str], None]


def compute_imatrix(gguf_path: str | Path, texts: Sequence[str], out: str | Path, *, chunk: int = 512,
                    threads: int | None = None, progress: Progress | None = None) -> Path:
    """Compute an importance matrix for ``gguf_path`` on calibration ``texts``; write it as GGUF to ``out``.

    Same statistic and file layout as llama.cpp's ``llama-imatrix`` tool (which llama-cpp-python does not
    build): for every weight matrix ``blk.*`` the per-input-column sum of squared activations
    (``<name>.in_sum2``) and the number of rows seen (``<name>.counts``), collected through the scheduler's
    eval callback of the C API while the model runs the texts in chunks of ``chunk`` tokens. Dense models
    only (MoE expert matmuls are not collected).
    """
    import llama_cpp
    import numpy as np

    gguf_path, out = Path(gguf_path), Path(out)
    say = progress or (lambda _m: None)
    ggml = _ggml_lib()
    stats: dict[str, list[Any]] = {}  # name -> [sum of squares (float64, ne0), rows seen]
    errors: list[str] = []

    def collect(t_ptr: int, ask: bool, _user: int) -> bool:
        try:
            t = ctypes.cast(t_ptr, ctypes.POINTER(_GgmlTensor)).contents
            if ggml.ggml_op_name(t.op) != b"MUL_MAT" or not t.src[0] or not t.src[1]:
                return not ask  # only matmuls; returning False when not asking would abort the graph
            src0, src1 = t.src[0].contents, t.src[1].contents
            name = _filter_tensor_name(src0.name.decode("utf-8", "replace"))
            if ask:
                return name.startswith("blk.") and src1.type == 0 and src0.ne[2] * src0.ne[3] == 1  # F32
            nbytes = ggml.ggml_nbytes(t.src[1])
            raw = np.empty(nbytes, dtype=np.uint8)
            ggml.ggml_backend_tensor_get(t.src[1], raw.ctypes.data_as(ctypes.c_void_p), 0, nbytes)
            x = np.lib.stride_tricks.as_strided(raw.view(np.float32), shape=tuple(reversed(src1.ne[:4])),
                                                strides=tuple(reversed(src1.nb[:4])), writeable=False)
            x = x.reshape(-1, src1.ne[0]).astype(np.float64)
            entry = stats.setdefault(name, [np.zeros(src1.ne[0]), 0])
            entry[0] += np.einsum("ij,ij->j", x, x)
            entry[1] += x.shape[0]
        except Exception as exc:  # an exception must not cross the C boundary
            errors.append(f"{type(exc).__name__}: {exc}")
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(collect)
    chunks = _imatrix_chunks(gguf_path, texts, chunk, callback, threads, say)
    if errors:
        raise ArteError(f"{gguf_path}: importance matrix collection failed: {errors[0]}")
    if not stats or not np.all([np.isfinite(v[0]).all() for v in stats.values()]):
        raise ArteError(f"{gguf_path}: importance matrix is empty or not finite; give longer calibration texts")
    _write_imatrix(out, stats, chunks, chunk, gguf_path)
    say(f"importance matrix: {len(stats)} tensors from {chunks} chunk(s) of {chunk} tokens")
    return out


class _GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` of ggml.h (checked against ``ggml_tensor_overhead()`` before use)."""


_GgmlTensor._fields_ = [
    ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
    ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32), ("src", ctypes.POINTER(_GgmlTensor) * 10),
    ("view_src", ctypes.POINTER(_GgmlTensor)), ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8),
]
_GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type + 4 bytes padding


def _ggml_lib() -> Any:
    """libggml-base next to libllama, with the few functions compute_imatrix needs typed."""
    import llama_cpp
    from llama_cpp import llama_cpp as low

    base = Path(low._base_path)
    candidates = [base / n for n in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll")]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        raise ArteError(f"{base}: no libggml-base next to libllama; reinstall llama-cpp-python")
    lib = ctypes.CDLL(str(path))
    tensor_p = ctypes.POINTER(_GgmlTensor)
    lib.ggml_op_name.argtypes, lib.ggml_op_name.restype = [ctypes.c_int], ctypes.c_char_p
    lib.ggml_nbytes.argtypes, lib.ggml_nbytes.restype = [tensor_p], ctypes.c_size_t
    lib.ggml_tensor_overhead.argtypes, lib.ggml_tensor_overhead.restype = [], ctypes.c_size_t
    lib.ggml_backend_tensor_get.argtypes = [tensor_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    if lib.ggml_tensor_overhead() - _GGML_OBJECT_SIZE != ctypes.sizeof(_GgmlTensor):
        raise ArteError(f"llama-cpp-python {llama_cpp.__version__}: struct ggml_tensor layout changed; "
                        "importance matrices are not supported with this version (quantize without one)")
    return lib


def _filter_tensor_name(name: str) -> str:
    # llama.cpp names some weight views "prefix#name#suffix"; the weight is the middle part
    parts = name.split("#")
    return parts[1] if len(parts) > 1 else name


def _imatrix_chunks(gguf_path: Path, texts: Sequence[str], chunk: int, callback: Any,
                    threads: int | None, say: Progress) -> int:
    """Run ``texts`` through the model in chunks with ``callback`` as the eval callback; the chunk count."""
    import llama_cpp

    check_llama_build()
    with capture_llama_log() as log:
        model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(),
                                                     llama_cpp.llama_model_default_params())
        if not model:
            raise ArteError(f"{gguf_path}: llama.cpp cannot load it ({last_error(log)})")
        try:
            tokens = _tokenize_all(model, texts)
            if len(tokens) < 2:
                raise ArteError("importance matrix: calibration texts are empty; give at least a few sentences")
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = chunk
            # 1 by default: ggml's spin-waiting threads collapse on a shared machine (see reference.DEFAULT_THREADS)
            params.n_threads = params.n_threads_batch = threads or 1
            params.cb_eval, params.cb_eval_user_data = callback, None
            ctx = llama_cpp.llama_init_from_model(model, params)
            if not ctx:
                raise ArteError(f"{gguf_path}: llama.cpp could not create a context ({last_error(log)})")
            try:
                return _decode_chunks(ctx, tokens, chunk, say)
            finally:
                llama_cpp.llama_free(ctx)
        finally:
            llama_cpp.llama_model_free(model)


def _tokenize_all(model: Any, texts: Sequence[str]) -> list[int]:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(model)
    tokens: list[int] = []
    for text in texts:
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)
        tokens.extend(buf[: max(n, 0)])
    return tokens


def _decode_chunks(ctx: Any, tokens: list[int], chunk: int, say: Progress) -> int:
    import llama_cpp

    n_chunks = 0
    for start in range(0, len(tokens), chunk):
        part = tokens[start:start + chunk]
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        arr = (llama_cpp.llama_token * len(part))(*part)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(part))) != 0:
            raise ArteError("importance matrix: llama.cpp failed to evaluate a calibration chunk")
        n_chunks += 1
        say(f"importance matrix: chunk {n_chunks}/{(len(tokens) + chunk - 1) // chunk}")
    return n_chunks


def _write_imatrix(out: Path, stats: dict[str, list[Any]], chunks: int, chunk: int, source: Path) -> None:
    import gguf
    import numpy as np

    partial = partial_path(out)
    writer = gguf.GGUFWriter(str(partial), arch="imatrix")
    writer.add_type("imatrix")
    writer.add_array(gguf.Keys.IMatrix.DATASETS, [source.name])
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, chunks)
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, chunk)
    for name in sorted(stats):
        sums, rows = stats[name]
        writer.add_tensor(f"{name}.in_sum2", np.asarray(sums, dtype=np.float32)[None, :])
        writer.add_tensor(f"{name}.counts", np.asarray([[rows]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, out)


def imatrix_entries(path: Path) -> tuple[Any, list[Any]]:
    """The imatrix file as a NULL-terminated ``llama_model_imatrix_data`` array (+ the buffers it points to).

    Values are mean squared activations (``in_sum2 / counts``), as llama-quantize computes them.
    """
    import llama_cpp
    import numpy as np
    from gguf import GGUFReader

    if not path.is_file():
        raise ArteError(f"{path}: importance matrix file does not exist; compute it with compute_imatrix")
    reader = GGUFReader(str(path))
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    names = sorted(n.removesuffix(".in_sum2") for n in tensors if n.endswith(".in_sum2"))
    if not names:
        raise ArteError(f"{path}: not an importance matrix GGUF (no *.in_sum2 tensors)")
    keep: list[Any] = []
    array = (llama_cpp.llama_model_imatrix_data * (len(names) + 1))()
    for i, name in enumerate(names):
        sums = tensors[f"{name}.in_sum2"].reshape(-1)
        count = float(tensors[f"{name}.counts"].reshape(-1)[0])
        values = np.ascontiguousarray(sums / count if count > 0 else np.ones_like(sums), dtype=np.float32)
        encoded = name.encode()
        keep += [values, encoded]
        array[i].name = encoded
        array[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        array[i].size = values.size
    return array, keep
