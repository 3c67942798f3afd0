"""Write the Ollama ``Modelfile`` that goes next to each GGUF (``ollama create NAME -f <file>``).

Ollama does not run Jinja: its TEMPLATE is a Go template. We do not translate Jinja in general; we recognise
the ChatML family by *rendering* the model's own Jinja template on probe conversations and checking that
every rendering equals what the Go template below produces (with Ollama's rule that the Modelfile SYSTEM
becomes the first message when a request has none). The default system prompt a template injects (SmolLM2,
Qwen2.5) is extracted from that rendering and written as SYSTEM. A template that is not ChatML gets no
TEMPLATE line: Ollama then picks one by matching the chat template stored in the GGUF metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.export.hf_files import hf_chat_template, read_json
from arte_edge.rundir import partial_path

# Messages-based ChatML; every turn is closed with <|im_end|>\n, as the HF ChatML templates do.
CHATML_GO_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

DEFAULT_PARAMETERS: dict[str, float | int] = {"temperature": 0.7, "top_p": 0.9}
MAX_NUM_CTX = 4096  # edge devices: the KV cache of a longer default context costs RAM on every load

# generation_config.json key → Ollama PARAMETER name
_GEN_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
             "repetition_penalty": "repeat_penalty", "min_p": "min_p"}

_PROBES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("user", "U1"),),
    (("system", "S1"), ("user", "U1")),
    (("user", "U1"), ("assistant", "A1"), ("user", "U2")),
    (("system", "S1"), ("user", "U1"), ("assistant", "A1"), ("user", "U2")),
)


@dataclass(frozen=True)
class OllamaChat:
    """What the Modelfile needs from the HF chat template."""

    family: str | None  # "chatml" or None (not translated)
    template: str | None
    system: str | None
    stops: tuple[str, ...]


def render_jinja(template: str, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True,
                 **special: str | None) -> str:
    """Render an HF chat template the way transformers does (sandboxed Jinja, trim_blocks, lstrip_blocks)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: __import__("datetime").datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                            **{k: v or "" for k, v in special.items()})


def _chatml_reference(messages: Sequence[dict[str, str]], system: str | None) -> str:
    """What CHATML_GO_TEMPLATE renders for ``messages`` once Ollama has applied the Modelfile SYSTEM."""
    msgs = list(messages)
    if system is not None and (not msgs or msgs[0]["role"] != "system"):
        msgs = [{"role": "system", "content": system}, *msgs]
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    return out + ("<|im_start|>assistant\n" if msgs[-1]["role"] != "assistant" else "")


_CHATML_SYSTEM = re.compile(r"^<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\nU1<\|im_end\|>\n", re.S)


def translate_chat_template(template: str | None, bos: str | None = None, eos: str | None = None) -> OllamaChat:
    """Recognise ``template`` as ChatML (by rendering probes) and return the Go template and default SYSTEM."""
    if not template or "<|im_start|>" not in template:
        return OllamaChat(None, None, None, ())
    probes = [[{"role": r, "content": c} for r, c in probe] for probe in _PROBES]
    try:
        rendered = [render_jinja(template, p, bos_token=bos, eos_token=eos) for p in probes]
    except Exception:  # a template needing inputs we do not give (tools, dates...) is left to Ollama
        return OllamaChat(None, None, None, ())
    match = _CHATML_SYSTEM.match(rendered[0])
    system = match.group(1) if match else None
    if all(r == _chatml_reference(p, system) for r, p in zip(rendered, probes, strict=True)):
        return OllamaChat("chatml", CHATML_GO_TEMPLATE, system, ("<|im_end|>",))
    return OllamaChat(None, None, None, ())


def _token_strings(hf_dir: Path) -> dict[int, str]:
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    out = {int(t["id"]): t["content"] for t in data.get("added_tokens") or []}
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        out.update({int(i): tok for tok, i in vocab.items() if int(i) not in out})
    return out


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value if isinstance(value, str) else None


def stop_tokens(hf_dir: Path, chat: OllamaChat) -> list[str]:
    """Stop strings: the turn-end marker, the tokenizer's EOS, generation_config's EOS ids, ``<|endoftext|>``."""
    tok_cfg = read_json(hf_dir / "tokenizer_config.json")
    gen = read_json(hf_dir / "generation_config.json")
    config = read_json(hf_dir / "config.json")
    strings = _token_strings(hf_dir)
    stops = list(chat.stops)
    eos = _token_text(tok_cfg.get("eos_token"))
    if eos:
        stops.append(eos)
    for source in (gen, config):
        ids = source.get("eos_token_id")
        for i in ids if isinstance(ids, list) else [ids] if ids is not None else []:
            if int(i) in strings:
                stops.append(strings[int(i)])
    if "<|endoftext|>" in strings.values():
        stops.append("<|endoftext|>")
    return list(dict.fromkeys(s for s in stops if s))


def parameters(hf_dir: Path) -> dict[str, float | int]:
    """Sampling PARAMETERs: DEFAULT_PARAMETERS overridden by generation_config.json, plus ``num_ctx``."""
    gen = read_json(hf_dir / "generation_config.json")
    params: dict[str, float | int] = dict(DEFAULT_PARAMETERS)
    for key, name in _GEN_KEYS.items():
        if isinstance(gen.get(key), int | float) and not isinstance(gen.get(key), bool):
            params[name] = gen[key]
    max_pos = read_json(hf_dir / "config.json").get("max_position_embeddings")
    params["num_ctx"] = min(int(max_pos), MAX_NUM_CTX) if isinstance(max_pos, int) and max_pos > 0 else 2048
    return params


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _triple(text: str, what: str) -> str:
    if '"""' in text:
        raise ArteError(f"the chat {what} contains '\"\"\"', which an Ollama Modelfile cannot quote")
    return f'"""{text}"""'


def render_modelfile(gguf_name: str, hf_dir: str | Path) -> str:
    """The Modelfile text for the GGUF ``gguf_name`` (relative, in the same folder) made from ``hf_dir``."""
    hf_dir = Path(hf_dir)
    tok_cfg = read_json(hf_dir / "tokenizer_config.json")
    chat = translate_chat_template(hf_chat_template(hf_dir), _token_text(tok_cfg.get("bos_token")),
                                   _token_text(tok_cfg.get("eos_token")))
    lines = [f"# Ollama Modelfile written by arte-edge. Use: ollama create NAME -f {gguf_name.removesuffix('.gguf')}"
             ".Modelfile", f"FROM ./{gguf_name}"]
    if chat.template:
        lines.append(f"TEMPLATE {_triple(chat.template, 'template')}")
    else:
        lines.append("# no TEMPLATE: the chat template is not ChatML; Ollama matches the one in the GGUF metadata")
    if chat.system:
        lines.append(f"SYSTEM {_triple(chat.system, 'system prompt')}")
    lines += [f"PARAMETER stop {_quote(s)}" for s in stop_tokens(hf_dir, chat)]
    lines += [f"PARAMETER {k} {v}" for k, v in parameters(hf_dir).items()]
    return "\n".join(lines) + "\n"


def modelfile_path(gguf_path: Path) -> Path:
    """``<dir>/<name>.<qtype>.Modelfile`` next to ``<dir>/<name>.<qtype>.gguf``."""
    return gguf_path.with_name(gguf_path.name.removesuffix(".gguf") + ".Modelfile")


def write_modelfile(gguf_path: str | Path, hf_dir: str | Path) -> Path:
    """Write the Modelfile for ``gguf_path`` next to it; returns its path."""
    gguf_path = Path(gguf_path)
    out = modelfile_path(gguf_path)
    tmp = partial_path(out)
    tmp.write_text(render_modelfile(gguf_path.name, hf_dir), encoding="utf-8")
    tmp.replace(out)
    return out
