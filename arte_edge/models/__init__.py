"""Bundled models, model specs, GGUF validation and GGUF → trainable HF folders.

Light to import: torch, transformers, gguf and llama_cpp are imported only by the functions that
need them.
"""

from __future__ import annotations

from arte_edge.models.catalog import CATALOG, BundledModel, WheelPart, bundled_names, get_bundled
from arte_edge.models.convert import hf_folder
from arte_edge.models.fetch import file_sha256, pull, sha256_of
from arte_edge.models.gguf_file import GGUFHeader, read_header, validate_gguf
from arte_edge.models.specs import ModelRef, gguf_path, info, list_models, resolve
from arte_edge.models.tokenizer import check_tokenizer_matches_gguf, save_tokenizer_from_gguf, tokenizer_from_gguf

__all__ = [
    "CATALOG",
    "BundledModel",
    "GGUFHeader",
    "ModelRef",
    "WheelPart",
    "bundled_names",
    "check_tokenizer_matches_gguf",
    "file_sha256",
    "get_bundled",
    "gguf_path",
    "hf_folder",
    "info",
    "list_models",
    "pull",
    "read_header",
    "resolve",
    "save_tokenizer_from_gguf",
    "sha256_of",
    "tokenizer_from_gguf",
    "validate_gguf",
]
