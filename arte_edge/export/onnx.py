"""Export a Hugging Face causal LM to an ONNX decoder with a KV cache, via onnxruntime-genai's model builder.

The result is one folder that ``onnxruntime_genai.Model(folder)`` loads directly (``genai_config.json`` +
tokenizer files + ``model.onnx`` with its weights in ``model.onnx.data``), and whose ``model.onnx`` a plain
``onnxruntime.InferenceSession`` also loads. See docs/onnx.md for why the builder and not optimum-onnx.

The builder runs in a subprocess (it imports its own modules by bare name and holds the whole model in
memory while building), into a temporary sibling folder that is verified against the source model and only
then renamed into place.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.formats import ONNX_PRECISIONS, OnnxPrecision

Progress = Callable[[str], None]

MODEL_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"
MANIFEST_FILE = "arte_export.json"
PROTOBUF_LIMIT = 2 * 1024**3  # a single ONNX protobuf cannot exceed 2 GiB; weights must live outside it

# `config.architectures[0]` values the onnxruntime-genai 0.18.0 builder dispatches on. Used only when the
# installed builder's source cannot be read (see supported_architectures).
BUILDER_ARCHITECTURES_0_18: frozenset[str] = frozenset({
    "ChatGLMForConditionalGeneration", "ChatGLMModel", "Ernie4_5ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration",
    "Gemma4ForConditionalGeneration", "Gemma4UnifiedForConditionalGeneration", "GptOssForCausalLM",
    "GraniteForCausalLM", "GraniteMoeHybridForCausalLM", "HunYuanDenseV1ForCausalLM", "InternLM2ForCausalLM",
    "Lfm2ForCausalLM", "Lfm2MoeForCausalLM", "Lfm2VlForConditionalGeneration",
    "Lfm2AudioForConditionalGeneration", "LlamaForCausalLM", "MistralForCausalLM",
    "Mistral3ForConditionalGeneration", "NemotronForCausalLM", "OlmoForCausalLM", "PhiForCausalLM",
    "Phi3ForCausalLM", "PhiMoEForCausalLM", "Phi3SmallForCausalLM", "Phi3VForCausalLM", "Phi4MMForCausalLM",
    "Qwen2ForCausalLM", "Qwen2_5_VLForConditionalGeneration", "Qwen3ForCausalLM",
    "Qwen3VLForConditionalGeneration", "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration", "SmolLM3ForCausalLM", "VideoChatFlashQwenForCausalLM",
    "WhisperForConditionalGeneration",
})
# Multimodal / speech checkpoints the builder accepts but whose export is not a plain text decoder.
_NOT_TEXT_DECODERS = frozenset({"WhisperForConditionalGeneration", "Phi3VForCausalLM", "Phi4MMForCausalLM"})
# Builder --extra_options per precision (see docs/onnx.md for the measurements behind them). int4: also
# quantize the token embedding (Gather -> 4-bit GatherBlockQuantized). The builder does that by itself only
# for a tied matrix (shared with the LM head); an untied model (a GGUF-converted one: transformers unties any
# GGUF that carries output.weight) otherwise keeps a float table of vocab x hidden, e.g. 544 MB fp32 for
# Qwen2.5-0.5B, more than every other weight together.
DEFAULT_BUILDER_OPTIONS: dict[str, dict[str, str]] = {"int4": {"op_types_to_quantize": "MatMul/Gather"}}
# ... and an LM head stored apart from the embedding (untied model, or shared_embeddings=false) at 8 bits, as
# llama.cpp's Q4_K_M keeps output.weight at Q6_K (Q8_0 where the row length is no multiple of 256). A tied matrix
# stays one shared 4-bit matrix: 0.18 writes a graph that does not load (dangling `lm_head.MatMul.weight_Q8G32`)
# when it shares an 8-bit head with the embedding lookup.
SEPARATE_HEAD_OPTIONS: dict[str, dict[str, str]] = {"int4": {"matmul_mixed_precision": "last_matmul:int8"}}
_ARCH_PATTERN = re.compile(r"""config\.architectures\[0\]\s*==\s*["'](\w+)["']""")


@dataclass(frozen=True)
class OnnxArtifact:
    """A verified ONNX export: the folder, its precision and size, and the verification report."""

    path: Path
    precision: str
    size_bytes: int
    threads: int | None
    build_s: float
    verification: dict[str, Any] | None
    tensors: dict[str, Any] | None = None  # onnx_tensors.tensor_summary: per-dtype bytes, embedding and LM head

    @property
    def model_path(self) -> Path:
        """The decoder graph (``model.onnx``); its weights sit beside it in ``model.onnx.data``."""
        return self.path / MODEL_FILE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["model_path"] = str(self.model_path)
        return data


def supported_architectures() -> frozenset[str]:
    """Architectures (``config.json`` ``architectures[0]``) that the installed model builder can export."""
    spec = importlib.util.find_spec("onnxruntime_genai")
    if spec is None or not spec.submodule_search_locations:
        return BUILDER_ARCHITECTURES_0_18 - _NOT_TEXT_DECODERS
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "builder.py"
    try:
        found = frozenset(_ARCH_PATTERN.findall(source.read_text(encoding="utf-8")))
    except OSError:
        found = frozenset()
    return (found or BUILDER_ARCHITECTURES_0_18) - _NOT_TEXT_DECODERS


def check_exportable(hf_dir: str | Path) -> dict[str, Any]:
    """Refuse early, with the fix, what the builder cannot export; return the parsed ``config.json``."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ArteError(f"{hf_dir}: no config.json; pass a Hugging Face model folder (model.save_pretrained)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    if not archs:
        raise ArteError(f"{config_path}: no 'architectures' entry; re-save the model with save_pretrained")
    supported = supported_architectures()
    if archs[0] not in supported:
        raise ArteError(
            f"{config_path}: architecture {archs[0]} is not supported by onnxruntime-genai's model builder "
            f"(text decoders it supports include LlamaForCausalLM, Qwen2ForCausalLM, Gemma3ForCausalLM, "
            f"MistralForCausalLM, Phi3ForCausalLM); export this model to GGUF instead"
        )
    if not any(hf_dir.glob("*.safetensors")) and not any(hf_dir.glob("pytorch_model*.bin")):
        raise ArteError(f"{hf_dir}: no weights (*.safetensors); save the model with model.save_pretrained")
    if not (hf_dir / "tokenizer.json").is_file() and not (hf_dir / "tokenizer.model").is_file():
        raise ArteError(
            f"{hf_dir}: no tokenizer (tokenizer.json); the ONNX folder must carry it: "
            f"run tokenizer.save_pretrained('{hf_dir}')"
        )
    _check_builder_installed()
    return config


def _check_builder_installed() -> None:
    missing = [name for name in ("onnxruntime_genai", "onnx_ir") if importlib.util.find_spec(name) is None]
    if missing:
        raise ArteError(f"ONNX export needs {', '.join(missing)}; install it with: pip install 'arte-edge[onnx]'")


def export_onnx(
    hf_dir: str | Path,
    out_dir: str | Path,
    precision: OnnxPrecision,
    progress: Progress | None = None,
    *,
    threads: int | None = None,
    verify: bool = True,
    builder_options: Mapping[str, str] | None = None,
) -> OnnxArtifact:
    """Build ``out_dir`` from the Hugging Face folder ``hf_dir`` at ``precision``, verified before it appears.

    ``int8``/``int4`` are the builder's weight-only block quantization (MatMulNBits, block 32, symmetric); int4
    also quantizes the token embedding (4-bit GatherBlockQuantized, shared with the LM head when tied) and keeps
    a separate LM head at 8 bits (see DEFAULT_BUILDER_OPTIONS, SEPARATE_HEAD_OPTIONS). The artifact's
    ``tensors`` say how each weight is stored (``onnx_tensors.tensor_summary``).
    ``threads`` is written as the decoder's ``intra_op_num_threads`` (None: onnxruntime's default).
    ``builder_options`` are passed as the builder's ``--extra_options KEY=VALUE`` and replace
    ``DEFAULT_BUILDER_OPTIONS[precision]`` key by key.
    Raises ArteError for an unsupported model or a builder failure, VerificationError when the export
    disagrees with the source model beyond the thresholds of its precision (see formats.ONNX_THRESHOLDS).
    """
    if precision not in ONNX_PRECISIONS:
        raise ArteError(f"precision {precision!r} is not one of {', '.join(ONNX_PRECISIONS)}")
    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir).resolve()
    say = progress or (lambda _message: None)
    config = check_exportable(hf_dir)
    _check_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        start = time.perf_counter()
        say(f"building {precision} ONNX of {hf_dir} with onnxruntime-genai's model builder")
        options = _builder_options(precision, builder_options, config)
        _run_builder(hf_dir, tmp, precision, options, log_path=out_dir.parent / f"{out_dir.name}.builder.log")
        _check_graph_size(tmp)
        _finalize_genai_config(tmp, hf_dir, threads)
        build_s = time.perf_counter() - start
        tensors = _record_tensors(tmp, precision, say)
        report = None
        if verify:
            from arte_edge.export.onnx_verify import verify_onnx

            say(f"verifying {out_dir.name} against the fp32 source (greedy, next-token KL, tokenizer)")
            report = verify_onnx(hf_dir, tmp, precision=precision, label=str(out_dir))
        artifact = OnnxArtifact(out_dir, precision, _folder_size(tmp), threads, round(build_s, 2), report,
                                tensors["summary"])
        _write_manifest(tmp, artifact, hf_dir, options, tensors["all"])
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"wrote {out_dir} ({artifact.size_bytes / 1e6:.1f} MB)")
    return artifact


def _builder_options(precision: str, user: Mapping[str, str] | None, config: dict[str, Any]) -> dict[str, str]:
    """The builder's --extra_options: the defaults of ``precision``, then the caller's, key by key."""
    options = {**DEFAULT_BUILDER_OPTIONS.get(precision, {}), **{k: str(v) for k, v in (user or {}).items()}}
    asymmetric = options.get("is_symmetric", "true").lower() in {"false", "0"}
    if asymmetric and config.get("tie_word_embeddings") and "shared_embeddings" not in options:
        # 0.18 writes a graph onnxruntime rejects (uint8 Reshape into a float Gather) for asymmetric
        # quantization with a shared embedding/LM-head matrix; untie them instead.
        options["shared_embeddings"] = "false"
    if config.get("tie_word_embeddings") is False or options.get("shared_embeddings", "").lower() in {"false", "0"}:
        options = {**SEPARATE_HEAD_OPTIONS.get(precision, {}), **options}
    return options


def _record_tensors(folder: Path, precision: str, say: Progress) -> dict[str, Any]:
    """Every initializer (for the manifest) and their summary (for verify.json); says when an int4 export
    left its embedding or LM head in float."""
    from arte_edge.export.onnx_tensors import summarize, tensor_rows
    from arte_edge.models.onnx_file import load_graph

    graph = load_graph(folder / MODEL_FILE)
    rows = tensor_rows(graph)
    summary = summarize(graph, rows)
    if precision == "int4":
        floats = [part for part in ("embedding", "lm_head")
                  if summary[part] and not summary[part]["quantized"] and not summary["shared_embedding"]]
        if floats:
            say(f"note: the int4 export keeps its {' and '.join(floats)} in float ({summary['total_bytes'] / 1e6:.0f} "
                f"MB of weights)")
    return {"all": rows, "summary": summary}


def _check_destination(out_dir: Path) -> None:
    # Never clobber a folder we did not write: only an earlier export (with its manifest) is replaced.
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise ArteError(f"{out_dir}: exists and is not an arte-edge ONNX export; choose an empty or new folder")


def _run_builder(hf_dir: Path, out: Path, precision: str, options: Mapping[str, str], *, log_path: Path) -> None:
    cache = out.parent / f"{out.name}.cache"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache)]
    if options:
        cmd += ["--extra_options", *(f"{key}={value}" for key, value in options.items())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode == 0 and (out / MODEL_FILE).is_file() and (out / GENAI_CONFIG).is_file():
        log_path.unlink(missing_ok=True)
        return
    log_path.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}", encoding="utf-8")
    reason = last_meaningful_line(proc.stderr) or last_meaningful_line(proc.stdout) or f"exit {proc.returncode}"
    raise ArteError(f"{hf_dir}: onnxruntime-genai model builder failed ({precision}): {reason} (log: {log_path})")


_NOISE = re.compile(r"(\d+%\|)|(it/s\])|(s/it\])|^\s*(warnings\.warn|\^+|~+)|\[(INFO|DEBUG|WARNING)\]|^WARNING")
_EXCEPTION = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b")


def last_meaningful_line(text: str) -> str:
    """The line that says why a Python subprocess failed: its exception line, else its last non-noise line."""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION.match(line):
            return line[:300]
    for line in reversed(lines):
        if not _NOISE.search(line) and not line.startswith(("File ", "Traceback")):
            return line[:300]
    return ""


def _check_graph_size(folder: Path) -> None:
    graph = folder / MODEL_FILE
    if graph.stat().st_size >= PROTOBUF_LIMIT:
        raise ArteError(
            f"{graph}: the graph protobuf is {graph.stat().st_size / 2**30:.1f} GiB (limit 2 GiB): the builder "
            f"did not write weights as external data; upgrade onnxruntime-genai"
        )


def _finalize_genai_config(folder: Path, hf_dir: Path, threads: int | None) -> None:
    """Thread setting, and every eos id the tokenizer and generation config know (so chat turns stop)."""
    path = folder / GENAI_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    model = config["model"]
    if threads is not None:
        if threads < 1:
            raise ArteError(f"threads must be >= 1, got {threads}")
        model["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = int(threads)
    eos = _as_list(model.get("eos_token_id"))
    for extra in _source_eos_ids(hf_dir):
        if extra not in eos:
            eos.append(extra)
    if eos:
        model["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    path.write_text(json.dumps(config, indent=4), encoding="utf-8")


def _source_eos_ids(hf_dir: Path) -> list[int]:
    ids: list[int] = []
    gen = hf_dir / "generation_config.json"
    if gen.is_file():
        ids += _as_list(json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id"))
    token = _tokenizer_eos_token(hf_dir)
    vocab_id = _token_id(hf_dir, token) if token else None
    if vocab_id is not None:
        ids.append(vocab_id)
    return ids


def _tokenizer_eos_token(hf_dir: Path) -> str | None:
    path = hf_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def _token_id(hf_dir: Path, token: str) -> int | None:
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    for added in data.get("added_tokens", []):
        if added.get("content") == token:
            return int(added["id"])
    vocab = data.get("model", {}).get("vocab")
    return int(vocab[token]) if isinstance(vocab, dict) and token in vocab else None


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _write_manifest(folder: Path, artifact: OnnxArtifact, hf_dir: Path, builder_options: Mapping[str, str],
                    tensors: list[dict[str, Any]]) -> None:
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    manifest = {
        "format": "onnxruntime-genai",
        "precision": artifact.precision,
        "source": str(hf_dir),
        "size_bytes": artifact.size_bytes,
        "threads": artifact.threads,
        "builder_options": dict(builder_options),
        "build_s": artifact.build_s,
        "versions": {d: ver(d) for d in ("onnxruntime-genai", "onnxruntime", "transformers", "arte-edge")},
        "verification": artifact.verification,
        "tensor_summary": artifact.tensors,
        "tensors": tensors,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _replace_dir(src: Path, dst: Path) -> None:
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(onnx_dir: str | Path) -> dict[str, Any]:
    """The ``arte_export.json`` an export wrote (precision, source, versions, verification report)."""
    path = Path(onnx_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ArteError(f"{onnx_dir}: no {MANIFEST_FILE}; it was not written by arte-edge's export_onnx")
    return json.loads(path.read_text(encoding="utf-8"))
