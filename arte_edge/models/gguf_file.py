"""Read GGUF headers (metadata and tensor table) and validate files before anyone loads them.

A small streaming parser instead of ``gguf.GGUFReader``: the reader builds numpy views for every
string of a 150k-token vocabulary (~8 s for Qwen2.5), while validation and ``info`` only need the
scalar metadata and the tensor extents. Large arrays are skipped unless asked for.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from arte_edge.errors import ArteError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Arrays longer than this are returned as their length only, unless their key is requested.
_SMALL_ARRAY = 64

# GGUF value types -> struct format (little endian); 8 = string, 9 = array.
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Truncated(Exception):
    """The header itself ends early."""


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table; ``offset`` is relative to the data section."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def type_name(self) -> str:
        """The ggml type's name (``F16``, ``Q4_K``); ValueError for a type the gguf package does not know."""
        from gguf.constants import GGMLQuantizationType

        try:
            return GGMLQuantizationType(self.ggml_type).name
        except ValueError:
            raise ValueError(f"tensor {self.name!r} has unknown ggml type {self.ggml_type}") from None


@dataclass
class GGUFHeader:
    """Parsed header of a GGUF file."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_key(self, suffix: str) -> Any:
        """``metadata['<arch>.<suffix>']`` (e.g. ``context_length``), or None."""
        return self.metadata.get(f"{self.architecture}.{suffix}")


class _Stream:
    def __init__(self, fh: BinaryIO):
        self.fh = fh

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise _Truncated
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.read(self.unpack("<Q")).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        self.fh.seek(n, 1)

    def value(self, vtype: int, keep_array: bool) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype}")
        etype, count = self.unpack("<I"), self.unpack("<Q")
        if keep_array or count <= _SMALL_ARRAY:
            return [self.value(etype, True) for _ in range(count)]
        if etype in _SCALARS:
            self.fh.seek(struct.calcsize(_SCALARS[etype]) * count, 1)
        elif etype == _STRING:
            for _ in range(count):
                self.skip_string()
        else:
            for _ in range(count):
                self.value(etype, False)
        return _ArrayLen(count)


class _ArrayLen(int):
    """Length of a large array whose items were skipped."""


def read_header(path: Path, arrays: tuple[str, ...] = ()) -> GGUFHeader:
    """Parse the header of ``path``; large arrays are kept only for keys listed in ``arrays``.

    Raises ArteError for a missing file, a wrong magic, an unsupported version or a header that ends
    early; tensor data extents are checked by ``validate_gguf``.
    """
    path = Path(path)
    if not path.is_file():
        raise ArteError(f"{path}: no such GGUF file; check the path or pull the model again")
    size = path.stat().st_size
    with path.open("rb") as fh:
        magic = fh.read(4)
        if magic != GGUF_MAGIC:
            raise ArteError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF'); pass a .gguf model file")
        stream = _Stream(fh)
        try:
            version = stream.unpack("<I")
            if version not in (2, 3):
                raise ArteError(f"{path}: unsupported GGUF version {version} (need 2 or 3); re-export the model")
            n_tensors, n_kv = stream.unpack("<Q"), stream.unpack("<Q")
            if n_tensors > 1_000_000 or n_kv > 1_000_000:
                raise ArteError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys); re-download it")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = stream.string()
                metadata[key] = stream.value(stream.unpack("<I"), key in arrays)
            tensors = [_tensor_info(stream) for _ in range(n_tensors)]
            end = fh.tell()
        except _Truncated:
            raise ArteError(
                f"{path}: truncated GGUF (header ends early at {size} bytes); re-download or re-export it"
            ) from None
        except (ValueError, UnicodeDecodeError, OverflowError) as exc:
            raise ArteError(f"{path}: corrupt GGUF header ({exc}); re-download or re-export it") from None
    align = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
    data_offset = -(-end // align) * align
    return GGUFHeader(path, version, metadata, tensors, data_offset, size)


def _tensor_info(stream: _Stream) -> TensorInfo:
    name = stream.string()
    n_dims = stream.unpack("<I")
    if n_dims > 8:
        raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
    shape = tuple(stream.unpack("<Q") for _ in range(n_dims))
    return TensorInfo(name, shape, stream.unpack("<I"), stream.unpack("<Q"))


def tensor_nbytes(info: TensorInfo) -> int:
    """Bytes of tensor data for ``info`` (from ggml's block size and type size)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(info.ggml_type)]
    except (ValueError, KeyError):
        raise ValueError(f"tensor {info.name!r} has unknown ggml type {info.ggml_type}") from None
    return info.n_elements // block * type_size


def expected_size(header: GGUFHeader) -> int:
    """The minimum file size that holds every tensor's data."""
    if not header.tensors:
        return header.data_offset
    return header.data_offset + max(t.offset + tensor_nbytes(t) for t in header.tensors)


def known_architectures() -> set[str]:
    """Architectures the installed ``gguf`` package (and so llama.cpp of the same era) knows."""
    from gguf.constants import MODEL_ARCH_NAMES

    return set(MODEL_ARCH_NAMES.values())


def validate_gguf(path: Path) -> GGUFHeader:
    """Check that ``path`` is a complete GGUF model llama.cpp can load; ArteError (one line) otherwise.

    Checks: the file exists, the magic and version, the header parses, the architecture is known,
    every tensor type is known and all tensor data lies inside the file. Returns the parsed header.
    """
    header = read_header(Path(path))
    arch = header.architecture
    if not arch:
        raise ArteError(f"{path}: GGUF has no general.architecture; re-export it with a current converter")
    if arch not in known_architectures():
        raise ArteError(f"{path}: unsupported GGUF architecture {arch!r}; use a model llama.cpp supports")
    if not header.tensors:
        raise ArteError(f"{path}: GGUF has no tensors (vocab-only file?); pass a full model file")
    try:
        need = expected_size(header)
    except ValueError as exc:
        raise ArteError(f"{path}: {exc}; the file is corrupt or newer than this gguf package") from None
    if header.file_size < need:
        raise ArteError(
            f"{path}: truncated GGUF (expected ≥ {need} bytes, found {header.file_size}); "
            "re-download or re-export it"
        )
    return header


def n_params(header: GGUFHeader) -> int:
    """Parameter count: the sum of the tensor element counts."""
    return sum(t.n_elements for t in header.tensors)


def file_type_name(header: GGUFHeader) -> str | None:
    """``general.file_type`` as a llama.cpp ftype name (``MOSTLY_Q4_1``), or None."""
    from gguf.constants import LlamaFileType

    ftype = header.metadata.get("general.file_type")
    if ftype is None:
        return None
    try:
        return LlamaFileType(int(ftype)).name
    except ValueError:
        return str(ftype)
