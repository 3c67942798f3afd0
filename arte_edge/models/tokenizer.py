"""Rebuild a correct Hugging Face tokenizer from GGUF metadata, and check it against llama.cpp.

transformers' own GGUF tokenizer conversion is lossy for some models (SmolLM2: wrong class and eos,
a BOS prepended, the digit-splitting pre-tokenizer dropped). A model trained with a tokenizer that
differs from the one llama.cpp uses at inference time silently degrades, so we rebuild the tokenizer
from the GGUF fields ourselves and verify it token-for-token against llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arte_edge.errors import ArteError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# GGUF token types (gguf.TokenType): which ids are atomic "added" tokens.
_CONTROL, _USER_DEFINED, _UNKNOWN = 3, 4, 2

# Pre-tokenizer regexes, keyed by `tokenizer.ggml.pre`; copied from the original tokenizer.json files.
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
_ARRAY_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
SUPPORTED_PRE = ("smollm", "qwen2", "llama-bpe", "gpt-2", "default")

# Strings whose tokenization must agree between the rebuilt tokenizer and llama.cpp.
CHECK_TEXTS: tuple[str, ...] = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "12345 + 678 = 13023",
    "Version 3.14159, 1e-5, 0x1F and 2024-11-05T12:30:00Z; a1b2c3 x10",
    "Ünïcödé: naïve café, 北京欢迎你, Привет мир, 🤖🚀 emoji 👍🏽",
    "def add(a, b):\n    \"\"\"Add.\"\"\"\n    return a + b\n\n\nfor i in range(10):\n\tprint(i)  # tab\n",
    "  leading spaces, trailing spaces   \n\n\nnewlines\r\nCRLF",
    "it's they're we've I'm you'll he'd DON'T",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after end<|im_end|>",
)
CHECK_CONVERSATION: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a careful math tutor."},
    {"role": "user", "content": "What is 12 * 34? Show your steps."},
    {"role": "assistant", "content": "12 * 34 = 12 * 30 + 12 * 4 = 360 + 48 = 408."},
    {"role": "user", "content": "Now write it in Python:\n```python\nprint(12 * 34)\n```"},
)


@dataclass(frozen=True)
class GGUFTokenizerMeta:
    """The tokenizer fields of a GGUF file."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    add_bos: bool
    chat_template: str | None
    context_length: int | None


def read_tokenizer_meta(gguf_path: Path) -> GGUFTokenizerMeta:
    """Read the ``tokenizer.*`` fields of ``gguf_path``."""
    from arte_edge.models.gguf_file import read_header

    header = read_header(Path(gguf_path), arrays=_ARRAY_KEYS)
    md = header.metadata
    tokens = md.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ArteError(f"{gguf_path}: GGUF has no tokenizer.ggml.tokens; re-export it with its tokenizer")
    return GGUFTokenizerMeta(
        model=md.get("tokenizer.ggml.model", ""),
        pre=md.get("tokenizer.ggml.pre", "default"),
        tokens=list(tokens),
        token_types=list(md.get("tokenizer.ggml.token_type", [1] * len(tokens))),
        merges=list(md.get("tokenizer.ggml.merges", [])),
        bos_id=md.get("tokenizer.ggml.bos_token_id"),
        eos_id=md.get("tokenizer.ggml.eos_token_id"),
        pad_id=md.get("tokenizer.ggml.padding_token_id"),
        unk_id=md.get("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(md.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=md.get("tokenizer.chat_template"),
        context_length=header.arch_key("context_length"),
    )


def _pre_tokenizer(pre: str, source: Path) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if pre == "smollm":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre in ("qwen2", "llama-bpe"):
        regex = _QWEN2_REGEX if pre == "qwen2" else _LLAMA3_REGEX
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
    if pre in ("gpt-2", "default"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raise ArteError(
        f"{source}: unsupported tokenizer pre-type {pre!r} (supported: {', '.join(SUPPORTED_PRE)}); "
        "use an HF folder with its tokenizer.json instead"
    )


def _token(tokens: list[str], idx: int | None) -> str | None:
    return tokens[idx] if idx is not None and 0 <= idx < len(tokens) else None


def is_chatml(template: str | None) -> bool:
    """Whether a chat template uses ChatML ``<|im_start|>``/``<|im_end|>`` markers."""
    return bool(template) and "<|im_start|>" in template and "<|im_end|>" in template


def build_tokenizer(meta: GGUFTokenizerMeta, source: Path) -> PreTrainedTokenizerBase:
    """A byte-level BPE ``PreTrainedTokenizerFast`` equivalent to llama.cpp's tokenizer for ``meta``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    if meta.model != "gpt2":
        raise ArteError(
            f"{source}: tokenizer model {meta.model!r} is not byte-level BPE ('gpt2'); only BPE GGUF "
            "tokenizers can be rebuilt, use an HF folder with its tokenizer.json instead"
        )
    vocab = {tok: i for i, tok in enumerate(meta.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.merges]
    bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                     ignore_merges=meta.pre == "llama-bpe")
    tok = Tokenizer(bpe)
    if meta.pre == "qwen2":
        # Qwen2's original tokenizer.json normalizes to NFC; llama.cpp does not, so they agree on NFC text.
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer(meta.pre, source)
    tok.decoder = decoders.ByteLevel()
    bos = _token(meta.tokens, meta.bos_id)
    if meta.add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, meta.bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [
        AddedToken(t, special=tt != _USER_DEFINED, normalized=False)
        for t, tt in zip(meta.tokens, meta.token_types, strict=False)
        if tt in (_CONTROL, _USER_DEFINED, _UNKNOWN)
    ]
    tok.add_tokens(specials)

    eos = _token(meta.tokens, meta.eos_id)
    if is_chatml(meta.chat_template):
        eos = "<|im_end|>"
    pad = _token(meta.tokens, meta.pad_id) or eos
    kwargs: dict[str, Any] = {
        "tokenizer_object": tok,
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": _token(meta.tokens, meta.unk_id),
        "add_bos_token": meta.add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.context_length or 131072,
    }
    if meta.chat_template:
        kwargs["chat_template"] = meta.chat_template
    return PreTrainedTokenizerFast(**{k: v for k, v in kwargs.items() if v is not None})


def tokenizer_from_gguf(gguf_path: Path) -> PreTrainedTokenizerBase:
    """Rebuild the tokenizer stored in ``gguf_path`` (see module docstring)."""
    return build_tokenizer(read_tokenizer_meta(gguf_path), gguf_path)


def _check_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    texts = list(CHECK_TEXTS)
    if tokenizer.chat_template:
        texts.append(tokenizer.apply_chat_template(list(CHECK_CONVERSATION), tokenize=False,
                                                   add_generation_prompt=True))
    return texts


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def check_tokenizer_matches_gguf(hf_dir: Path, gguf_path: Path) -> list[str]:
    """Compare the tokenizer saved in ``hf_dir`` with llama.cpp's tokenizer for ``gguf_path``.

    Returns one human-readable line per mismatch (empty when they agree): token ids of a fixed set of
    strings (ASCII, digits, unicode/emoji, code, special tokens, a rendered chat), the BOS policy, the
    ChatML markers in the rendered chat template, and that eos is ``<|im_end|>`` for ChatML models.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    vocab = _llama_vocab(gguf_path)
    try:
        return _compare(tokenizer, vocab)
    finally:
        vocab.close()


def _llama_vocab(gguf_path: Path) -> Any:
    """llama.cpp's vocabulary of ``gguf_path`` alone (no weights, no context)."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    try:
        return LlamaModel(path_model=str(gguf_path), params=params, verbose=False)
    except ValueError as exc:
        raise ArteError(f"{gguf_path}: llama.cpp cannot load its vocabulary ({exc}); re-export the GGUF") from None


def _compare(tokenizer: PreTrainedTokenizerBase, vocab: Any) -> list[str]:
    add_bos = bool(vocab.add_bos_token())
    problems: list[str] = []
    for text in _check_texts(tokenizer):
        ours = tokenizer(text, add_special_tokens=True)["input_ids"]
        ref = vocab.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        if list(ours) != list(ref):
            first = _first_difference(list(ours), list(ref))
            problems.append(
                f"{text[:40]!r}: HF {list(ours)[first:first + 6]} vs llama.cpp {list(ref)[first:first + 6]} "
                f"at token {first} (lengths {len(ours)}/{len(ref)})"
            )
    if tokenizer.chat_template:
        rendered = tokenizer.apply_chat_template(list(CHECK_CONVERSATION), tokenize=False)
        template_src = str(tokenizer.chat_template)
        if "<|im_start|>" in template_src and not ("<|im_start|>" in rendered and "<|im_end|>" in rendered):
            problems.append("rendered chat template lacks <|im_start|>/<|im_end|> markers")
        if is_chatml(template_src) and tokenizer.eos_token != "<|im_end|>":
            problems.append(f"eos is {tokenizer.eos_token!r}, expected '<|im_end|>' for a ChatML model")
    return problems


def save_tokenizer_from_gguf(gguf_path: Path, out_dir: Path) -> PreTrainedTokenizerBase:
    """Rebuild the tokenizer of ``gguf_path`` and save it (tokenizer.json + config) into ``out_dir``."""
    meta = read_tokenizer_meta(gguf_path)
    tokenizer = build_tokenizer(meta, gguf_path)
    save_portable(tokenizer, out_dir, add_bos=meta.add_bos)
    return tokenizer


def save_portable(tokenizer: PreTrainedTokenizerBase, out_dir: Path, add_bos: bool) -> None:
    """``save_pretrained`` plus the keys other tools read from ``tokenizer_config.json``.

    transformers 5 writes the template only to ``chat_template.jinja`` and names its own backend
    class; GGUF converters and older transformers read ``chat_template``/``add_bos_token`` from the
    config and know ``PreTrainedTokenizerFast``, so a GGUF re-exported from this folder keeps them.
    """
    import json

    tokenizer.save_pretrained(str(out_dir))
    cfg_path = Path(out_dir) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["add_bos_token"] = add_bos
    cfg["add_eos_token"] = False
    if tokenizer.chat_template:
        cfg["chat_template"] = tokenizer.chat_template
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
