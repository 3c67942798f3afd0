"""Turn a model spec (bundled name, .gguf path, HF folder, ``hub:org/name``) into files on disk."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from arte_edge.errors import ArteError
from arte_edge.models.catalog import CATALOG, bundled_names
from arte_edge.models.fetch import Progress, bundled_path, cached_sha256, pull, sha256_of

Kind = Literal["bundled", "gguf", "hf_dir", "hub"]
HUB_PREFIX = "hub:"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model spec. ``gguf_path`` of a bundled model may not be pulled yet."""

    spec: str
    kind: Kind
    name: str
    gguf_path: Path | None = None
    hf_dir: Path | None = None


def resolve(spec: str) -> ModelRef:
    """Resolve ``spec``: a bundled name, a path to a ``.gguf`` file or an HF folder, or ``hub:org/name``.

    Raises ArteError for anything else, listing the bundled names.
    """
    spec = spec.strip()
    if spec in CATALOG:
        return ModelRef(spec, "bundled", spec, gguf_path=bundled_path(CATALOG[spec]))
    if spec.startswith(HUB_PREFIX):
        return _resolve_hub(spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelRef(spec, "gguf", path.stem, gguf_path=path.resolve())
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelRef(spec, "hf_dir", path.resolve().name, hf_dir=path.resolve())
        raise ArteError(f"{path}: folder has no config.json; pass a Hugging Face model folder or a .gguf file")
    if path.suffix.lower() == ".gguf" or path.exists():
        what = "no such file" if not path.exists() else "not a .gguf file"
        raise ArteError(f"{path}: {what}; pass a .gguf file, an HF folder or a bundled model name")
    raise ArteError(
        f"unknown model {spec!r}: not a bundled name, .gguf file or HF folder; "
        f"bundled models: {', '.join(bundled_names())}"
    )


def _resolve_hub(spec: str) -> ModelRef:
    repo = spec[len(HUB_PREFIX):]
    if repo.count("/") != 1:
        raise ArteError(f"{spec}: expected hub:org/name")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    fix = "download the model folder elsewhere and pass its path, or use a bundled model"
    if offline:
        raise ArteError(f"{spec}: the Hugging Face hub is not reachable offline (HF_HUB_OFFLINE is set); {fix}")
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt",
                                                              "*.model"]))
    except Exception as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ArteError(f"{spec}: the Hugging Face hub is not reachable ({reason}); {fix}") from None
    return ModelRef(spec, "hub", repo.split("/")[1], hf_dir=local)


def gguf_path(spec: str, progress: Progress | None = None) -> Path:
    """The validated GGUF file for ``spec``, pulling a bundled model when needed."""
    from arte_edge.models.gguf_file import validate_gguf

    ref = resolve(spec)
    if ref.kind == "bundled":
        path = pull(ref.name, progress)
    elif ref.kind == "gguf" and ref.gguf_path is not None:
        path = ref.gguf_path
    else:
        raise ArteError(f"{spec}: is a Hugging Face folder, not a GGUF file; export it to GGUF first")
    validate_gguf(path)
    return path


def list_models() -> list[dict[str, Any]]:
    """The bundled models with their pinned size/sha256, whether pulled, and the local path."""
    rows = []
    for entry in CATALOG.values():
        path = bundled_path(entry)
        pulled = path.is_file() and cached_sha256(path) == entry.sha256
        rows.append({**entry.as_dict(), "pulled": pulled, "path": str(path)})
    return rows


def info(spec: str) -> dict[str, Any]:
    """Facts about a model: size, sha256, architecture, parameters, context, chat template, tokenizer.

    A bundled model that has not been pulled reports its catalog data only (``pulled: False``).
    """
    ref = resolve(spec)
    base: dict[str, Any] = {"spec": spec, "kind": ref.kind, "name": ref.name}
    if ref.kind == "bundled":
        entry = CATALOG[ref.name]
        base.update(entry.as_dict())
        if ref.gguf_path is None or not ref.gguf_path.is_file():
            return {**base, "pulled": False, "path": str(ref.gguf_path)}
        base["pulled"] = True
    if ref.gguf_path is not None:
        return {**base, **_gguf_info(ref.gguf_path)}
    assert ref.hf_dir is not None
    return {**base, **hf_dir_info(ref.hf_dir)}


def _gguf_info(path: Path) -> dict[str, Any]:
    from arte_edge.models.gguf_file import file_type_name, n_params, validate_gguf

    header = validate_gguf(path)
    md = header.metadata
    return {
        "path": str(path),
        "format": "gguf",
        "size": header.file_size,
        "sha256": sha256_of(path),
        "architecture": header.architecture,
        "n_params": n_params(header),
        "n_layers": header.arch_key("block_count"),
        "context_length": header.arch_key("context_length"),
        "file_type": file_type_name(header),
        "chat_template_present": bool(md.get("tokenizer.chat_template")),
        "tokenizer": {
            "model": md.get("tokenizer.ggml.model"),
            "pre": md.get("tokenizer.ggml.pre"),
            "vocab_size": int(md.get("tokenizer.ggml.tokens", 0)),
        },
    }


def hf_dir_info(folder: Path) -> dict[str, Any]:
    """``info`` for an HF folder: config facts, safetensors parameter count, tokenizer kind."""
    config = _read_json(folder / "config.json")
    tok_json = folder / "tokenizer.json"
    tok_cfg = _read_json(folder / "tokenizer_config.json")
    tokenizer = None
    if tok_json.is_file():
        tokenizer = {"model": _tokenizer_model_type(tok_json), "class": tok_cfg.get("tokenizer_class")}
    files = sorted(folder.glob("*.safetensors"))
    return {
        "path": str(folder),
        "format": "hf",
        "size": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        "sha256": None,
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "n_params": sum(_safetensors_params(p) for p in files) or None,
        "n_layers": config.get("num_hidden_layers"),
        "context_length": config.get("max_position_embeddings"),
        "dtype": config.get("dtype") or config.get("torch_dtype"),
        "chat_template_present": bool(tok_cfg.get("chat_template")) or (folder / "chat_template.jinja").is_file(),
        "tokenizer": tokenizer,
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise ArteError(f"{path}: invalid JSON ({exc}); fix or re-create the file") from None


def _tokenizer_model_type(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("model", {}).get("type")
    except ValueError:
        return None


def _safetensors_params(path: Path) -> int:
    import math
    import struct

    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
