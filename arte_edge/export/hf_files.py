"""What the GGUF export reads from a Hugging Face model folder without loading it: JSON files, the chat
template, the tokenizer size and the embedding rows (from the safetensors headers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of the folder as a dict: {} when it is missing, ArteError naming it when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise ArteError(f"{path}: not valid JSON ({exc}); repair or re-save the model folder") from exc


def hf_chat_template(hf_dir: Path) -> str | None:
    """The chat template of an HF folder the way transformers 5 loads it (chat_template.jinja wins)."""
    jinja = hf_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = read_json(hf_dir / "tokenizer_config.json").get("chat_template")
    if template is None:
        template = read_json(hf_dir / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: the "default" one is what chat uses
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) and template.strip() else None


def tokenizer_size(hf_dir: Path) -> int | None:
    """Number of token ids the tokenizer can emit (max id + 1 over vocab and added tokens), from tokenizer.json."""
    data = read_json(hf_dir / "tokenizer.json")
    if not data:
        return None
    vocab = (data.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t["id"] for t in data.get("added_tokens") or [] if isinstance(t, dict) and "id" in t]
    return max(ids) + 1 if ids else None


_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight")


def embedding_rows(hf_dir: Path) -> int | None:
    """Rows of the input embedding matrix, read from the safetensors headers (no weights loaded)."""
    for path in sorted(hf_dir.glob("*.safetensors")):
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if size <= 0 or size > 100_000_000:
                raise ArteError(f"{path}: not a safetensors file (bad header); re-save the model")
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name.endswith(_EMBED_SUFFIXES) and isinstance(info, dict):
                return int(info["shape"][0])
    return None
