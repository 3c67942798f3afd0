"""What verifying an export compares against: the fixed inputs shared by the GGUF and ONNX checks (chat
prompts, held-out texts, tokenizer probes) and what the fp32 Hugging Face model says on them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Message = dict[str, str]

MAX_TEXT_TOKENS = 256
# llama.cpp and torch spin-wait between ops: on a shared 2-core machine 2 threads measured 17x (llama.cpp
# decode) and 3.4x (torch) slower than 1, while 1 thread is at most ~2x slower on an idle one.
DEFAULT_THREADS = 1

DEFAULT_PROMPTS: tuple[tuple[Message, ...], ...] = (
    ({"role": "user", "content": "What is the capital of France?"},),
    ({"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Write a Python function that returns the sum of a list of numbers."}),
    ({"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                                 "many clips in May. How many clips did Natalia sell altogether?"},),
    ({"role": "user", "content": "Explain in two sentences why the sky is blue."},),
)

DEFAULT_TEXTS: tuple[str, ...] = (
    "The river rose slowly through the night, and by morning the low fields along the valley were under "
    "water. Farmers moved their animals to the hills while the town council met to decide whether the old "
    "bridge could still carry the weight of the supply trucks.",
    "def merge_sorted(a, b):\n    result = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n            result.append(a[i])\n            i += 1\n        else:\n"
    "            result.append(b[j])\n            j += 1\n    return result + a[i:] + b[j:]\n",
    "A train leaves the station at 3:15 pm travelling at 80 km/h. A second train leaves the same station "
    "45 minutes later at 120 km/h on a parallel track. The second train catches up after 1.5 hours, "
    "because 80 * 2.25 = 180 km and 120 * 1.5 = 180 km.",
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts, water molecules are "
    "split, oxygen is released, and the energy is stored in sugars that the plant uses to grow.",
    "<|im_start|>user\nHow do I reverse a list in Python?<|im_end|>\n<|im_start|>assistant\nUse slicing: "
    "`items[::-1]` returns a reversed copy, while `items.reverse()` reverses the list in place and returns "
    "None. If you only need to loop backwards, `reversed(items)` gives an iterator without copying.<|im_end|>\n",
    "To make a simple loaf of bread, mix 500 g of flour, 10 g of salt, 7 g of dried yeast and 320 ml of warm "
    "water. Knead for ten minutes, let the dough rise for an hour, shape it, and bake at 220 degrees for "
    "about 35 minutes until the crust is golden and the bottom sounds hollow when tapped.",
    "In 1969 the Apollo 11 mission landed the first humans on the Moon. Neil Armstrong and Buzz Aldrin "
    "spent about two and a half hours outside the lunar module, collecting samples and setting up "
    "experiments, while Michael Collins orbited above in the command module.",
)

TOKENIZER_PROBES: tuple[str, ...] = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "12345 + 678 = 13023, 3.14159 and 2024-11-05T12:30:00Z",
    "Ünïcödé: naïve café, 北京欢迎你, Привет мир, 🤖🚀 👍🏽",
    "def add(a, b):\n    return a + b\n\n\tprint(add(1, 2))  # tab\n",
    "  leading spaces,\ttabs\r\nand   runs of    spaces  ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "",
)


@dataclass
class HFReference:
    """What the HF model says on the verification inputs, computed once and reused for every artifact.

    ``greedy``: per prompt, the greedy tokens and the logits at each step; ``text_logits``: teacher-forced
    logits ``[len(ids), vocab]`` per text (float32).
    """

    hf_dir: Path
    tokenizer: Any
    prompts: list[list[Message]]
    prompt_ids: list[list[int]]
    greedy: list[tuple[list[int], list[Any]]]
    text_ids: list[list[int]]
    text_logits: list[Any]
    eos_ids: frozenset[int]
    n_tokens: int
    seconds: float


def hf_reference(hf_dir: str | Path, *, prompts: Sequence[Sequence[Message]] = DEFAULT_PROMPTS,
                 texts: Sequence[str] = DEFAULT_TEXTS, n_tokens: int = 16,
                 threads: int | None = None) -> HFReference:
    """Run the fp32 HF model once on the verification prompts and texts (see HFReference).

    ``threads``: torch threads for this call only (default DEFAULT_THREADS); restored afterwards.
    """
    import torch

    start = time.perf_counter()
    hf_model, hf_tok = load_hf_fp32(Path(hf_dir))
    eos = _eos_ids(hf_model, hf_tok)
    prompt_ids = [chat_ids(hf_tok, m) for m in prompts]
    text_ids = [ids for ids in (list(hf_tok(t, add_special_tokens=True)["input_ids"])[:MAX_TEXT_TOKENS]
                                for t in texts) if len(ids) >= 2]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or DEFAULT_THREADS)
    try:
        with torch.inference_mode():
            greedy = [hf_greedy(hf_model, ids, n_tokens, eos) for ids in prompt_ids]
            text_logits = [hf_model(input_ids=torch.tensor([ids])).logits[0].float().numpy() for ids in text_ids]
    finally:
        torch.set_num_threads(previous)
    del hf_model
    return HFReference(Path(hf_dir), hf_tok, [list(m) for m in prompts], prompt_ids, greedy, text_ids,
                       text_logits, eos, n_tokens, round(time.perf_counter() - start, 2))


def load_hf_fp32(hf_dir: str | Path) -> tuple[Any, Any]:
    """The HF model of ``hf_dir`` in fp32 (eval mode) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    return model, tok


def chat_ids(hf_tok: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template, generation prompt included."""
    text = hf_tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(hf_tok(text, add_special_tokens=False)["input_ids"])


def _eos_ids(hf_model: Any, hf_tok: Any) -> frozenset[int]:
    """Ids that end a continuation: generation_config's eos ids and the tokenizer's eos."""
    ids: set[int] = set()
    gen = getattr(hf_model, "generation_config", None)
    value = getattr(gen, "eos_token_id", None)
    ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    if hf_tok.eos_token_id is not None:
        ids.add(hf_tok.eos_token_id)
    return frozenset(int(i) for i in ids)


def hf_greedy(model: Any, ids: list[int], n_tokens: int, eos: frozenset[int]) -> tuple[list[int], list[Any]]:
    """Greedy continuation of ``ids`` (up to ``n_tokens``, stopping after a token in ``eos``) and the logits
    (float32 numpy) at each step."""
    import torch

    out: list[int] = []
    logits: list[Any] = []
    past = None
    step = torch.tensor([ids])
    for _ in range(n_tokens):
        result = model(input_ids=step, past_key_values=past, use_cache=True)
        past = result.past_key_values
        row = result.logits[0, -1].float().numpy()
        token = int(row.argmax())
        out.append(token)
        logits.append(row)
        if token in eos:
            break
        step = torch.tensor([[token]])
    return out, logits


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def kl_per_position(ref_logits: Any, got_logits: Any) -> Any:
    """Per-position KL(softmax(ref) || softmax(got)) in nats."""
    import numpy as np
    from scipy.special import log_softmax

    log_p, log_q = log_softmax(ref_logits, axis=-1), log_softmax(got_logits, axis=-1)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def chat_texts(hf_dir: str | Path, conversations: Sequence[Sequence[Message]]) -> list[str]:
    """Each conversation (system/user/assistant messages) rendered by the model's own chat template: the text
    the model sees at training and inference time, for importance matrices and mix calibration."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    return [tok.apply_chat_template([dict(m) for m in conv], tokenize=False) for conv in conversations if conv]
